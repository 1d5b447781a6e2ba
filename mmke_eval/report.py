"""The run's tables: the MMKE table (one row per (task, editor), the six benchmark numbers as
columns) and the other tasks' metrics (lmms-eval tasks run beside the MMKE ones)."""

from __future__ import annotations

import math
from typing import Any

COLUMNS = (("t_rel", "T-Rel"), ("i_rel", "I-Rel"), ("i_gen", "I-Gen"), ("t_loc", "T-Loc"), ("i_loc", "I-Loc"), ("port", "Port"))
NO_SCORED_CASE = "no scored case (every case of the task was skipped or unscored)"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def table_rows(results: dict[str, Any], editor: str) -> list[dict[str, Any]]:
    """Rows for every task or group of an lmms-eval results dict: MMKE rows carry the six columns,
    other tasks' rows (``kind: other``) their own metrics. A NaN is null, with the reason."""
    rows = []
    for task, values in results.get("results", {}).items():
        row: dict[str, Any] = {"task": task, "editor": editor}
        found = {key: _number(values.get(f"{key},none")) for key, _ in COLUMNS}
        if any(value is not None for value in found.values()):
            missing = {}
            for key, value in found.items():
                if value is not None and math.isnan(value):
                    found[key], missing[key] = None, NO_SCORED_CASE
                elif value is None:
                    missing[key] = "not computed by this task"
            row.update(found)
            if missing:
                row["missing"] = missing
            rows.append(row)
            continue
        metrics = {}
        for name, value in values.items():
            metric, _, _filter = name.partition(",")
            number = _number(value)
            if number is None or "_stderr" in metric or metric == "alias":
                continue
            metrics[name] = None if math.isnan(number) else number
        if metrics:
            rows.append({**row, "kind": "other", "metrics": metrics})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: the MMKE table, then the other tasks' metrics; missing numbers are shown as '-'."""
    mmke = [row for row in rows if row.get("kind") != "other"]
    other = [row for row in rows if row.get("kind") == "other"]
    blocks = []
    if mmke or not other:
        header = ["Task", "Editor"] + [title for _, title in COLUMNS]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in mmke:
            cells = [row["task"], row["editor"]]
            cells += ["-" if row.get(key) is None else f"{row[key]:.1f}" for key, _ in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    if other:
        lines = ["| Task | Editor | Metric | Value |", "|---|---|---|---|"]
        for row in other:
            for metric, value in row["metrics"].items():
                lines.append(f"| {row['task']} | {row['editor']} | {metric} | {'-' if value is None else f'{value:.4g}'} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
