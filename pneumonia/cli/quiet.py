"""What a command shows on a CPU machine's terminal: its own output and one line as each pipeline step starts
and ends, not library start-up noise (TensorFlow's C++ log lines about CUDA, cuDNN and TensorRT, absl's
records, pip's and setuptools' chatter while TFX packages the trainer, numpy's RuntimeWarnings from TFMA on
one-class slices, deprecation notices). `pneumonia --verbose` shows everything."""

import logging
import os
import re
import sys
import time
import warnings

# Read by TensorFlow's C++ logger when TensorFlow is first imported: 3 hides INFO, WARNING and ERROR lines, which
# on a CPU machine are the "Unable to register cuDNN factory" kind; a real failure still raises in Python.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "PIP_QUIET": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
# What TFX's local runners log as a step starts and ends.
STEP = re.compile(r"^(?:Component|node) (\S+) is (running|finished)\.$")


class StepProgress(logging.Filter):
    """Lets through TFX's step start and end records, rewritten as `[hh:mm:ss] Evaluator: running`, and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        match = STEP.match(record.getMessage())
        if match:
            record.msg, record.args = f"[{time.strftime('%H:%M:%S')}] {match[1]}: {match[2]}", ()
        return bool(match) or record.levelno >= logging.ERROR


def quiet_libraries() -> None:
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="tensorflow_model_analysis")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    progress = logging.StreamHandler(sys.stderr)
    progress.addFilter(StepProgress())
    absl = logging.getLogger("absl")
    absl.setLevel(logging.INFO)
    absl.propagate = False
    absl.handlers[:] = [progress]
