"""Results folders read back as runs: what was run (model, editor, protocol, data) and its numbers.

A results folder is anything holding lmms-eval ``*_results.json`` files: an ``mmke-eval
--output_path`` folder (one sub-folder per editor, each with our ``mmke`` section in the results),
a plain ``lmms-eval --output_path`` folder (``--model edited`` or any other model), or one results
file. What identifies a run is read from ``config.model_args`` (the same string for both: base
backend, editor, ``editor.k=v`` overrides, protocol options) and, when mmke-eval wrote it, from the
``mmke`` section (data hashes, cases used, resolved per-editor choices, versions).

A lifelong run (``lifelong=T``) records, per task, its columns after each checkpoint's number of
edits and right after each edit (``results["mmke"]["lifelong"]``): the task's ``Entry`` carries
them as a ``Stream`` (its numbers in tables: after all T edits), read and checked here.

Each task of a run has a data identity: mmke-eval records the hash of the data files each task read
and how many cases it used (``--cases``); a plain lmms-eval run records neither, so its tasks are
identified by name and document count only, and never share a row with recorded data.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmke_eval.journal import digest

RESULTS_SUFFIX = "_results.json"
LIFELONG_SCORES = ("retention", "immediate")
# model_args that change where or how fast a model runs, not what it is
PLACEMENT_ARGS = ("device", "device_map", "batch_size", "max_batch_size")
# model_args the edited model owns besides the protocol options
EDITED_ARGS = ("base", "editor", "journal")


class ReportError(ValueError):
    """A results folder that cannot be read as a run, or a request that cannot be met; the message names it."""


@dataclass
class DataId:
    """What data a task of a run was scored on: ``key`` decides what may share a row, ``text`` says it."""

    key: str
    text: str
    files: str | None = None  # digest of the data files read (None: not recorded)


@dataclass
class Stream:
    """A lifelong task's scores (``results["mmke"]["lifelong"][task]``), in percent (None: not computed)."""

    edits: int  # T, the stream's length
    checkpoints: list[int]  # numbers of edits it was scored after, ascending, the last = T
    retention: dict[int, dict[str, float | None]]  # checkpoint -> metric key -> every edit so far, scored then
    immediate: dict[str, float | None] | None  # metric key -> each edit right after it, mean over the T edits


@dataclass(eq=False)  # compared and hashed by identity
class Entry:
    """One task's numbers in one run."""

    run: "Run"
    task: str
    family: str | None  # the benchmark family; None: a task outside the editing families
    columns: list[tuple[str, str]]  # (metric key, title), in table order
    values: dict[str, float | None]
    higher_is_better: dict[str, bool | None]
    stream: Stream | None = None  # a lifelong task: its numbers over the stream (``values``: after all T edits)

    @property
    def data(self) -> DataId:
        return self.run.data[self.task]

    @property
    def is_group(self) -> bool:
        return self.task in self.run.groups


@dataclass(eq=False)  # compared and hashed by identity
class Run:
    path: Path
    backend: str  # the lmms-eval model (the base backend of an edited run)
    model_args: dict[str, str]  # what identifies the model: pretrained, dtype, ... (no placement)
    editor: str | None  # None: a plain lmms-eval run of an unedited model
    editor_overrides: dict[str, str] = field(default_factory=dict)
    editor_config: dict[str, Any] = field(default_factory=dict)  # resolved (recorded by mmke-eval)
    protocol: dict[str, Any] = field(default_factory=dict)  # options, defaults filled in
    resolved: dict[str, Any] = field(default_factory=dict)  # what "auto" options resolved to
    recorded: bool = False  # written by mmke-eval (has the mmke section)
    cards: dict[str, dict] = field(default_factory=dict)
    data: dict[str, DataId] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    samples: dict[str, Path] = field(default_factory=dict)  # task -> lmms-eval samples file
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> its tasks (lmms-eval's group_subtasks)
    stamp: str = ""  # lmms-eval's date id: orders runs in time
    versions: dict[str, Any] = field(default_factory=dict)
    _case_scores: dict[str, dict] = field(default_factory=dict, repr=False)

    def case_scores(self, task: str) -> dict[str, dict[str, float]] | None:
        """The task's per-case scores from its samples file (read once); None: no samples file."""
        if task not in self.samples:
            return None
        if task not in self._case_scores:
            self._case_scores[task] = case_scores(self.samples[task])
        return self._case_scores[task]

    @property
    def model_key(self) -> str:
        return digest([self.backend, self.model_args])

    @property
    def variant_key(self) -> str:
        """The editor as run: name, overrides, protocol, and the code that ran it (a new version
        of an editor is another row, never a rerun of the old one)."""
        return digest([self.editor, self.variant_values()])

    def variant_values(self) -> dict[str, Any]:
        """What tells variants of an editor apart, flat: overrides, protocol options, versions."""
        return {**{f"editor.{k}": v for k, v in self.editor_overrides.items()}, **self.protocol,
                **{f"version.{k}": v for k, v in self.versions.items()}}

    def entry(self, task: str) -> Entry | None:
        return next((e for e in self.entries if e.task == task), None)


def model_label(backend: str, model_args: dict[str, str]) -> str:
    """A short name: the last part of ``pretrained`` (a folder or a Hub id), else the backend."""
    for key in ("pretrained", "model", "model_name", "model_id", "path"):
        if model_args.get(key):
            return Path(str(model_args[key]).rstrip("/")).name or str(model_args[key])
    return backend


def card_label(card: dict | None) -> str:
    """What subset a task is: its knowledge type, hop or subset (for legends and titles)."""
    if not card:
        return ""
    if card.get("hop") is not None:
        return f"{card['hop']}-hop"
    return str(card.get("knowledge_type") or card.get("subset") or "")


def find_results(path: Path) -> list[Path]:
    if not path.exists():
        raise ReportError(f"{path}: no such file or folder")
    if path.is_file():
        return [path]
    found = sorted(p for p in path.rglob(f"*{RESULTS_SUFFIX}") if p.is_file())
    if not found:
        raise ReportError(f"{path}: no lmms-eval results file (*{RESULTS_SUFFIX}) in it or below it")
    return found


def load_runs(paths: list[str | Path]) -> tuple[list[Run], list[str]]:
    """Every run under ``paths``, oldest first, and notes on what was left out (an entry saved
    twice: the newer one is kept)."""
    files: list[Path] = []
    for path in paths:
        for found in find_results(Path(path)):
            if found.resolve() not in {f.resolve() for f in files}:
                files.append(found)
    runs = sorted((read_run(path) for path in files), key=lambda run: (run.stamp, str(run.path)))
    notes = []
    newest: dict[str, Entry] = {}
    for run in runs:  # oldest first: a later entry of the same thing replaces the earlier one
        for entry in run.entries:
            key = digest([run.model_key, run.variant_key, entry.task, entry.data.key])
            if key in newest:
                notes.append(f"{entry.task} of {newest[key].run.path}: the same run is in {run.path}, which is newer and is used")
            newest[key] = entry
    kept = {id(entry) for entry in newest.values()}
    for run in runs:
        run.entries = [entry for entry in run.entries if id(entry) in kept]
    return [run for run in runs if run.entries], notes


def read_run(path: Path) -> Run:
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: not a readable results file ({err})") from None
    if not isinstance(results, dict) or not isinstance(results.get("results"), dict) or not isinstance(results.get("config"), dict):
        raise ReportError(f"{path}: not an lmms-eval results file (no 'results' and 'config')")
    try:
        return _run(path, results)
    except (KeyError, TypeError, ValueError) as err:
        raise ReportError(f"{path}: {err}") from None


def _run(path: Path, results: dict) -> Run:
    from mmke_eval.protocol import PROTOCOL_FIELDS, protocol_from_options
    from mmke_eval.keyvalues import parse_key_values
    from mmke_eval.lmms.taskfiles import task_cards
    from mmke_eval.report.rows import table_rows

    config = results["config"]
    mmke = results.get("mmke") or {}
    given = mmke.get("model_args") or config.get("model_args") or ""
    if isinstance(given, dict):  # lmms-eval's Python API takes a dict
        given = ",".join(f"{k}={v}" for k, v in given.items())
    args = parse_key_values(str(given), f"{path}: model_args")
    edited = config.get("model") == "edited"
    stamp = path.name[: -len(RESULTS_SUFFIX)] if path.name.endswith(RESULTS_SUFFIX) else ""
    run = Run(path=path, backend=args.get("base", "") if edited else str(config.get("model")), model_args={},
              editor=args.get("editor", "none") if edited else None, recorded=bool(mmke), stamp=stamp)
    if edited:
        if not run.backend:
            raise ValueError("an edited run without base= in its model_args")
        run.editor_overrides = {k.split(".", 1)[1]: v for k, v in args.items() if k.startswith("editor.")}
        options = {k: v for k, v in args.items() if k in PROTOCOL_FIELDS}
        run.protocol = {**asdict(protocol_from_options(**options)),
                        **{k: v for k, v in args.items() if k.startswith("adapter.")}}
        owned = set(PROTOCOL_FIELDS) | set(EDITED_ARGS)
        run.model_args = {k: v for k, v in args.items()
                          if k not in owned and not k.startswith(("editor.", "adapter.")) and k not in PLACEMENT_ARGS}
        recorded_protocol = mmke.get("protocol") or {}
        run.resolved = {k: recorded_protocol[k] for k in ("loc_span_resolved", "port_image_resolved") if k in recorded_protocol}
        run.editor_config = {k: v for k, v in (mmke.get("editor") or {}).items() if k != "editor"}
    else:
        run.model_args = {k: v for k, v in args.items() if k not in PLACEMENT_ARGS}
    provenance = mmke.get("provenance") or {}
    git = provenance.get("git") or {}
    run.versions = {**(provenance.get("versions") or {"lmms-eval": results.get("lmms_eval_version")}),
                    **({"git": git.get("revision", "")[:12] + ("+changes" if git.get("dirty") else "")} if git else {})}
    run.cards = task_cards(results)
    # lmms-eval lists every task run on its own as a group without members
    run.groups = {g: list(m) for g, m in (results.get("group_subtasks") or {}).items() if m}
    run.data = _data_ids(results, run.cards)
    for name in run.data:
        samples = path.with_name(f"{stamp}_samples_{name}.jsonl")
        if stamp and samples.is_file():
            run.samples[name] = samples
    streams = _streams(results)
    # A lifelong task is one entry, from its stream (its table rows, one per checkpoint, are the same numbers).
    entries = [_entry(run, row, results) for row in table_rows(results, run.editor or "-") if row["task"] not in streams]
    entries += [_stream_entry(run, task, stream, results) for task, stream in streams.items()]
    run.entries = sorted(entries, key=lambda e: e.is_group)  # a group after its tasks
    return run


def _entry(run: Run, row: dict, results: dict) -> Entry:
    from mmke_eval import families

    task = row["task"]
    better = (results.get("higher_is_better") or {}).get(task) or {}
    if row.get("kind") == "other":
        columns = [(name, _metric_title(name)) for name in row["metrics"]]
        return Entry(run, task, None, columns, dict(row["metrics"]),
                     {name: better.get(name.split(",")[0]) for name in row["metrics"]})
    columns = families.get(row["family"]).columns
    return Entry(run, task, row["family"], columns, {key: row.get(key) for key, _ in columns}, {key: True for key, _ in columns})


def _stream_entry(run: Run, task: str, stream: Stream, results: dict) -> Entry:
    from mmke_eval import families
    from mmke_eval.report.rows import task_families

    family = task_families(results).get(task)
    where = f"results['mmke']['lifelong'][{task!r}]"
    if family is None:
        raise ValueError(f"{where}: {task!r} is not a task of an editing benchmark in this results file (no source card)")
    columns = families.get(family).columns
    keys = {key for key, _ in columns}
    rows = [stream.retention[n] for n in stream.checkpoints] + ([stream.immediate] if stream.immediate is not None else [])
    if not any(key in row for row in rows for key in keys):
        raise ValueError(f"{where}: no row has a metric of the {family} family ({', '.join(sorted(keys))}); "
                         f"its rows carry the family's column keys")
    for row in rows:
        for key in keys:
            row.setdefault(key, None)
    return Entry(run, task, family, columns, {key: stream.retention[stream.edits][key] for key, _ in columns},
                 {key: True for key, _ in columns}, stream)


def _streams(results: dict) -> dict[str, Stream]:
    """The lifelong section (``results["mmke"]["lifelong"]``), checked: task -> Stream. A section
    that is not as mmke-eval writes it is a ValueError naming the task and the key."""
    section = (results.get("mmke") or {}).get("lifelong")
    if section is None:
        return {}
    fix = "write it as mmke-eval does (docs/reports.md, \"Retention curves\") or leave this file out"
    if not isinstance(section, dict):
        raise ValueError(f"results['mmke']['lifelong'] is {type(section).__name__}, not a mapping of task -> stream; {fix}")
    streams = {}
    for task, stream in section.items():
        where = f"results['mmke']['lifelong'][{task!r}]"
        if task not in results["results"]:
            raise ValueError(f"{where}: {task!r} is not a task of this results file; {fix}")
        if not isinstance(stream, dict):
            raise ValueError(f"{where} is {type(stream).__name__}, not a mapping with edits, checkpoints and rows; {fix}")
        edits, checkpoints, rows = stream.get("edits"), stream.get("checkpoints"), stream.get("rows")
        if not _count(edits):
            raise ValueError(f"{where}['edits'] is {edits!r}, not the stream's length (a whole number >= 1); {fix}")
        if (not isinstance(checkpoints, list) or not checkpoints or not all(_count(n) for n in checkpoints)
                or checkpoints != sorted(set(checkpoints)) or checkpoints[-1] != edits):
            raise ValueError(f"{where}['checkpoints'] is {checkpoints!r}: not ascending numbers of edits ending at edits={edits}; {fix}")
        if not isinstance(rows, list):
            raise ValueError(f"{where}['rows'] is {type(rows).__name__}, not a list of rows; {fix}")
        retention: dict[int, dict] = {}
        immediate = None
        for i, row in enumerate(rows):
            at = f"{where}['rows'][{i}]"
            if not isinstance(row, dict):
                raise ValueError(f"{at} is {type(row).__name__}, not a mapping; {fix}")
            score, n = row.get("score"), row.get("edits")
            if score not in LIFELONG_SCORES:
                raise ValueError(f"{at}['score'] is {score!r}, not one of {', '.join(LIFELONG_SCORES)}; {fix}")
            if score == "retention" and (n not in checkpoints or n in retention):
                raise ValueError(f"{at}: a retention row at edits={n!r}, which is not a checkpoint {checkpoints} "
                                 f"or is there twice; {fix}")
            if score == "immediate" and (n != edits or immediate is not None):
                raise ValueError(f"{at}: an immediate row at edits={n!r}; the stream has one, at edits={edits}; {fix}")
            values = {}
            for key, value in row.items():
                if key in ("edits", "score"):
                    continue
                if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value != value
                                          or not 0 <= value <= 100):
                    raise ValueError(f"{at}[{key!r}] is {value!r}, not a percentage (0-100) or null; {fix}")
                values[key] = None if value is None else float(value)
            if score == "retention":
                retention[n] = values
            else:
                immediate = values
        left = [n for n in checkpoints if n not in retention]
        if left:
            raise ValueError(f"{where}: no retention row at edits={left[0]} (a checkpoint); {fix}")
        streams[task] = Stream(edits, list(checkpoints), retention, immediate)
    return streams


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _metric_title(name: str) -> str:
    metric, _, filter_name = name.partition(",")
    return metric if filter_name in ("", "none") else f"{metric} ({filter_name})"


def _data_ids(results: dict, cards: dict[str, dict]) -> dict[str, DataId]:
    from mmke_eval.data.source import card_key

    mmke = results.get("mmke") or {}
    samples = results.get("n-samples") or {}
    limit = (results.get("config") or {}).get("limit")
    ids: dict[str, DataId] = {}
    for task in results["results"]:
        card = cards.get(task)
        documents = (samples.get(task) or {}).get("effective")
        if card is None:
            if (results.get("group_subtasks") or {}).get(task):
                continue  # a group: from its members, below
            version = (results.get("versions") or {}).get(task)
            text = f"lmms-eval task {task} (version {version}), {documents} documents" + (f", --limit {limit}" if limit else "")
            ids[task] = DataId(digest(["lmms-eval", task, version, documents, limit]), text)
            continue
        key = "/".join(card_key(card))  # how mmke-eval keys its data records
        record, skipped = (mmke.get("data") or {}).get(key), (mmke.get("skipped_cases") or {}).get(key)
        if record and skipped is not None:
            files = digest(record.get("files"))
            first_n = skipped.get("first_n")
            total = skipped.get("total")
            left_out = sum(len(ids) for ids in (skipped.get("skipped") or {}).values())
            used = (f"first {first_n} case{'s' * (first_n != 1)}" if first_n else f"all {total - left_out} cases"
                    if isinstance(total, int) else "all cases")
            used += f" ({left_out} of {total} skipped by the loader)" if left_out else ""
            ids[task] = DataId(digest([key, files, first_n]), f"{key}: data files {files[:12]}, {used}", files)
        else:
            ids[task] = DataId(digest(["unrecorded", key, documents]),
                               f"{key}: data not recorded (plain lmms-eval run), {documents} probe documents")
    groups = results.get("group_subtasks") or {}
    for _ in range(len(groups)):  # groups of groups
        for group, members in groups.items():
            if group not in ids and members and all(m in ids for m in members):
                ids[group] = DataId(digest([ids[m].key for m in members]), "mean of " + ", ".join(members))
    for task in results["results"]:
        ids.setdefault(task, DataId(digest(["unknown", task]), f"{task}: data unknown"))
    return ids


def case_scores(path: Path) -> dict[str, dict[str, float]]:
    """case id -> metric -> the case's score in percent, from an lmms-eval samples file: each
    document's metrics are ``{"case", "score"}`` items; a case's value is the mean of its items
    (NaN left out), as the tasks aggregate them (metrics.case_mean)."""
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError as err:
                raise ReportError(f"{path}, line {line_number}: not JSON ({err})") from None
            for metric, item in doc.items():
                if isinstance(item, dict) and "case" in item and isinstance(item.get("score"), (int, float)):
                    if item["score"] == item["score"]:  # NaN: no answer tokens, left out
                        scores[str(item["case"])][metric].append(float(item["score"]))
    return {case: {m: 100.0 * sum(v) / len(v) for m, v in metrics.items()} for case, metrics in scores.items()}
