"""Figures for a paper (``mmke-eval report --plot DIR``), each as PNG (300 dpi) and PDF.

* ``radar_<family>_<model>``: one radar chart per editor over the benchmark's columns (MMKE-Bench:
  the six metrics), a polygon per knowledge type or hop (MMKE-Bench's figure style);
* ``bars_<family>_<model>``: one panel per metric, bars per editor grouped by knowledge type/hop;
* ``gap_<task>_<model>``: one panel per metric, a line per editor over the sequential gap
  (VLKEB's sequential editing), drawn where runs of one editor span two or more gaps.

As in the tables, a task scored on different data is two tasks (``task [data N]``), and runs of
different models are never in one figure. Group means are left out where their tasks are shown.
Colours: the Okabe-Ito palette (colour-blind safe); fonts embedded as TrueType in the PDF.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from mmke_eval.journal import digest
from mmke_eval.report.runs import Entry, Run, card_label
from mmke_eval.report.tables import Labels, distinguish, editor_names

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
    "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.spines.top": False, "axes.spines.right": False,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in the PDF: text stays text (journals ask for it)
}
PANELS_PER_ROW = 3


def figures(runs: list[Run]) -> list[tuple[str, "object"]]:
    """(file name without suffix, matplotlib Figure) for every figure the runs support."""
    import matplotlib

    from mmke_eval import families

    labels = Labels(runs)
    made: list[tuple[str, object]] = []
    with matplotlib.rc_context(STYLE):
        for (model_key, family), entries in _by_model_and_family(runs).items():
            model = labels.model[model_key]
            title = families.get(family).title
            shown = _leaf_tasks(entries)
            made.append((f"radar_{family}_{model}", _radar(shown, labels, f"{title}, {model}")))
            made.append((f"bars_{family}_{model}", _bars(shown, labels, f"{title}, {model}")))
            for task_name, figure in _gaps(entries, labels, f"{title}, {model}"):
                made.append((f"gap_{task_name}_{model}", figure))
    return [(_slug(name), figure) for name, figure in made]


def write_plots(runs: list[Run], out: str | Path) -> list[Path]:
    """Write every figure as PNG and PDF into ``out``; return the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures(runs):
        for suffix, options in ((".png", {"dpi": 300}), (".pdf", {"metadata": {"CreationDate": None}})):
            path = out / f"{name}{suffix}"
            figure.savefig(path, bbox_inches="tight", **options)
            written.append(path)
    return written


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")


def _by_model_and_family(runs: list[Run]) -> dict[tuple[str, str], list[Entry]]:
    grouped: dict[tuple[str, str], list[Entry]] = {}
    for run in runs:
        for entry in run.entries:
            if entry.family:
                grouped.setdefault((run.model_key, entry.family), []).append(entry)
    return grouped


def _leaf_tasks(entries: list[Entry]) -> list[Entry]:
    """Without the group means whose tasks are shown."""
    shown = {e.task for e in entries}
    return [e for e in entries if not (e.is_group and any(m in shown for m in e.run.groups[e.task]))]


def _task_name(entry: Entry, labels: Labels) -> str:
    name = labels.of_task(entry)
    subset = card_label(entry.run.cards.get(entry.task))
    return f"{subset} ({name})" if subset and name != entry.task else (subset or name)


def _order(items) -> dict:
    order: dict = {}
    for item in items:
        order.setdefault(item, len(order))
    return order


def _grid(count: int, width: float, height: float, polar: bool = False):
    from matplotlib.figure import Figure

    columns = min(count, PANELS_PER_ROW)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = [figure.add_subplot(rows, columns, i + 1, projection="polar" if polar else None) for i in range(count)]
    return figure, axes


def _radar(entries: list[Entry], labels: Labels, title: str):
    columns = entries[0].columns
    variants = _order(e.run for e in entries)
    names = editor_names(list(variants))
    tasks = _order(_task_name(e, labels) for e in entries)
    figure, axes = _grid(len(variants), 3.6, 3.6, polar=True)
    angles = [2 * math.pi * i / len(columns) for i in range(len(columns))]
    for ax, run in zip(axes, variants):
        for entry in (e for e in entries if e.run is run):
            index = tasks[_task_name(entry, labels)]
            values = [entry.values.get(key) for key, _ in columns]
            points = [(a, v) for a, v in zip(angles, values) if v is not None]
            if not points:
                continue
            xs, ys = zip(*(points + points[:1]))  # closed polygon
            colour = PALETTE[index % len(PALETTE)]
            ax.plot(xs, ys, color=colour, linewidth=1.8, marker=MARKERS[index % len(MARKERS)], markersize=4,
                    label=_task_name(entry, labels))
            ax.fill(xs, ys, color=colour, alpha=0.12)
        ax.set_xticks(angles, [t for _, t in columns])
        ax.set_ylim(0, 100)
        ax.set_yticks([25, 50, 75, 100], ["25", "50", "75", "100"], fontsize=8, color="0.4")
        ax.set_title(names[run.variant_key].replace(" [", "\n["), pad=14)  # long variant names on two lines
    _legend(figure, axes, len(tasks))
    figure.suptitle(title)
    return figure


def _bars(entries: list[Entry], labels: Labels, title: str):
    columns = entries[0].columns
    variants = list(_order(e.run for e in entries))
    names = editor_names(variants)
    tasks = list(_order(_task_name(e, labels) for e in entries))
    figure, axes = _grid(len(columns), 4.2, 3.0)
    width = 0.8 / max(len(variants), 1)
    for ax, (key, column_title) in zip(axes, columns):
        for v, run in enumerate(variants):
            xs, heights = [], []
            for t, task in enumerate(tasks):
                entry = next((e for e in entries if e.run is run and _task_name(e, labels) == task), None)
                if entry is not None and entry.values.get(key) is not None:
                    xs.append(t - 0.4 + width * (v + 0.5))
                    heights.append(entry.values[key])
            ax.bar(xs, heights, width=width, color=PALETTE[v % len(PALETTE)], label=names[run.variant_key])
        ax.set_xticks(range(len(tasks)), tasks, rotation=20 if len(tasks) > 3 else 0, ha="right" if len(tasks) > 3 else "center")
        ax.set_ylim(0, 100)
        ax.set_title(column_title)
        ax.grid(axis="y", color="0.9")
        ax.set_axisbelow(True)
    _legend(figure, axes, len(variants))
    figure.suptitle(title)
    return figure


def _gaps(entries: list[Entry], labels: Labels, title: str):
    """Per task: lines of sequential runs that differ only in their gap, when one spans two gaps."""
    by_task: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        if entry.run.protocol.get("sequential"):
            # the data key leaves the gap's edit-only cases out: runs over several gaps share it
            by_task.setdefault((entry.task, entry.data.key), []).append(entry)
    for task_entries in by_task.values():
        lines: dict[str, list[Entry]] = {}
        for entry in task_entries:
            lines.setdefault(_line_key(entry.run), []).append(entry)
        if not any(len({e.run.protocol["sequential_gap"] for e in line}) > 1 for line in lines.values()):
            continue
        yield labels.of_task(task_entries[0]), _gap_figure(task_entries[0], lines, labels, title)


def _line_key(run: Run) -> str:
    return digest([run.editor, {k: v for k, v in run.variant_values().items() if k != "sequential_gap"}])


def _gap_figure(first: Entry, lines: dict[str, list[Entry]], labels: Labels, title: str):
    columns = first.columns
    names = distinguish({key: (line[0].run.editor or "-", {k: v for k, v in line[0].run.variant_values().items() if k != "sequential_gap"})
                         for key, line in lines.items()})
    figure, axes = _grid(len(columns), 4.0, 3.0)
    gaps = sorted({e.run.protocol["sequential_gap"] for line in lines.values() for e in line})
    for ax, (key, column_title) in zip(axes, columns):
        for i, (line_key, line) in enumerate(lines.items()):
            points = sorted((e.run.protocol["sequential_gap"], e.values.get(key)) for e in line if e.values.get(key) is not None)
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, color=PALETTE[i % len(PALETTE)], marker=MARKERS[i % len(MARKERS)], linewidth=1.8,
                        label=names[line_key])
        ax.set_xticks(gaps)
        ax.set_xlabel("sequential gap (edits after the case)")
        ax.set_ylim(0, 100)
        ax.set_title(column_title)
        ax.grid(color="0.9")
    _legend(figure, axes, len(lines))
    figure.suptitle(f"{title}: {labels.of_task(first)} over the sequential gap")
    return figure


def _legend(figure, axes, count: int) -> None:
    handles, names = [], []
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    if handles:
        figure.legend(handles, names, loc="outside lower center", ncols=min(count, 4), frameon=False)
