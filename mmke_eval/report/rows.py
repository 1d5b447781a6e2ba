"""The run's tables: one per benchmark family (one row per (task, editor), the family's declared
columns, e.g. MMKE-Bench's T-Rel ... Port), and the other tasks' metrics (lmms-eval tasks run
beside the editing ones)."""

from __future__ import annotations

import math
from typing import Any

from mmke_eval.lmms.taskfiles import task_cards

NO_SCORED_CASE = "no scored case (every case of the task was skipped or unscored)"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def task_families(results: dict[str, Any]) -> dict[str, str]:
    """Task or group -> benchmark family, from each task's source card (its data file)."""
    found = {task: card.get("family") or card["benchmark"] for task, card in task_cards(results).items()}
    groups = results.get("group_subtasks") or {}
    for _ in range(len(groups)):  # groups of groups: until nothing new is found
        for group, subtasks in groups.items():
            members = {found.get(task) for task in subtasks}
            if group not in found and len(members) == 1 and None not in members:
                found[group] = members.pop()
    return found


def table_rows(results: dict[str, Any], editor: str) -> list[dict[str, Any]]:
    """Rows for every task or group of an lmms-eval results dict: an editing benchmark's rows
    carry its family's columns (``family``), other tasks' rows (``kind: other``) their own
    metrics. A NaN is null, with the reason."""
    from mmke_eval import families

    by_task = task_families(results)
    lifelong = (results.get("mmke") or {}).get("lifelong") or {}
    rows = []
    for task, values in results.get("results", {}).items():
        row: dict[str, Any] = {"task": task, "editor": editor}
        columns = families.get(by_task[task]).columns if task in by_task else []
        if task in lifelong and columns:  # a stream: a row per checkpoint, and one of each edit right after it
            rows += lifelong_rows(task, editor, by_task[task], columns, lifelong[task])
            continue
        found = {key: _number(values.get(f"{key},none")) for key, _ in columns}
        if any(value is not None for value in found.values()):
            row["family"] = by_task[task]
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


def lifelong_rows(task: str, editor: str, family: str, columns, stream: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a lifelong task (``lifelong=T``): its columns after each checkpoint's number of
    edits (``score: retention``) and right after each edit (``score: immediate``, ``edits: T``)."""
    rows = []
    for at in stream["rows"]:
        row = {"task": task, "editor": editor, "family": family, "edits": at["edits"], "score": at["score"]}
        missing = {}
        for key, _ in columns:
            value = _number(at.get(key))
            row[key] = None if value is None or math.isnan(value) else value
            if row[key] is None:
                missing[key] = NO_SCORED_CASE if key in at else "not computed by this task"
        if missing:
            row["missing"] = missing
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one table per benchmark family with its columns, then the other tasks' metrics;
    missing numbers are shown as '-'."""
    from mmke_eval import families

    other = [row for row in rows if row.get("kind") == "other"]
    by_family: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("kind") != "other":
            by_family.setdefault(row["family"], []).append(row)
    blocks = []
    for name, family_rows in by_family.items():
        columns = families.get(name).columns
        stream = any("edits" in row for row in family_rows)  # lifelong rows: after how many edits, and which score
        header = ["Task", "Editor"] + (["Edits", "Score"] if stream else []) + [title for _, title in columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in family_rows:
            cells = [row["task"], row["editor"]] + ([str(row.get("edits", "-")), row.get("score", "-")] if stream else [])
            cells += ["-" if row.get(key) is None else f"{row[key]:.1f}" for key, _ in columns]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    if other:
        lines = ["| Task | Editor | Metric | Value |", "|---|---|---|---|"]
        for row in other:
            for metric, value in row["metrics"].items():
                lines.append(f"| {row['task']} | {row['editor']} | {metric} | {'-' if value is None else f'{value:.4g}'} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
