"""The documentation holds together: every relative link in every Markdown file of the repository resolves to a
file or folder inside it, every `#anchor` into a Markdown file names a heading there (GitHub's slug rule), every
`pneumonia` subcommand has a row in the README and a heading in docs/cli.md, and the README stays short.

Read from the files only (no imports of the project), so the check runs in a bare checkout.
"""

import ast
import os
import pathlib
import re
import urllib.parse
from typing import Dict, Iterator, List, Set

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
# Folders that hold no documentation of this project: environments, caches, build and test outputs.
SKIPPED_DIRS = {"node_modules", "test-artifacts", "build", "dist", "__pycache__"}
# The packages whose argparse subcommands make up the `pneumonia` command line.
CLI_PACKAGES = ("pneumonia", "serving", "kubeflow")

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)  # never across a blank line
# [text](target) and ![alt](target), with an optional "title"; the text may span lines.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files(root: pathlib.Path) -> Iterator[pathlib.Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            if name.endswith(".md"):
                yield pathlib.Path(dirpath) / name


def prose_lines(text: str) -> List[str]:
    """The file's lines with fenced code blocks blanked (so `# comment` lines and code are neither headings
    nor links); line numbers are kept."""
    lines, fence = [], None
    for line in text.split("\n"):
        opening = FENCE.match(line)
        if fence:
            if (
                opening
                and opening.group(1)[0] == fence[0]
                and len(opening.group(1)) >= len(fence)
                and not line.strip()[len(opening.group(1)) :].strip()
            ):
                fence = None
            lines.append("")
        elif opening:
            fence = opening.group(1)
            lines.append("")
        else:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower-cased, punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML shows nothing
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, '_', '-', ' '
    return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> Set[str]:
    """Every anchor GitHub makes in a Markdown file: heading slugs (repeats get -1, -2, ...) and HTML anchors."""
    seen: Dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def links(path: pathlib.Path) -> Iterator[tuple]:
    """(line number, target) of every Markdown link outside code."""
    text = "\n".join(prose_lines(path.read_text(encoding="utf-8")))
    # Blank code spans but keep their newlines, so a link's line number stays right.
    text = CODE_SPAN.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for match in LINK.finditer(text):
        yield text.count("\n", 0, match.start()) + 1, match.group(1)


def broken_links(path: pathlib.Path, root: pathlib.Path) -> List[str]:
    """One line per relative link of `path` that does not resolve, or whose #anchor names no heading."""
    problems = []
    for line, target in links(path):
        if SCHEME.match(target):  # http(s), mailto and other absolute URLs
            continue
        file_part, _, anchor = target.partition("#")
        file_part = urllib.parse.unquote(file_part)
        if not file_part:
            resolved = path
        elif file_part.startswith("/"):
            resolved = root / file_part.lstrip("/")
        else:
            resolved = path.parent / file_part
        resolved = pathlib.Path(os.path.normpath(resolved))
        where = f"{path.relative_to(root)}:{line}: {target}"
        if resolved != root and root not in resolved.parents:
            problems.append(f"{where}: points outside the repository")
        elif not resolved.exists():
            problems.append(f"{where}: {resolved.relative_to(root)} does not exist")
        elif (
            anchor
            and resolved.suffix == ".md"
            and resolved.is_file()
            and urllib.parse.unquote(anchor) not in anchors(resolved)
        ):
            problems.append(f"{where}: no heading with the anchor #{anchor} in {resolved.relative_to(root)}")
    return problems


def subcommands(root: pathlib.Path) -> Set[str]:
    """Every name given to `add_parser("NAME", ...)` in the CLI packages, read from the source."""
    names = set()
    for package in CLI_PACKAGES:
        for source in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), str(source))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_parser"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    names.add(node.args[0].value)
    return names


MARKDOWN = sorted(markdown_files(ROOT))


def test_the_repository_has_its_documentation():
    names = {str(path.relative_to(ROOT)) for path in MARKDOWN}
    assert {"README.md", "docs/README.md", "docs/cli.md", "serving/README.md", "kubeflow/README.md"} <= names


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_and_every_anchor_names_a_heading(path):
    problems = broken_links(path, ROOT)
    assert not problems, "\n".join(problems)


def test_the_readme_is_read_in_five_minutes():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_every_subcommand_has_a_readme_row_and_a_cli_reference_heading():
    commands = subcommands(ROOT)
    assert {"prepare", "run", "serve", "predict", "compile"} <= commands
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    reference = anchors(ROOT / "docs" / "cli.md")
    missing_rows = sorted(c for c in commands if f"(docs/cli.md#pneumonia-{c})" not in readme)
    missing_headings = sorted(c for c in commands if f"pneumonia-{c}" not in reference)
    assert not missing_rows, f"README.md has no command-table link for: {', '.join(missing_rows)}"
    assert not missing_headings, f"docs/cli.md has no '## pneumonia COMMAND' heading for: {', '.join(missing_headings)}"


def test_the_checker_flags_a_missing_file_a_wrong_anchor_and_a_link_out_of_the_repository(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## `pneumonia serve` options\n\n## Object-store roots (`gs://`)\n\n## Object-store roots (`gs://`)\n"
    )
    (tmp_path / "README.md").write_text(
        "# Project\n\n"
        "[fine](docs/guide.md#pneumonia-serve-options), [repeat](docs/guide.md#object-store-roots-gs-1),\n"
        "[here](#project), [a folder](docs/), [web](https://example.com/x.md#nope), [mail](mailto:a@b.c)\n"
        "[gone](docs/missing.md) and [wrong](docs/guide.md#no-such-heading)\n"
        "[outside](../elsewhere/README.md), [split\nacross lines](docs/absent.md)\n"
        "`[in code](docs/ignored.md)`\n\n"
        "```\n[in a fence](docs/ignored.md)\n# not a heading\n```\n"
    )
    problems = broken_links(tmp_path / "README.md", tmp_path)
    assert problems == [
        "README.md:5: docs/missing.md: docs/missing.md does not exist",
        "README.md:5: docs/guide.md#no-such-heading: no heading with the anchor #no-such-heading in docs/guide.md",
        "README.md:6: ../elsewhere/README.md: points outside the repository",
        "README.md:6: docs/absent.md: docs/absent.md does not exist",
    ]
    assert "not-a-heading" not in anchors(tmp_path / "README.md")


@pytest.mark.parametrize(
    "heading, expected",
    [
        ("`pneumonia serve` options", "pneumonia-serve-options"),
        ("Object-store roots (`gs://`)", "object-store-roots-gs"),
        ("The model's pixel budget", "the-models-pixel-budget"),
        ("pneumonia run-compiled", "pneumonia-run-compiled"),
        ("Site calibration: k labelled images of the site", "site-calibration-k-labelled-images-of-the-site"),
        ("[Linked](x.md) `explain_images`", "linked-explain_images"),
    ],
)
def test_slugs_follow_githubs_rule(heading, expected):
    assert slug(heading) == expected
