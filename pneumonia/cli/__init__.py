"""The `pneumonia` command line: argparse and printing only.

Each command group registers its flags here without importing TensorFlow; a command's handler imports the
layer it drives when it runs, so `pneumonia --help` and every `COMMAND --help` print at once.
"""

import argparse
import sys
from typing import List, Optional

from kubeflow import cli as kubeflow_cli
from pneumonia.cli import monitor_commands, pipeline_commands, quiet, result_commands, site_commands
from serving import cli as serving_cli

DESCRIPTION = (
    "Prepare chest X-ray data, run the TFX pipeline (validate, train, evaluate, push), read its "
    "results, calibrate for a site, serve and monitor the model, and run it on Kubeflow."
)
COMMAND_GROUPS = (pipeline_commands, result_commands, site_commands, serving_cli, monitor_commands, kubeflow_cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pneumonia", description=DESCRIPTION)
    parser.add_argument(
        "--verbose", action="store_true", help="show TensorFlow's, CUDA's and absl's own log lines (hidden by default)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        quiet.quiet_libraries()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
