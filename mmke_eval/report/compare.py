"""What changed between two runs (``mmke-eval compare A B``): a protocol fix, a new editor version.

A and B are results folders or files. Their runs are paired (one run each: those two; several:
by editor name). For each pair: what differs in the setup (model, editor configuration,
protocol, data, versions), then per task the table's metrics in A and B, and, where both runs
logged lmms-eval samples (mmke-eval does with --output_path; lmms-eval with --log_samples), per
case: how many cases changed, up and down, and the cases that moved most.

Cases are matched by their case id. When both runs recorded their data and the data files
differ, a case id may name another case: the per-case part is left out and says so.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmke_eval.report.bootstrap import MIN_CASES, Bootstrap, NoInterval, paired_difference, task_rng
from mmke_eval.report.runs import Entry, ReportError, Run, case_scores, load_runs, model_label
from mmke_eval.report.tables import number

EPSILON = 1e-9  # per-case values are percentages of float scores: anything above is a change


@dataclass
class CaseDelta:
    task: str
    case: str
    a: dict[str, float]
    b: dict[str, float]

    def delta(self, metric: str) -> float | None:
        if metric in self.a and metric in self.b:
            return self.b[metric] - self.a[metric]
        return None

    def moved(self, metrics: list[str]) -> float:
        return sum(abs(d) for d in (self.delta(m) for m in metrics) if d is not None)


def pair_runs(runs_a: list[Run], runs_b: list[Run]) -> tuple[list[tuple[Run, Run]], list[str]]:
    if len(runs_a) == 1 and len(runs_b) == 1:
        return [(runs_a[0], runs_b[0])], []
    by_name: list[dict[str, Run]] = []
    for side, runs in (("A", runs_a), ("B", runs_b)):
        names: dict[str, list[Run]] = defaultdict(list)
        for run in runs:
            names[run.editor or run.backend].append(run)
        for name, found in names.items():
            if len(found) > 1:
                raise ReportError(f"{side} holds {len(found)} runs of {name} ({', '.join(str(r.path) for r in found)}): "
                                  "give the results file of the one to compare")
        by_name.append({name: found[0] for name, found in names.items()})
    pairs = [(run, by_name[1][name]) for name, run in by_name[0].items() if name in by_name[1]]
    if not pairs:
        raise ReportError(f"no run of A has an editor in B (A: {', '.join(by_name[0])}; B: {', '.join(by_name[1])})")
    notes = [f"only in {side}: {name}" for side, mine, other in (("A", by_name[0], by_name[1]), ("B", by_name[1], by_name[0]))
             for name in mine if name not in other]
    return pairs, notes


def compare(a: str | Path, b: str | Path, top: int = 10, bootstrap: Bootstrap | None = None) -> str:
    """The report of what changed from A to B; per task, whether each metric's change is beyond
    noise (a paired bootstrap over the cases both runs scored, when they are the same cases)."""
    bootstrap = bootstrap or Bootstrap()
    if top < 0:
        raise ReportError(f"--top {top}: must be 0 or more")
    runs_a, _ = load_runs([a])
    runs_b, _ = load_runs([b])
    pairs, notes = pair_runs(runs_a, runs_b)
    blocks = [f"# Compare A: {a} -> B: {b}"] + ([("- " + "\n- ".join(notes))] if notes else [])
    blocks += [_compare_pair(run_a, run_b, top, bootstrap) for run_a, run_b in pairs]
    return "\n\n".join(blocks) + "\n"


def setup_differences(a: Run, b: Run) -> list[str]:
    lines = []
    if a.model_key != b.model_key:
        lines.append(f"model: {_model(a)} -> {_model(b)}")
    if a.editor != b.editor:
        lines.append(f"editor: {a.editor} -> {b.editor}")
    for what, mine, theirs in (("editor option", a.editor_overrides, b.editor_overrides),
                               ("editor configuration", _flat(a.editor_config), _flat(b.editor_config)),
                               ("protocol", a.protocol, b.protocol), ("resolved", _flat(a.resolved), _flat(b.resolved)),
                               ("version", a.versions, b.versions)):
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                lines.append(f"{what} {key}: {_show(mine.get(key))} -> {_show(theirs.get(key))}")
    for task in a.data.keys() & b.data.keys():
        if a.data[task].key != b.data[task].key and not (a.entry(task) and a.entry(task).is_group):
            lines.append(f"data of {task}: {a.data[task].text} -> {b.data[task].text}")
    first = ("model", "editor:", "data")
    return sorted(lines, key=lambda line: (next((i for i, p in enumerate(first) if line.startswith(p)), len(first)), line))


def _model(run: Run) -> str:
    return f"{model_label(run.backend, run.model_args)} ({run.backend}; " + ", ".join(f"{k}={v}" for k, v in sorted(run.model_args.items())) + ")"


def _flat(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    return json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)


def _compare_pair(a: Run, b: Run, top: int, bootstrap: Bootstrap) -> str:
    title = a.editor if a.editor == b.editor else f"{a.editor or a.backend} -> {b.editor or b.backend}"
    lines = [f"## {title}", "", f"- A: {a.path}", f"- B: {b.path}"]
    differences = setup_differences(a, b)
    lines += [f"- {d}" for d in differences] or ["- same model, editor, protocol and data"]
    only = [f"{task} only in {side}" for side, mine, other in (("A", a, b), ("B", b, a))
            for task in (e.task for e in mine.entries) if other.entry(task) is None]
    lines += [f"- {text}" for text in only]
    moved: list[CaseDelta] = []
    columns: dict[str, str] = {}
    for entry_a in a.entries:
        entry_b = b.entry(entry_a.task)
        if entry_b is None:
            continue
        if entry_a.columns != entry_b.columns:
            lines += ["", f"### {entry_a.task}", "", "- the two runs score this task with different metrics; not compared"]
            continue
        columns.update(entry_a.columns)
        task_lines, deltas = _compare_task(entry_a, entry_b, bootstrap)
        lines += ["", f"### {entry_a.task}", ""] + task_lines
        moved += deltas
    metrics = list(columns)
    moved = sorted((d for d in moved if d.moved(metrics) > EPSILON), key=lambda d: (-d.moved(metrics), d.task, d.case))
    if moved and top:
        lines += ["", f"### Cases that moved most (top {min(top, len(moved))} of {len(moved)} changed; B - A per metric)", "",
                  "| Task | Case | " + " | ".join(columns[m] for m in metrics) + " | Sum of abs |",
                  "|---|---|" + "---:|" * (len(metrics) + 1)]
        for d in moved[:top]:
            cells = [_signed(d.delta(m)) for m in metrics]
            lines.append(f"| {d.task} | {d.case} | " + " | ".join(cells) + f" | {d.moved(metrics):.1f} |")
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    if value is None:
        return "-"
    return "" if abs(value) <= EPSILON else f"{value:+.1f}"


def _compare_task(a: Entry, b: Entry, bootstrap: Bootstrap) -> tuple[list[str], list[CaseDelta]]:
    notes: list[str] = []
    per_case = None
    paired = False  # the same cases on both sides: the paired test applies
    if a.is_group or b.is_group:
        pass  # a group's number is the mean of its tasks': its cases are compared there
    elif a.task not in a.run.samples or a.task not in b.run.samples:
        missing = " and ".join(side for side, run in (("A", a.run), ("B", b.run)) if a.task not in run.samples)
        notes.append(f"- per case: no samples file in {missing} (mmke-eval --output_path writes them; lmms-eval: --log_samples)")
        notes.append("- beyond noise: not tested, it needs the per-case scores of both runs")
    elif a.data.files and b.data.files and a.data.files != b.data.files:
        notes.append("- per case: left out, the data files differ (a case id may name another case)")
        notes.append("- beyond noise: not tested, the runs are not on the same cases (the data files differ)")
    else:
        scores_a, scores_b = case_scores(a.run.samples[a.task]), case_scores(b.run.samples[b.task])
        common = [case for case in scores_a if case in scores_b]
        per_case = [CaseDelta(a.task, case, scores_a[case], scores_b[case]) for case in common]
        only_a, only_b = len(scores_a) - len(common), len(scores_b) - len(common)
        if only_a or only_b:
            notes.append(f"- per case: {len(common)} cases in both; {only_a} only in A, {only_b} only in B")
        if not (a.data.files and b.data.files):
            notes.append("- per case: matched by case id (a plain lmms-eval run records no data hash)")
            notes.append("- beyond noise: not tested, a plain lmms-eval run records no data hash, so the cases "
                         "cannot be shown to be the same (run both with mmke-eval --output_path)")
        elif only_a or only_b:
            notes.append(f"- beyond noise: not tested, the runs are not on the same cases ({only_a} only in A, {only_b} only "
                         "in B; their numbers are means over different cases): rerun both with the same data and --cases")
        elif len(common) < MIN_CASES:
            notes.append(f"- beyond noise: not tested, {len(common)} case(s) in both runs; a paired test needs {MIN_CASES} or more")
        else:
            paired = True
            notes.append(f"- beyond noise: paired bootstrap over the {len(common)} cases of both runs ({bootstrap.resamples} "
                         f"resamples, seed {bootstrap.seed}): the 95% interval of B - A, p two-sided; yes when p < 0.05")
    header = "| Metric | A | B | B - A |" + (" Cases | Changed | Up | Down |" if per_case is not None else "")
    header += " B - A, 95% interval | p | Beyond noise |" if paired else ""
    lines = [header, "|---|---:|---:|---:|" + ("---:|---:|---:|---:|" if per_case is not None else "")
             + ("---:|---:|---|" if paired else "")]
    for key, title in a.columns:
        va, vb = a.values.get(key), b.values.get(key)
        percent = a.family is not None
        diff = "-" if va is None or vb is None else (f"{vb - va:+.1f}" if percent else f"{vb - va:+.4g}")
        row = f"| {title} | {number(va, percent)} | {number(vb, percent)} | {diff} |"
        if per_case is not None:
            deltas = [d.delta(key) for d in per_case]
            deltas = [x for x in deltas if x is not None]
            up, down = sum(x > EPSILON for x in deltas), sum(x < -EPSILON for x in deltas)
            row += f" {len(deltas)} | {up + down} | {up} | {down} |"
        if paired:
            row += _paired_cells(a, key, scores_a, scores_b, bootstrap, notes)
        lines.append(row)
    return lines + ([""] + notes if notes else []), per_case or []


def _paired_cells(a: Entry, key: str, scores_a: dict, scores_b: dict, bootstrap: Bootstrap, notes: list[str]) -> str:
    """The paired test of one metric: a case counts where both runs scored it on this metric.
    The generator is the task's (the same case draws for every metric)."""
    values_a = {case: m[key] for case, m in scores_a.items() if key in m}
    values_b = {case: m[key] for case, m in scores_b.items() if key in m}
    try:
        test = paired_difference(values_a, values_b, task_rng(bootstrap.seed, a.task), bootstrap.resamples)
    except NoInterval as why:
        notes.append(f"- beyond noise, {key}: not tested, {why}")
        return " - | - | - |"
    verdict = "yes" if test.beyond_noise else "no"
    return f" {test.difference:+.1f} [{test.low:+.1f}, {test.high:+.1f}] | {test.p:.3f} | {verdict} |"
