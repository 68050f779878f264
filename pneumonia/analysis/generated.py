"""Generated sections of a Markdown file (docs/RESULTS.md): `--into FILE [--section NAME]` rewrites only what
lies between a section's BEGIN and END markers, so the text written around the tables stays."""

import os
from typing import Tuple

GENERATED_BEGIN = "<!-- BEGIN pneumonia compare{section}: generated, do not edit -->"
GENERATED_END = "<!-- END pneumonia compare{section} -->"


def shown_path(path: str) -> str:
    """`path` with this machine's home folder as `~`: generated text names no one machine's folders."""
    return str(path).replace(os.path.expanduser("~"), "~")


class MarkersMissing(ValueError):
    """The file has no BEGIN/END pair for the section."""


def generated_markers(section: str = "") -> Tuple[str, str]:
    suffix = f" {section}" if section else ""
    return GENERATED_BEGIN.format(section=suffix), GENERATED_END.format(section=suffix)


def replace_generated(path: str, text: str, section: str = "") -> None:
    """Puts `text` between the file's BEGIN/END markers (of `section`, when a file has several), keeping
    everything written around them."""
    with open(path, encoding="utf-8") as f:
        document = f.read()
    begin_marker, end_marker = generated_markers(section)
    begin, end = document.find(begin_marker), document.find(end_marker)
    if begin < 0 or end < begin:
        raise MarkersMissing(f"{path} has no {begin_marker} ... {end_marker} section to fill")
    document = document[: begin + len(begin_marker)] + "\n" + text + "\n" + document[end:]
    with open(path, "w", encoding="utf-8") as f:
        f.write(document)
