"""Keeps library start-up noise off a CPU machine's terminal: TensorFlow's C++ log lines (CUDA, cuDNN and
TensorRT not found), absl's warnings and Python deprecation notices. `pneumonia --verbose` keeps them."""
import logging
import os
import warnings

# TensorFlow's C++ logger reads this when TensorFlow is first imported: 2 hides INFO and WARNING lines.
TF_CPP_MIN_LOG_LEVEL = "2"


def silence_library_logs() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_CPP_MIN_LOG_LEVEL)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("absl", "tensorflow", "apache_beam"):
        logging.getLogger(name).setLevel(logging.ERROR)
