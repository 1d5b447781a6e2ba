"""Figures for a paper (``mmke-eval report --plot DIR``), each as PNG (300 dpi) and PDF.

* ``radar_<family>_<model>``: one radar chart per editor over the benchmark's columns (MMKE-Bench:
  the six metrics), a polygon per knowledge type or hop (MMKE-Bench's figure style);
* ``bars_<family>_<model>``: one panel per metric, bars per editor grouped by knowledge type/hop;
* ``gap_<task>_<model>``: one panel per metric, a line per editor over the sequential gap
  (VLKEB's sequential editing), drawn where runs of one editor span two or more gaps;
* ``retention_<task>_<model>``: lifelong runs (``lifelong=T``), one panel per metric, a line per
  editor over the number of edits made (log axis, the stream's checkpoints 1, 10, 100, 1000, T):
  every edit made so far scored after that many edits; a hollow marker at T is the immediate
  score (each edit right after it, mean over the T edits). Lifelong runs are drawn only here: the
  other figures keep to runs of one edit at a time and VLKEB's sequential runs.

Every name shown is declared once: editors by their ``title`` in registry.yaml (FT-LLM), the
benchmark by its family's ``releases`` (mmke_mini: "MMKE-Bench mini (generated)"), a task by its
family's ``subsets`` (entity_level: "Visual entity"), metrics by the family's column titles, and
variants of one editor by the protocol settings in which they differ, as the ``text`` each ``Protocol`` field declares
words them ("FT-LLM (sequential, gap 1)"). A number the results do not have is drawn as missing
(a hatched "n/a" slot, a break in a radar polygon), never as a zero; a zero bar is a line at 0.
The cases each task was scored on are in the subtitle (and "n=" in the labels).

As in the tables, a task scored on different data is two tasks (``[data N]``), and runs of
different models are never in one figure. Group means are left out where their tasks are shown.
Colours: the Okabe-Ito palette (colour-blind safe); fonts embedded as TrueType in the PDF.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from mmke_eval.journal import digest
from mmke_eval.report.runs import Entry, Run
from mmke_eval.report.tables import Labels, distinguish

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
    "xtick.labelsize": 10, "ytick.labelsize": 10, "axes.spines.top": False, "axes.spines.right": False,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in the PDF: text stays text (journals ask for it)
    "hatch.linewidth": 0.6,
}
PANELS_PER_ROW = 3
MISSING = "n/a"  # a number the results do not have (the table's "-")
Y_LABEL = "Score (%)"


def figures(runs: list[Run]) -> list[tuple[str, "object"]]:
    """(file name without suffix, matplotlib Figure) for every figure the runs support."""
    import matplotlib

    labels = Labels(runs)
    made: list[tuple[str, object]] = []
    with matplotlib.rc_context(STYLE):
        for (model_key, family), every in _by_model_and_family(runs).items():
            model = labels.model[model_key]
            lifelong = {id(e.run) for e in every if e.stream is not None}
            entries = [e for e in every if id(e.run) not in lifelong]
            streams = [e for e in every if e.stream is not None]
            if entries:
                shown = _leaf_tasks(entries)
                names = Names(entries, labels)
                title = f"{names.benchmark(entries)}, {model}"
                made.append((f"radar_{family}_{model}", _radar(shown, names, title)))
                made.append((f"bars_{family}_{model}", _bars(shown, names, title)))
                for task_name, figure in _gaps(entries, labels, names, title):
                    made.append((f"gap_{task_name}_{model}", figure))
            if streams:
                names = Names(streams, labels)
                title = f"{names.benchmark(streams)}, {model}"
                for task_name, figure in _retention(streams, labels, names, title):
                    made.append((f"retention_{task_name}_{model}", figure))
    return [(_slug(name), figure) for name, figure in made]


class Names:
    """What a figure calls editors, their variants, tasks and benchmarks: the declared names
    (module docstring), made unique among the runs of one figure."""

    def __init__(self, entries: list[Entry], labels: Labels):
        self.labels = labels
        self.releases = list(_order(self.release(e) for e in entries if not e.is_group))

    @staticmethod
    def release(entry: Entry) -> str:
        from mmke_eval import families

        family = families.get(entry.family)
        card = entry.run.cards.get(entry.task)
        if card is None and entry.is_group:  # a group: its tasks' benchmark
            member = next((entry.run.entry(t) for t in entry.run.groups[entry.task] if entry.run.entry(t)), None)
            return Names.release(member) if member is not None else family.title
        return family.release_title(card.get("benchmark") if card else None)

    def benchmark(self, entries: list[Entry]) -> str:
        return " / ".join(_order(self.release(e) for e in entries)) or "?"

    def task(self, entry: Entry) -> str:
        from mmke_eval import families

        card = entry.run.cards.get(entry.task)
        if entry.is_group:
            name = f"mean of {len(entry.run.groups[entry.task])} tasks"
        elif card is None:
            name = entry.task
        else:
            name = families.get(entry.family).subset_title(card)
        shown = self.labels.of_task(entry)
        if shown != entry.task:  # the same task on other data: keep them apart as the tables do
            name += shown[len(entry.task):]
        if len(self.releases) > 1:
            name = f"{self.release(entry)}: {name}"
        return name

    @staticmethod
    def variants(runs: list[Run], leave_out: tuple[str, ...] = ()) -> dict[str, str]:
        """variant key -> the editor's title, and where several runs share it, the settings in
        which they differ: "FT-LLM (one edit at a time)", "FT-LLM (sequential, gap 10)"."""
        def label_with(title: str, differing: list[str], values: dict[str, Any]) -> str:
            if "sequential_gap" in differing and "sequential" not in differing:
                differing = ["sequential", *differing]  # "sequential, gap 1" rather than "gap 1"
            text = settings_text({k: values.get(k) for k in differing})
            return f"{title} ({text})" if text else title

        return distinguish({run.variant_key: (editor_title(run), {k: v for k, v in run.variant_values().items()
                                                                  if k not in leave_out}) for run in runs}, label_with)


def editor_title(run: Run) -> str:
    from mmke_eval.registry import editor_title as declared

    return declared(run.editor) if run.editor is not None else f"unedited ({run.backend})"


def settings_text(values: dict[str, Any]) -> str:
    """Protocol settings as protocol.describe_settings says them; editor options as k=v, versions
    as "name version"."""
    from mmke_eval.protocol import PROTOCOL_FIELDS, describe_settings

    protocol = {k: v for k, v in values.items() if k in PROTOCOL_FIELDS}
    parts = [describe_settings(protocol)] if protocol else []
    for key, value in values.items():
        if key in PROTOCOL_FIELDS:
            continue
        if key.startswith("version."):
            parts.append(f"{key.split('.', 1)[1]} {value}")
        else:
            parts.append(f"{key.removeprefix('editor.')}={value}")
    return ", ".join(p for p in parts if p)


def case_count(entry: Entry) -> int | None:
    """How many cases the entry's number is over (a group: its tasks' together); None: no
    samples file to count them in."""
    run = entry.run
    if entry.is_group:
        counts = [case_count(m) if m is not None else None for m in (run.entry(t) for t in run.groups[entry.task])]
        return None if None in counts else sum(counts)
    scores = run.case_scores(entry.task)
    return None if scores is None else len(scores)


def _count_text(counts: list[int | None]) -> str:
    known = sorted({c for c in counts if c is not None})
    if not known:
        return "?"
    text = str(known[0]) if len(known) == 1 else f"{known[0]}-{known[-1]}"
    return text + ("/?" if None in counts else "")


def _cases_caption(entries: list[Entry], names: Names) -> str:
    """The subtitle line: cases per task; where runs of a task differ, which runs have how many."""
    tasks: dict[str, list[Entry]] = {}
    for entry in entries:
        tasks.setdefault(names.task(entry), []).append(entry)
    variant = Names.variants(list(_order(e.run for e in entries)))
    parts = []
    for task, members in tasks.items():
        counts = [case_count(e) for e in members]
        if len(set(counts)) == 1:
            parts.append(f"{task} {_count_text(counts)}")
        else:
            parts.append(f"{task} " + ", ".join(f"{_count_text([c])} ({variant[e.run.variant_key]})" for e, c in zip(members, counts)))
    return "Cases per task: " + "; ".join(parts) + ("  (?: no samples file to count them)" if any(
        case_count(e) is None for e in entries) else "")


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


def _radar(entries: list[Entry], names: Names, title: str):
    columns = entries[0].columns
    variants = list(_order(e.run for e in entries))
    variant = Names.variants(variants)
    tasks = _order(names.task(e) for e in entries)
    counts = {task: _count_text([case_count(e) for e in entries if names.task(e) == task]) for task in tasks}
    figure, axes = _grid(len(variants), 3.8, 3.8, polar=True)
    angles = [2 * math.pi * i / len(columns) for i in range(len(columns))]
    for ax, run in zip(axes, variants):
        for entry in (e for e in entries if e.run is run):
            task = names.task(entry)
            index = tasks[task]
            values = [entry.values.get(key) for key, _ in columns]
            if all(v is None for v in values):
                continue
            missing = [t for (_, t), v in zip(columns, values) if v is None]
            # a missing number breaks the polygon (NaN) rather than being skipped or drawn as 0
            ys = [math.nan if v is None else v for v in values]
            colour = PALETTE[index % len(PALETTE)]
            label = f"{task} (n={counts[task]})" + (f"; {', '.join(missing)}: {MISSING}" if missing else "")
            ax.plot(angles + angles[:1], ys + ys[:1], color=colour, linewidth=1.8, marker=MARKERS[index % len(MARKERS)],
                    markersize=4, label=label, clip_on=False, zorder=3)
            if not missing:
                ax.fill(angles + angles[:1], ys + ys[:1], color=colour, alpha=0.12)
        ax.set_xticks(angles, [t for _, t in columns])
        ax.tick_params(axis="x", pad=7)  # metric names clear of markers at 100
        ax.set_ylim(0, 100)
        ax.set_yticks([25, 50, 75, 100], ["25", "50", "75", "100%"], fontsize=8, color="0.35")
        # radial tick labels halfway between two spokes: markers sit on the spokes
        ax.set_rlabel_position(math.degrees(angles[1] / 2) if len(angles) > 1 else 22.5)
        ax.set_title(variant[run.variant_key].replace(" (", "\n("), pad=16)  # settings on a second line
    _legend(figure, axes, len(tasks), caption=_cases_caption(entries, names))
    figure.suptitle(title)
    return figure


def _bars(entries: list[Entry], names: Names, title: str):
    from matplotlib.patches import Patch

    columns = entries[0].columns
    variants = list(_order(e.run for e in entries))
    variant = Names.variants(variants)
    tasks = list(_order(names.task(e) for e in entries))
    rotate = len(tasks) > 3
    ticks = [f"{task}{' ' if rotate else chr(10)}(n={_count_text([case_count(e) for e in entries if names.task(e) == task])})"
             for task in tasks]
    figure, axes = _grid(len(columns), max(4.4, 1.2 * len(tasks)) if rotate else 4.4, 3.2 + (0.8 if rotate else 0))
    width = 0.8 / max(len(variants), 1)
    any_missing = False
    for ax, (key, column_title) in zip(axes, columns):
        for v, run in enumerate(variants):
            colour = PALETTE[v % len(PALETTE)]
            xs, heights, missing = [], [], []
            for t, task in enumerate(tasks):
                entry = next((e for e in entries if e.run is run and names.task(e) == task), None)
                if entry is None:
                    continue  # the editor was not run on this task: no slot to mark
                x = t - 0.4 + width * (v + 0.5)
                if entry.values.get(key) is None:
                    missing.append(x)
                else:
                    xs.append(x)
                    heights.append(entry.values[key])
            # a zero is a line at 0 in the editor's colour (edge of a flat bar), not an empty slot
            ax.bar(xs, heights, width=width, color=colour, edgecolor=colour,
                   linewidth=[2.0 if h == 0 else 0.0 for h in heights], label=variant[run.variant_key], clip_on=False)
            if missing:
                any_missing = True
                ax.bar(missing, [100] * len(missing), width=width, facecolor="none", edgecolor=colour, alpha=0.45,
                       hatch="///", linewidth=0.0, label="_missing")
                for x in missing:
                    ax.text(x, 50, MISSING, rotation=90, ha="center", va="center", fontsize=8, color="0.2")
        ax.set_xticks(range(len(tasks)), ticks, rotation=30 if rotate else 0, ha="right" if rotate else "center",
                      rotation_mode="anchor" if rotate else "default")
        ax.set_ylim(0, 100)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(Y_LABEL)
        ax.set_title(column_title)
        ax.grid(axis="y", color="0.9")
        ax.set_axisbelow(True)
    extra = [Patch(facecolor="none", edgecolor="0.4", hatch="///", label=f"{MISSING}: not computed")] if any_missing else []
    _legend(figure, axes, len(variants) + len(extra), extra, caption=_cases_caption(entries, names))
    figure.suptitle(title)
    return figure


def _gaps(entries: list[Entry], labels: Labels, names: Names, title: str):
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
        yield labels.of_task(task_entries[0]), _gap_figure(task_entries[0], lines, names, title)


def _line_key(run: Run) -> str:
    return digest([run.editor, {k: v for k, v in run.variant_values().items() if k != "sequential_gap"}])


def _gap_figure(first: Entry, lines: dict[str, list[Entry]], names: Names, title: str):
    columns = first.columns
    line_names = Names.variants([line[0].run for line in lines.values()], leave_out=("sequential_gap",))
    figure, axes = _grid(len(columns), 4.0, 3.0)
    gaps = sorted({e.run.protocol["sequential_gap"] for line in lines.values() for e in line})
    for ax, (key, column_title) in zip(axes, columns):
        for i, (line_key, line) in enumerate(lines.items()):
            points = sorted((e.run.protocol["sequential_gap"], e.values.get(key)) for e in line if e.values.get(key) is not None)
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, color=PALETTE[i % len(PALETTE)], marker=MARKERS[i % len(MARKERS)], linewidth=1.8,
                        label=line_names[line[0].run.variant_key], clip_on=False)
            for gap in sorted({e.run.protocol["sequential_gap"] for e in line if e.values.get(key) is None}):
                ax.text(gap, 50, MISSING, ha="center", va="center", fontsize=8, color=PALETTE[i % len(PALETTE)])
        ax.set_xticks(gaps)
        ax.set_xlabel("sequential gap (edits after the case)")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(Y_LABEL)
        ax.set_ylim(0, 100)
        ax.set_title(column_title)
        ax.grid(color="0.9")
    every = [e for line in lines.values() for e in line]
    by_gap = {gap: _count_text([case_count(e) for e in every if e.run.protocol["sequential_gap"] == gap]) for gap in gaps}
    caption = "Cases scored per gap: " + ", ".join(f"gap {gap}: {n}" for gap, n in by_gap.items())
    _legend(figure, axes, len(lines), caption=caption)
    figure.suptitle(f"{title}: {names.task(first)} over the sequential gap")
    return figure


def _retention(entries: list[Entry], labels: Labels, names: Names, title: str):
    """Per task (and its data): the retention curves of the lifelong runs on it."""
    by_task: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        by_task.setdefault((entry.task, entry.data.key), []).append(entry)
    for task_entries in by_task.values():
        yield labels.of_task(task_entries[0]), _retention_figure(task_entries, names, title)


def _retention_figure(entries: list[Entry], names: Names, title: str):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullLocator

    columns = entries[0].columns
    line_names = Names.variants([e.run for e in entries])
    figure, axes = _grid(len(columns), 4.0, 3.0)
    ticks = sorted({n for e in entries for n in e.stream.checkpoints})
    for ax, (key, column_title) in zip(axes, columns):
        for i, entry in enumerate(entries):
            stream, colour, marker = entry.stream, PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]
            ys = [stream.retention[n][key] for n in stream.checkpoints]
            # a missing number breaks the line (NaN) and is marked, never drawn as 0
            ax.plot(stream.checkpoints, [math.nan if y is None else y for y in ys], color=colour, marker=marker, linewidth=1.8,
                    label=line_names[entry.run.variant_key], clip_on=False)
            for n, y in zip(stream.checkpoints, ys):
                if y is None:
                    ax.text(n, 50, MISSING, ha="center", va="center", fontsize=8, color=colour)
            immediate = (stream.immediate or {}).get(key)
            # a scatter, not a line (the axes' lines are the curves); large enough to ring the retention point at T
            if immediate is not None:
                ax.scatter([stream.edits], [immediate], s=160, marker=marker, facecolors="none", edgecolors=colour,
                           linewidths=1.5, clip_on=False, zorder=3)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        if len(ticks) == 1:
            ax.set_xlim(ticks[0] / 2, ticks[0] * 2)
        ax.set_xlabel("edits made (log scale)")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(Y_LABEL)
        ax.set_ylim(0, 100)
        ax.set_title(column_title)
        ax.grid(color="0.9")
    extra = []
    if any(e.stream.immediate for e in entries):
        extra.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="0.3",
                            label="hollow: immediate (each edit right after it, mean over the stream)"))
    lengths = _order(e.stream.edits for e in entries)
    caption = (f"Retention: every edit made so far, scored after that many edits (locality against the unedited model). "
               f"Edits in the stream (T): {', '.join(str(t) for t in lengths)}")
    _legend(figure, axes, len(entries) + len(extra), extra, caption=caption)
    figure.suptitle(f"{title}: {names.task(entries[0])} over the number of edits")
    return figure


def _legend(figure, axes, count: int, extra: list | None = None, caption: str = "") -> None:
    """The figure's legend below the panels; ``caption`` (the cases per task) is its title."""
    handles, names = [], []
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    for handle in extra or []:
        handles.append(handle)
        names.append(handle.get_label())
    if handles:
        import textwrap

        legend = figure.legend(handles, names, loc="outside lower center", ncols=min(count, 4), frameon=False,
                               title="\n".join(textwrap.wrap(caption, 150)) or None, title_fontsize=9)
        legend.get_title().set_color("0.25")
