"""Keeps library start-up noise off a CPU machine's terminal: TensorFlow's C++ log lines (CUDA, cuDNN and
TensorRT not found), absl's warnings and Python deprecation notices. `pneumonia --verbose` keeps them."""

import logging
import os
import warnings

# TensorFlow's C++ logger reads this when TensorFlow is first imported: 3 hides INFO, WARNING and ERROR lines,
# which on a CPU machine are the "Unable to register cuDNN factory" kind; a real failure still raises in Python.
TF_CPP_MIN_LOG_LEVEL = "3"


def silence_library_logs() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_CPP_MIN_LOG_LEVEL)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
