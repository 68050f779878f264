"""The CLI starts fast and speaks plainly: help never imports TensorFlow, and docs/cli.md is its help."""

import os
import pathlib
import shutil
import subprocess
import sys

from pneumonia.cli import quiet, reference

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("tensorflow", "tfx", "tensorflow_model_analysis", "apache_beam", "keras")
EVERY_HELP = """
import sys
from pneumonia.cli import build_parser
parser = build_parser()
commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
for argv in [["--help"]] + [[name, "--help"] for name in commands.choices]:
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pass
print("heavy:", sorted(name for name in {heavy} if name in sys.modules), file=sys.stderr)
"""


def test_docs_cli_reference_is_what_the_parser_prints():
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == reference.reference(), "docs/cli.md is stale: python -m pneumonia.cli.reference docs/cli.md"


def test_every_help_prints_without_importing_tensorflow_or_beam():
    result = subprocess.run(
        [sys.executable, "-c", EVERY_HELP.format(heavy=HEAVY)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "usage: pneumonia run " in result.stdout and "usage: pneumonia serve " in result.stdout
    assert result.stderr.strip() == "heavy: []"


def test_the_installed_command_prints_usage_and_no_log_line():
    command = shutil.which("pneumonia", path=os.path.dirname(sys.executable))
    assert command, "the pneumonia console script is not installed beside this Python"
    result = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: pneumonia")
    assert result.stderr == ""


def test_a_command_that_loads_tensorflow_prints_its_one_line_error_and_no_log_line(tmp_path):
    command = shutil.which("pneumonia", path=os.path.dirname(sys.executable))
    result = subprocess.run([command, "report", "--root", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: no ML Metadata at {tmp_path}/metadata.sqlite: run the pipeline first (pneumonia run)"
    ]


def test_pipeline_steps_show_as_one_line_each_and_other_library_records_do_not(capsys):
    from absl import logging as absl_logging

    quiet.quiet_libraries()
    absl_logging.info("Component %s is running.", "Evaluator")
    absl_logging.info("Examples artifact does not have payload_format custom property.")
    absl_logging.warning("a library's warning")
    absl_logging.error("a real failure")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("] ", 1)[-1] for line in lines] == ["Evaluator: running", "a real failure"]
