"""Plain-text and Markdown tables for the result commands (compare, policies, k-shot, errors)."""

from typing import List, Optional


def format_number(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def format_rows(rows: List[List[str]], markdown: bool = False, label_columns: int = 2) -> str:
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" for _ in rows[0]) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i < label_columns else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    )
