"""How the edits of a task's cases are ordered, and which finished cases the journal can answer.

* ``Independent``: one case at a time (edit, score, restore); with ``user_number=N`` in groups of N
  cases whose edits are all live while each of them is scored (MMKE-Bench's user number).
* ``Sequential``: edits pile up across the task; every pre-edit output comes from the unedited
  model; case i is scored ``sequential_gap`` edits after its own (VLKEB), and all edits are undone
  at the end.

A schedule drives a ``CaseEvaluator`` (engine/evaluator.py) and writes every finished case to the
journal under keys that cover everything its result depends on (mmke_eval/journal.py).
"""

from __future__ import annotations

import json
import logging
from collections import deque

from tqdm import tqdm

from mmke_eval.engine.cases import EDIT_ONLY_REASON, ProbeRequest, is_edit_only, without_padding_field
from mmke_eval.journal import digest as journal_digest
from mmke_eval.journal import file_digest
from mmke_eval.protocol import Protocol

logger = logging.getLogger("mmke_eval")

Cases = list[list[ProbeRequest]]


def for_protocol(protocol: Protocol) -> "Independent | Sequential":
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
