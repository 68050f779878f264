"""docs/cli.md, generated from the parser itself, so the reference cannot drift from the flags.

    python -m pneumonia.cli.reference docs/cli.md

tests/cli_test.py fails when the file is not what this prints.
"""

import argparse
import sys
from typing import List

from pneumonia.analysis import generated
from pneumonia.cli import build_parser

WIDTH = 100  # fixed, so the text does not depend on the terminal that generates it
HEADER = """# Command-line reference

Generated from `pneumonia --help` by `python -m pneumonia.cli.reference docs/cli.md`; do not edit.
`tests/cli_test.py` checks that it is current.
"""


def _fixed_width(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=WIDTH)
    return parser


def _help(parser: argparse.ArgumentParser) -> str:
    """The parser's help, with this machine's home folder shown as `~`."""
    return generated.shown_path(_fixed_width(parser).format_help()).rstrip()


def reference() -> str:
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    sections: List[str] = [HEADER, "## pneumonia", "", "```text", _help(parser), "```"]
    for name, command in commands.choices.items():
        sections += ["", f"## pneumonia {name}", "", "```text", _help(command), "```"]
    return "\n".join(sections) + "\n"


def main(argv: List[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m pneumonia.cli.reference FILE")
    with open(argv[0], "w", encoding="utf-8") as f:
        f.write(reference())
    print(f"wrote {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
