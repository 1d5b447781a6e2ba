"""How the edits of a task's cases are ordered, and which finished cases the journal can answer.

* ``Independent``: one case at a time (edit, score, restore); with ``user_number=N`` in groups of N
  cases whose edits are all live while each of them is scored (MMKE-Bench's user number).
* ``Sequential``: edits pile up across the task; every pre-edit output comes from the unedited
  model; case i is scored ``sequential_gap`` edits after its own (VLKEB), and all edits are undone
  at the end.
* ``Lifelong``: per task, a stream of T edits made one after another and never undone in between;
  each edit is scored right after its own (immediate), and at 1, 10, 100, 1000 and T edits every
  edit made so far is scored on the current model (retention), locality against the unedited model.

A schedule drives a ``CaseEvaluator`` (engine/evaluator.py) and writes every finished case to the
journal under keys that cover everything its result depends on (mmke_eval/journal.py).
"""

from __future__ import annotations

import json
import logging
import sys
from collections import deque

from tqdm import tqdm

from mmke_eval.engine.cases import ABSENT, EDIT_ONLY_REASON, ProbeRequest, ProbeResponse, is_edit_only, without_padding_field
from mmke_eval.journal import digest as journal_digest
from mmke_eval.journal import file_digest
from mmke_eval.protocol import Protocol

logger = logging.getLogger("mmke_eval")

Cases = list[list[ProbeRequest]]


LIFELONG_CHECKPOINTS = (1, 10, 100, 1000)  # LiveEdit's T; the stream's own length is always one more
BEYOND_STREAM_REASON = "lifelong: after the stream's last edit (the task has more cases than lifelong=T)"


def for_protocol(protocol: Protocol) -> "Independent | Sequential | Lifelong":
    if protocol.lifelong:
        return Lifelong(protocol.lifelong)
    return Sequential(protocol.sequential_gap) if protocol.sequential else Independent(protocol.user_number)


class Independent:
    """Independent edits, or with ``user_number`` N groups of N cases: every edit of a group is
    applied, then each of its cases is scored, then all are undone."""

    def __init__(self, user_number: int = 1):
        self.user_number = user_number

    def answer(self, evaluator, cases: Cases, results: list, stats: list, progress: bool = True) -> None:
        n = self.user_number
        resumed = 0
        groups = [cases[i : i + n] for i in range(0, len(cases), n)]
        for group in (bar := tqdm(groups, desc=_description(evaluator), disable=not progress)):
            if any(is_edit_only(probes) for probes in group):
                raise ValueError(f"case {group[0][0].doc['case_id']} is marked edit-only, which needs sequential=true")
            keys = self._keys(group)
            if answer_from_journal(evaluator, keys, group, results, stats):
                resumed += len(group)
                bar.set_postfix(resumed=resumed)
                continue
            self._answer_group(evaluator, group, results, stats)
            for key, probes in zip(keys, group):
                write_journal(evaluator, key, probes, results)
        evaluator.resumed_cases[evaluator.label] = evaluator.resumed_cases.get(evaluator.label, 0) + resumed

    def _keys(self, group: Cases) -> list[str]:
        """A case's own key, or with user_number > 1 keys covering its whole group (a case's result
        depends on every edit of the group)."""
        if self.user_number == 1:
            return [case_key(probes) for probes in group]
        return whole_keys(group, {"user_number": self.user_number, "group_cases": len(group)})

    @staticmethod
    def _answer_group(evaluator, group: Cases, results: list, stats: list) -> None:
        """Pre-edit outputs of every case, all of the group's edits, each case scored, all undone."""
        pres = [evaluator.pre_edit(probes) for probes in group]
        handles: list = []
        try:
            firsts = [evaluator.apply_case(probes, handles, stats) for probes in group]
            if len(group) > 1 and any(handle.prefix for handle in handles):
                raise ValueError(f"editor {evaluator.editor.name!r} edits in context (a prompt prefix per edit) and cannot hold "
                                 "several cases' edits at once (user_number > 1)")
            for probes, pre, (handle, request) in zip(group, pres, firsts):
                evaluator.post_edit(probes, pre, handle, request, results)
        finally:
            evaluator.restore(handles)


class Sequential:
    """Edits pile up over the whole task; case i is scored ``gap`` edits after its own. Edit-only
    cases (VLKEB: the ``gap`` cases after the N scored ones) are edited, never scored."""

    def __init__(self, gap: int = 0):
        self.gap = gap

    def answer(self, evaluator, cases: Cases, results: list, stats: list, progress: bool = True) -> None:
        label = evaluator.label
        # A sequential case's result depends on every edit before it (and, with a gap, after it):
        # the keys cover the whole task, so only a whole identical task is reused.
        keys = whole_keys(cases, {"sequential_task_cases": len(cases)})
        if answer_from_journal(evaluator, keys, cases, results, stats):
            evaluator.resumed_cases[label] = evaluator.resumed_cases.get(label, 0) + len(cases)
            return
        pres = [{} if is_edit_only(probes) else evaluator.pre_edit(probes)
                for probes in tqdm(cases, desc="pre-edit", disable=not progress)]
        gap = self.gap
        scored = sum(not is_edit_only(probes) for probes in cases)
        if gap and len(cases) <= gap:
            logger.warning("sequential_gap=%d with %d cases%s: no case is scored", gap, len(cases), f" in {label}" if label else "")
        handles, waiting = [], deque()
        try:
            for probes, pre in tqdm(list(zip(cases, pres)), desc=_description(evaluator), disable=not progress):
                waiting.append((probes, pre, *evaluator.apply_case(probes, handles, stats)))
                if len(waiting) > gap:
                    self._score_when_due(evaluator, *waiting.popleft(), results)
            tail = 0
            for probes, _, handle, _ in waiting:  # fewer than ``gap`` edits came after them
                if is_edit_only(probes):
                    evaluator.unscored(probes, handle, results, EDIT_ONLY_REASON)
                else:
                    evaluator.unscored(probes, handle, results, "sequential_gap: too few edits after it")
                    tail += 1
            evaluator.unscored_cases[label] = evaluator.unscored_cases.get(label, 0) + tail
            evaluator.edit_only_cases[label] = evaluator.edit_only_cases.get(label, 0) + len(cases) - scored
        finally:
            evaluator.restore(handles)
        for key, probes in zip(keys, cases):  # only a whole task: a part of one cannot be resumed
            write_journal(evaluator, key, probes, results)

    @staticmethod
    def _score_when_due(evaluator, probes, pre, handle, request, results: list) -> None:
        if is_edit_only(probes):
            evaluator.unscored(probes, handle, results, EDIT_ONLY_REASON)
        else:
            evaluator.post_edit(probes, pre, handle, request, results)


class Lifelong:
    """A stream of ``edits`` edits per task, in the task's case order, never restored in between.

    Every probe's response gets, besides its final score (after all T edits, ``live_edits`` = T),
    a ``lifelong`` record: its case's place in the stream, its score right after that edit
    (immediate) and its score at each checkpoint at or after it (retention). Locality compares
    with the unedited model's outputs, computed before the first edit. Cases after the T-th are
    not edited and left unscored. A stream is journaled only whole: an interrupted one restarts
    from its first edit (it says so)."""

    def __init__(self, edits: int):
        self.edits = edits

    def checkpoints(self) -> list[int]:
        return sorted({c for c in LIFELONG_CHECKPOINTS if c <= self.edits} | {self.edits})

    def answer(self, evaluator, cases: Cases, results: list, stats: list, progress: bool = True) -> None:
        label = evaluator.label
        if len(cases) < self.edits:
            raise ValueError(f"lifelong={self.edits}: {label or 'the task'} has {len(cases)} edit cases; a stream of "
                             f"{self.edits} edits needs as many (pass lifelong={len(cases)} or less, or a task with more cases)")
        stream, beyond = cases[: self.edits], cases[self.edits :]
        if any(is_edit_only(probes) for probes in cases):
            raise ValueError(f"case {cases[0][0].doc['case_id']} is marked edit-only, which only sequential=true uses")
        keys = whole_keys(cases, {"lifelong": self.edits, "checkpoints": self.checkpoints(), "task_cases": len(cases)})
        if answer_from_journal(evaluator, keys, cases, results, stats):
            evaluator.resumed_cases[label] = evaluator.resumed_cases.get(label, 0) + len(cases)
            return
        if evaluator.journal is not None:
            print(f"mmke-eval: {label}: lifelong stream of {self.edits} edits starts at its first edit (a stream is kept "
                  "for resuming only once finished: an interrupted one restarts)", file=sys.stderr, flush=True)
        pres = [evaluator.pre_edit(probes) for probes in tqdm(stream, desc="pre-edit", disable=not progress)]
        checkpoints = set(self.checkpoints())
        records: dict[int, dict] = {}  # probe index -> its lifelong record
        live: list[tuple] = []
        handles: list = []
        try:
            for n, (probes, pre) in enumerate(tqdm(list(zip(stream, pres)), desc=_description(evaluator), disable=not progress), 1):
                handle, request = evaluator.apply_case(probes, handles, stats)
                live.append((probes, pre, handle, request))
                immediate = self._scored(evaluator, probes, pre, handle, request, n)
                for probe in probes:
                    records[probe.index] = {"position": n, "immediate": _scores_of(immediate[probe.index]), "retention": {}}
                if n not in checkpoints:
                    continue
                for done_probes, done_pre, done_handle, done_request in live:  # every edit so far, on this model
                    scored = immediate if done_probes is probes else self._scored(evaluator, done_probes, done_pre, done_handle, done_request, n)
                    for probe in done_probes:
                        records[probe.index]["retention"][str(n)] = _scores_of(scored[probe.index])
                        if n == self.edits:  # the final state answers the probe (the task's lmms-eval number)
                            results[probe.index] = scored[probe.index]
            for probes in beyond:
                evaluator.unscored(probes, _NO_EDIT, results, BEYOND_STREAM_REASON)
            evaluator.unscored_cases[label] = evaluator.unscored_cases.get(label, 0) + len(beyond)
        finally:
            evaluator.restore(handles)
        for probes in stream:
            for probe in probes:
                response = ProbeResponse.from_json(results[probe.index])
                response.lifelong = records[probe.index]
                results[probe.index] = response.to_json()
        for key, probes in zip(keys, cases):  # only a whole stream: a part of one cannot be resumed
            write_journal(evaluator, key, probes, results)

    def rows(self, cases: Cases, results: list) -> list[dict]:
        """The task's columns at each checkpoint (``score: retention``, ``edits: N``) and right after
        each edit (``score: immediate``, ``edits: T``), aggregated as the task aggregates its final
        numbers (``metrics.probe_items``, ``metrics.case_mean``); a column no probe scored is None."""
        from mmke_eval import families, metrics

        stages = [("retention", n) for n in self.checkpoints()] + [("immediate", self.edits)]
        family = families.get(cases[0][0].doc["family"]) if cases else None
        columns = [key for key, _ in family.columns] if family else []
        rows = []
        for stage, n in stages:
            items: dict[str, list[dict]] = {}
            for probes in cases:
                for probe in probes:
                    at = _response_at(results[probe.index], stage, n)
                    if at is None:
                        continue
                    doc = probe.doc
                    scored = metrics.probe_items(probe.kind, doc["answer"], at, doc.get("entity", ""), doc["case_id"])
                    for name, item in scored.items():
                        items.setdefault(name, []).append(item)
            values = {key: metrics.case_mean(items[key]) if items.get(key) else float("nan") for key in columns}
            rows.append({"edits": n, "score": stage, **{k: None if v != v else v for k, v in values.items()}})
        return rows

    @staticmethod
    def _scored(evaluator, probes, pre, handle, request, live_edits: int) -> dict[int, str]:
        """The case's probes scored on the model as it is now (``live_edits`` edits live)."""
        scored: dict[int, str] = {}
        evaluator.post_edit(probes, pre, handle, request, scored)
        for index, text in scored.items():
            response = ProbeResponse.from_json(text)
            response.live_edits = live_edits
            scored[index] = response.to_json()
        return scored


class _NoEdit:  # the handle of a case the stream never edited (unscored)
    stats: dict = {}
    prefix = ""
    responder = None


_NO_EDIT = _NoEdit()
LIFELONG_SCORE_FIELDS = ("live_edits", "score", "counts", "entity_acc", "entity_match", "generated")


def _response_at(text: str, stage: str, edits: int) -> str | None:
    """A stream probe's response as it was at a checkpoint (``retention`` after ``edits`` edits) or
    right after its own edit (``immediate``); None when it had no score then (not yet edited, or
    not in the stream)."""
    response = ProbeResponse.from_json(text)
    record = response.lifelong if response is not None and response.given("lifelong") else None
    if not record:
        return None
    scores = record["immediate"] if stage == "immediate" else record["retention"].get(str(edits))
    if scores is None:
        return None
    for name in LIFELONG_SCORE_FIELDS:
        setattr(response, name, scores.get(name, ABSENT))
    response.lifelong = ABSENT
    return response.to_json()


def _scores_of(text: str) -> dict:
    """What a checkpoint keeps of a probe's response: the fields its columns are computed from."""
    response = ProbeResponse.from_json(text)
    return {name: getattr(response, name) for name in LIFELONG_SCORE_FIELDS if response.given(name)}


def _description(evaluator) -> str:
    return f"{evaluator.editor.name} edits" + (f" ({evaluator.label})" if evaluator.label else "")


# -- the journal (resume) ------------------------------------------------------------------------
def case_key(probes: list[ProbeRequest]) -> str:
    """Everything about a case that its answers depend on: documents, prompts, settings, image bytes."""
    doc = probes[0].doc
    images = {path for path in (doc["edit_image"], doc["rephrase_image"], *(doc.get("edit_extra_images") or "").split("\n")) if path}
    images |= {p.doc["image"] for p in probes if p.doc["image"]}
    return journal_digest({
        "probes": [[without_padding_field(p.doc), p.query.prompt, p.query.prefix, p.query.target, p.gen_kwargs] for p in probes],
        "images": {path: file_digest(path) for path in sorted(images)},
    })


def whole_keys(cases: Cases, seed: dict) -> list[str]:
    """One key per case, each covering ``seed`` and every case of ``cases`` (reused only all together)."""
    chained = journal_digest(seed)
    for probes in cases:
        chained = journal_digest([chained, case_key(probes)])
    return [f"{chained}/{i}" for i in range(len(cases))]


def answer_from_journal(evaluator, keys: list[str], cases: Cases, results: list, stats: list) -> bool:
    """Answer ``cases`` from the journal if it holds every one of them under ``keys``; else nothing."""
    if evaluator.journal is None:
        return False
    entries = [evaluator.journal.get(key) for key in keys]
    if any(entry is None or any(p.doc["probe_id"] not in entry for p in probes) for entry, probes in zip(entries, cases)):
        return False
    for entry, probes in zip(entries, cases):
        for probe in probes:
            results[probe.index] = entry[probe.doc["probe_id"]]
        stats.append(json.loads(entry[probes[0].doc["probe_id"]]).get("edit") or {})
    return True


def write_journal(evaluator, key: str, probes, results: list) -> None:
    if evaluator.journal is not None:
        evaluator.journal.add(key, {p.doc["probe_id"]: results[p.index] for p in probes})
