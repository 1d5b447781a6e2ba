"""Paper-style tables across runs (``mmke-eval report``): Markdown, LaTeX or CSV.

``--by task`` (default): one table per task (knowledge type, hop, or their group mean), a row per
editor (and per model when there are several); ``--by editor``: one table per editor and model, a
row per task; ``--by model``: one table per model, a row per task and editor. Tasks of different
benchmark families (different columns) never share a table.

What is never merged silently: a task scored on different data in different runs (other data
files, another ``--cases``, or data a plain lmms-eval run did not record) becomes two tasks,
``task [data 1]`` and ``task [data 2]``; runs of different models are different rows, labelled.
Above each table: the model(s), the data, and every protocol option in which its rows differ
(such a table says "mixed protocols"), plus what ``auto`` options resolved to per editor.

Best value per column: among the edited rows of the same model and task (the baseline ``none``
is shown, not ranked), compared as printed; ties are all marked. ``Avg`` is the unweighted mean
of the row's columns (benchmark tables only).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from mmke_eval.report.runs import Entry, ReportError, Run, card_label, model_label

if TYPE_CHECKING:
    from mmke_eval.report.bootstrap import Bootstrap

BY = ("task", "editor", "model")
FORMATS = ("md", "latex", "csv", "json")
BASELINE = "none"
AVG = ("avg", "Avg")


@dataclass
class Row:
    names: dict[str, str]  # Model, Editor, Task as shown
    labels: list[str]  # the names the table shows in its label columns
    entry: Entry
    block: str  # rows of one block are ranked together
    values: dict[str, float | None]
    best: set[str] = field(default_factory=set)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # column -> 95% interval (report --ci)


@dataclass
class Table:
    title: str
    notes: list[str]
    mixed: bool
    label_titles: list[str]
    columns: list[tuple[str, str]]
    rows: list[Row]
    percent: bool  # benchmark numbers (percent, one decimal); otherwise lmms-eval's own metrics
    ci: Bootstrap | None = None  # intervals asked for (report --ci)


class Labels:
    """Names of models, editor variants and tasks. Task names are global (``task [data N]`` when
    a task was scored on different data); model and editor names are made unique among the runs
    given (a whole report, or one table or figure: ``ft_llm [sequential_gap=10]`` only where
    another ft_llm is beside it)."""

    def __init__(self, runs: list[Run]):
        self.model = model_names(runs)
        self.editor = editor_names(runs)
        data_keys: dict[str, list[str]] = {}
        for run in runs:
            for entry in run.entries:
                keys = data_keys.setdefault(entry.task, [])
                if entry.data.key not in keys:
                    keys.append(entry.data.key)
        self.task = {(task, key): task if len(keys) == 1 else f"{task} [data {i}]"
                     for task, keys in data_keys.items() for i, key in enumerate(keys, 1)}

    def of_task(self, entry: Entry) -> str:
        return self.task[(entry.task, entry.data.key)]


def model_names(runs) -> dict[str, str]:
    return distinguish({run.model_key: (model_label(run.backend, run.model_args), {"backend": run.backend, **run.model_args})
                        for run in runs})


def editor_names(runs) -> dict[str, str]:
    return distinguish({run.variant_key: (run.editor or "-", run.variant_values()) for run in runs})


def distinguish(items: dict[str, tuple[str, dict[str, Any]]], label_with=None) -> dict[str, str]:
    """key -> label; labels that several keys share get the values in which those keys differ
    (``label_with(label, differing names, values)`` writes them; default ``label [k=v, ...]``)."""
    by_label: dict[str, list[str]] = {}
    for key, (label, _) in items.items():
        by_label.setdefault(label, []).append(key)
    labels = {}
    for label, keys in by_label.items():
        if len(keys) == 1:
            labels[keys[0]] = label
            continue
        names = sorted({name for key in keys for name in items[key][1]})
        differing = [n for n in names if len({_text(items[key][1].get(n)) for key in keys}) > 1]
        for key in keys:
            labels[key] = (label_with or _bracketed)(label, differing, items[key][1])
    return labels


def _bracketed(label: str, differing: list[str], values: dict[str, Any]) -> str:
    return f"{label} [" + ", ".join(f"{n}={_text(values.get(n))}" for n in differing) + "]"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ",".join(f"{k}:{_text(v)}" for k, v in value.items())
    return "-" if value is None else str(value)


def build_tables(runs: list[Run], by: str = "task", ci: Bootstrap | None = None) -> list[Table]:
    """The tables; with ``ci``, each benchmark cell gets its 95% interval (bootstrap.py)."""
    if by not in BY:
        raise ReportError(f"--by {by!r}: expected one of {', '.join(BY)}")
    labels = Labels(runs)
    entries = [entry for run in runs for entry in run.entries]
    models = _order(entry.run.model_key for entry in entries)
    variants = _order(entry.run.variant_key for entry in entries)
    appearance = _order((entry.task, entry.data.key, entry.is_group) for entry in entries)
    tasks = _order(key[:2] for key in sorted(appearance, key=lambda k: (k[2], appearance[k])))  # a group after its tasks

    def columns_key(entry: Entry) -> str:
        return entry.family if entry.family else f"other:{entry.task}"

    groupings: dict[str, tuple[Callable, Callable, Callable]] = {
        # table key, row sort key, ranking block
        "task": (lambda e: (tasks[(e.task, e.data.key)],),
                 lambda e: (models[e.run.model_key], variants[e.run.variant_key]),
                 lambda e: e.run.model_key),
        "editor": (lambda e: (variants[e.run.variant_key], models[e.run.model_key], columns_key(e)),
                   lambda e: (tasks[(e.task, e.data.key)],),
                   lambda e: f"{e.task}/{e.data.key}"),  # one row per block: nothing ranked
        "model": (lambda e: (models[e.run.model_key], columns_key(e)),
                  lambda e: (tasks[(e.task, e.data.key)], variants[e.run.variant_key]),
                  lambda e: f"{e.task}/{e.data.key}"),
    }
    table_key, row_key, block_of = groupings[by]
    grouped: dict[tuple, list[Entry]] = {}
    for entry in entries:
        grouped.setdefault(table_key(entry), []).append(entry)
    tables = []
    for key in sorted(grouped, key=_sortable):
        members = sorted(grouped[key], key=row_key)
        table = _table(by, members, labels, block_of)
        if ci is not None:
            _add_intervals(table, ci)
        tables.append(table)
    return tables


def _add_intervals(table: Table, options: Bootstrap) -> None:
    from mmke_eval.report.bootstrap import row_intervals

    table.ci = options
    if not table.percent:
        table.notes.append("95% intervals: none for lmms-eval's own tasks (no per-case scores in our format)")
        return
    table.notes.append(options.describe())
    keys = [key for key, _ in table.columns if key != AVG[0]]
    for row in table.rows:
        row.ci, why = row_intervals(row.entry, keys, AVG[0] if AVG in table.columns else None, options)
        table.notes += [f"No interval for {' / '.join(row.labels)}: {reason}" for reason in why]


def _order(keys) -> dict:
    order: dict = {}
    for key in keys:
        order.setdefault(key, len(order))
    return order


def _sortable(key: tuple) -> tuple:
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in key)


def _table(by: str, entries: list[Entry], labels: Labels, block_of: Callable) -> Table:
    first = entries[0]
    several_models = len({e.run.model_key for e in entries}) > 1
    label_titles = {"task": ["Model", "Editor"] if several_models else ["Editor"],
                    "editor": ["Task"], "model": ["Task", "Editor"]}[by]
    # a benchmark's columns are declared; another task's are the metrics its runs reported, all of them
    declared = list(first.columns) if first.family else list(_order(c for e in entries for c in e.columns))
    higher = {k: v for e in entries for k, v in e.higher_is_better.items()}
    columns = declared + ([AVG] if first.family and len(declared) > 1 else [])
    runs = list(_order(e.run for e in entries))
    model, editor = model_names(runs), editor_names(runs)
    rows = []
    for entry in entries:
        names = {"Model": model[entry.run.model_key], "Editor": editor[entry.run.variant_key], "Task": labels.of_task(entry)}
        values = dict(entry.values)
        if AVG in columns:
            present = [values.get(key) for key, _ in declared]
            values[AVG[0]] = sum(present) / len(present) if all(v is not None for v in present) else None
        rows.append(Row(names, [names[t] for t in label_titles], entry, block_of(entry), values))
    percent = first.family is not None
    _mark_best(rows, columns, higher, percent)
    notes, mixed = _notes(by, entries, runs, labels, model, editor)
    return Table(_title(by, first, labels), notes, mixed, label_titles, columns, rows, percent)


def _title(by: str, entry: Entry, labels: Labels) -> str:
    from mmke_eval import families

    what = families.get(entry.family).title if entry.family else "lmms-eval task"
    if by == "task" and entry.is_group:
        # the group's benchmark as its tasks' cards name it (mmke_mini is not MMKE-Bench)
        cards = [entry.run.cards.get(task) for task in entry.run.groups[entry.task]]
        benchmarks = {card.get("benchmark") for card in cards if card}
        if entry.family and len(benchmarks) == 1:
            what = families.get(entry.family).release_title(benchmarks.pop())
        return f"{labels.of_task(entry)} ({what}, mean of its tasks)"
    if by == "task":
        card = entry.run.cards.get(entry.task)
        subset = ", ".join(p for p in (card.get("benchmark") if card else None, card_label(card)) if p)
        return f"{labels.of_task(entry)} ({subset or what})"
    if by == "editor":
        return f"{labels.editor[entry.run.variant_key]} on {labels.model[entry.run.model_key]} ({what if entry.family else entry.task})"
    return f"{labels.model[entry.run.model_key]} ({what if entry.family else entry.task})"


def _mark_best(rows: list[Row], columns: list[tuple[str, str]], higher: dict[str, bool | None], percent: bool) -> None:
    blocks: dict[str, list[Row]] = {}
    for row in rows:
        if row.entry.run.editor != BASELINE:
            blocks.setdefault(row.block, []).append(row)
    for block in blocks.values():
        for key, _ in columns:
            direction = True if key == AVG[0] else higher.get(key)
            shown = [(float(number(row.values.get(key), percent)), row) for row in block if row.values.get(key) is not None]
            if direction is None or len(shown) < 2:
                continue
            best = max(v for v, _ in shown) if direction else min(v for v, _ in shown)
            for value, row in shown:
                if value == best:
                    row.best.add(key)


def number(value: float | None, percent: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if percent else f"{value:.4g}"


def _notes(by: str, entries: list[Entry], runs: list[Run], labels: Labels, model: dict, editor: dict) -> tuple[list[str], bool]:
    """Model(s), data, and the protocol: one line for the options in which the rows differ
    ("mixed protocols"), and what ``auto`` options resolved to where editors differ."""
    described = {}
    for run in runs:
        if run.model_key not in described:
            args = ", ".join(f"{k}={v}" for k, v in sorted(run.model_args.items()))
            described[run.model_key] = f"{model[run.model_key]} ({run.backend}{'; ' + args if args else ''})"
    notes = [("Model: " if len(described) == 1 else "Models: ") + "; ".join(described.values())]
    seen = set()
    for entry in entries:
        if (entry.task, entry.data.key) not in seen:
            seen.add((entry.task, entry.data.key))
            notes.append(f"Data: {entry.data.text}" if by == "task" else f"Data, {labels.of_task(entry)}: {entry.data.text}")
    edited = [run for run in runs if run.editor is not None]
    differing = _differences(edited, lambda run: run.protocol, editor)
    if differing:
        notes.append(f"Mixed protocols: {differing}")
    elif edited:
        defaults = _defaults()
        changed = [f"{k}={_text(v)}" for k, v in sorted(edited[0].protocol.items()) if defaults.get(k, object()) != v]
        notes.append("Protocol: the same for every row" + (f" ({', '.join(changed)})" if changed else " (the reference defaults)"))
    for option, resolved in (("loc_span", "loc_span_resolved"), ("port_image", "port_image_resolved")):
        auto = [run for run in edited if run.protocol.get(option) == "auto" and resolved in run.resolved]
        values = _order(_text(run.resolved[resolved]) for run in auto)
        if len(values) > 1:
            notes.append(f"{option}=auto is each editor's reference: " + "; ".join(
                f"{value} ({', '.join(_order(editor[r.variant_key] for r in auto if _text(r.resolved[resolved]) == value))})"
                for value in values))
    versions = _differences(runs, lambda run: run.versions, editor)
    if versions:
        notes.append(f"Versions differ: {versions}")
    return notes, bool(differing)


def _differences(runs: list[Run], values, editor: dict[str, str]) -> str:
    """``k=v, ... (rows); k=v, ... (rows)`` over the keys in which the runs' ``values`` differ; "" if none."""
    keys = sorted({k for run in runs for k in values(run)})
    differing = [k for k in keys if len({_text(values(run).get(k)) for run in runs}) > 1]
    if not differing:
        return ""
    setting = {run: ", ".join(f"{k}={_text(values(run).get(k))}" for k in differing) for run in runs}
    return "; ".join(f"{text} ({', '.join(_order(editor[r.variant_key] for r in runs if setting[r] == text))})"
                     for text in _order(setting.values()))


def _defaults() -> dict[str, Any]:
    from dataclasses import asdict

    from mmke_eval.protocol import Protocol

    return asdict(Protocol())


# -- rendering ------------------------------------------------------------------------------------

def render(tables: list[Table], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ReportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return render_csv(tables)
    blocks = [render_markdown(t) if fmt == "md" else render_latex(t) for t in tables]
    if fmt == "json":
        return render_json(tables)
    preface = ("Best value per column in bold, among the edited rows of the same model and task (the baseline "
               "`none` is not ranked); Avg: the unweighted mean of the row's columns.")
    if any(t.ci for t in tables):
        preface += " In brackets: the 95% interval over cases (bootstrap)."
    if fmt == "latex":
        preface = "% " + preface.replace("`", "") + "\n% Needs \\usepackage{booktabs}."
    return "\n\n".join([preface] + blocks) + "\n"


def _cells(table: Table, row: Row, bold: Callable[[str], str]) -> list[str]:
    cells = []
    for key, _ in table.columns:
        text = number(row.values.get(key), table.percent)
        text = bold(text) if key in row.best else text
        if key in row.ci:
            text += " [{:.1f}, {:.1f}]".format(*row.ci[key])
        cells.append(text)
    return cells


def render_markdown(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    lines += [f"- {'**' + note.split(':', 1)[0] + '**:' + note.split(':', 1)[1] if note.startswith('Mixed') else note}"
              for note in table.notes]
    header = table.label_titles + [title for _, title in table.columns]
    lines += ["", "| " + " | ".join(header) + " |",
              "|" + "---|" * len(table.label_titles) + "---:|" * len(table.columns)]
    for row in table.rows:
        lines.append("| " + " | ".join(row.labels + _cells(table, row, lambda s: f"**{s}**")) + " |")
    return "\n".join(lines)


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(table: Table) -> str:
    lines = [f"% {note}" for note in table.notes]
    caption = table.title + (". Mixed protocols (see the comments above)" if table.mixed else "")
    lines += [r"\begin{table}[ht]", r"\centering", rf"\caption{{{latex_escape(caption)}.}}",
              r"\begin{tabular}{" + "l" * len(table.label_titles) + "r" * len(table.columns) + "}", r"\toprule",
              " & ".join(latex_escape(t) for t in table.label_titles + [title for _, title in table.columns]) + r" \\",
              r"\midrule"]
    previous = None
    for row in table.rows:
        if table.label_titles[0] == "Task" and len(table.label_titles) > 1 and previous not in (None, row.labels[0]):
            lines.append(r"\midrule")  # --by model: a rule between tasks
        previous = row.labels[0]
        cells = [latex_escape(label) for label in row.labels] + _cells(table, row, lambda s: rf"\textbf{{{s}}}")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


CSV_FIELDS = ["table", "model", "editor", "task", "metric", "title", "value", "best", "data", "protocol", "ci_low", "ci_high"]


def render_csv(tables: list[Table]) -> str:
    """One line per (table, row, column), for tools (numbers to 4 decimals, not 1)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    defaults = _defaults()
    for table in tables:
        for row in table.rows:
            run = row.entry.run
            protocol = ";".join(f"{k}={_text(v)}" for k, v in sorted(run.protocol.items()) if defaults.get(k, object()) != v)
            for key, title in table.columns:
                value = row.values.get(key)
                low, high = row.ci.get(key, ("", ""))
                writer.writerow({
                    "table": table.title, "model": row.names["Model"], "editor": row.names["Editor"], "task": row.names["Task"],
                    "metric": key, "title": title, "value": "" if value is None else repr(round(float(value), 4)),
                    "best": "1" if key in row.best else "", "data": row.entry.data.text, "protocol": protocol,
                    "ci_low": low if low == "" else repr(round(low, 4)), "ci_high": high if high == "" else repr(round(high, 4)),
                })
    return out.getvalue()


def render_json(tables: list[Table]) -> str:
    """Every table as data: its notes, columns and rows, each cell's value, best flag and (--ci)
    95% interval, with how the intervals were made."""
    import json

    options = next((t.ci for t in tables if t.ci), None)
    document = {
        "ci": None if options is None else {"level": 0.95, "method": "case-level percentile bootstrap",
                                            "resamples": options.resamples, "seed": options.seed},
        "tables": [{
            "title": table.title, "notes": table.notes, "mixed_protocols": table.mixed, "percent": table.percent,
            "columns": [{"metric": key, "title": title} for key, title in table.columns],
            "rows": [{
                "model": row.names["Model"], "editor": row.names["Editor"], "task": row.names["Task"], "labels": row.labels,
                "results_file": str(row.entry.run.path), "data": row.entry.data.text,
                "cells": {key: {"value": row.values.get(key), "best": key in row.best,
                                **({"ci": list(row.ci[key])} if key in row.ci else {})} for key, _ in table.columns},
            } for row in table.rows],
        } for table in tables],
    }
    return json.dumps(document, indent=2) + "\n"
