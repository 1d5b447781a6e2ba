"""The MMKE table: one row per (task, editor), the six benchmark numbers as columns."""

from __future__ import annotations

from typing import Any

COLUMNS = (("t_rel", "T-Rel"), ("i_rel", "I-Rel"), ("i_gen", "I-Gen"), ("t_loc", "T-Loc"), ("i_loc", "I-Loc"), ("port", "Port"))


def table_rows(results: dict[str, Any], editor: str) -> list[dict[str, Any]]:
    """Rows for every task or group in an lmms-eval results dict that has MMKE metrics."""
    rows = []
    for task, values in results.get("results", {}).items():
        row = {"task": task, "editor": editor}
        for key, _ in COLUMNS:
            value = values.get(f"{key},none")
            row[key] = value if isinstance(value, (int, float)) else None
        if any(row[key] is not None for key, _ in COLUMNS):
            rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table; missing numbers are shown as '-'."""
    header = ["Task", "Editor"] + [title for _, title in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["task"], row["editor"]]
        cells += ["-" if row[key] is None or row[key] != row[key] else f"{row[key]:.1f}" for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
