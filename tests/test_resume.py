"""Finished cases are written as they finish; a rerun resumes and gives the uninterrupted results."""

from __future__ import annotations

import dataclasses
import json

import pytest
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mmke_eval import registry
from mmke_eval.adapters.llava_hf import LlavaHFAdapter
from mmke_tasks.mmke.loader import load_cases
from mmke_eval.direct import score_cases
from mmke_eval.journal import CaseJournal
from mmke_eval.protocol import Protocol

FAST_FT = {"lr": 5e-2, "steps": 3}


@pytest.fixture(scope="module")
def adapter(tiny_llava_dir):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    return LlavaHFAdapter(model, AutoProcessor.from_pretrained(tiny_llava_dir))


@pytest.fixture(scope="module")
def cases(mmke_fixture_root):
    return [c for kt in ("entity_level", "user_specific") for c in load_cases(mmke_fixture_root, kt, "eval")[0]]


def counting_editor(interrupt_after: int | None = None):
    """FT-LLM that counts its edits, and raises KeyboardInterrupt (Ctrl-C) at edit ``interrupt_after + 1``."""
    editor = registry.build_editor("ft_llm", overrides=FAST_FT)
    editor.applied = []
    real_apply = editor.apply

    def apply(adapter, request):
        if interrupt_after is not None and len(editor.applied) == interrupt_after:
            raise KeyboardInterrupt
        editor.applied.append(request.case_id)
        return real_apply(adapter, request)

    editor.apply = apply
    return editor


def test_interrupted_run_resumes_after_the_finished_cases_with_identical_results(adapter, cases, tmp_path):
    k = 2
    uninterrupted = score_cases(adapter, counting_editor(), cases)
    path = tmp_path / "cases.jsonl"
    with pytest.raises(KeyboardInterrupt):
        score_cases(adapter, counting_editor(interrupt_after=k), cases, journal=CaseJournal(path, "run-1"))
    assert len(path.read_text().splitlines()) == k  # each finished case was on disk before the next began

    editor = counting_editor()
    journal = CaseJournal(path, "run-1")
    assert journal.resumed == k
    resumed = score_cases(adapter, editor, cases, journal=journal)
    assert editor.applied == [c.case_id for c in cases[k:]]  # only the unfinished cases were edited
    assert resumed == uninterrupted
    assert len(path.read_text().splitlines()) == len(cases)


def test_journal_never_serves_a_case_whose_content_or_run_changed(adapter, cases, tmp_path):
    path = tmp_path / "cases.jsonl"
    score_cases(adapter, counting_editor(), cases[:2], journal=CaseJournal(path, "run-1"))
    # another run key (another model, editor config or protocol): nothing is reused
    editor = counting_editor()
    score_cases(adapter, editor, cases[:2], journal=CaseJournal(path, "run-2"))
    assert len(editor.applied) == 2
    # one answer changed in the data: that case alone is recomputed, and scores the new answer
    probes = list(cases[1].probes)
    probes[0] = dataclasses.replace(probes[0], answer=probes[0].answer + " changed")
    changed = [cases[0], dataclasses.replace(cases[1], probes=tuple(probes))]
    editor = counting_editor()
    scores = score_cases(adapter, editor, changed, journal=CaseJournal(path, "run-1"))
    assert editor.applied == [cases[1].case_id]
    assert scores == score_cases(adapter, counting_editor(), changed)


def test_a_line_cut_short_by_a_crash_is_recomputed(adapter, cases, tmp_path):
    path = tmp_path / "cases.jsonl"
    score_cases(adapter, counting_editor(), cases[:2], journal=CaseJournal(path, "run-1"))
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # the second write was cut off
    editor = counting_editor()
    score_cases(adapter, editor, cases[:2], journal=CaseJournal(path, "run-1"))
    assert editor.applied == [cases[1].case_id]


def test_sequential_runs_resume_whole_tasks_only(adapter, cases, tmp_path):
    path = tmp_path / "cases.jsonl"
    protocol = Protocol(sequential=True)
    with pytest.raises(KeyboardInterrupt):
        score_cases(adapter, counting_editor(interrupt_after=2), cases, protocol, journal=CaseJournal(path, "seq"))
    assert not path.exists() or path.read_text() == ""  # a part of a sequential task cannot be resumed
    first = counting_editor()
    full = score_cases(adapter, first, cases, protocol, journal=CaseJournal(path, "seq"))
    assert len(first.applied) == len(cases)
    again = counting_editor()
    assert score_cases(adapter, again, cases, protocol, journal=CaseJournal(path, "seq")) == full
    assert again.applied == []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(cases) and all(line["run"] == "seq" for line in lines)


def test_user_number_groups_resume_whole_groups(adapter, cases, tmp_path):
    path = tmp_path / "cases.jsonl"
    protocol = Protocol(user_number=2)
    with pytest.raises(KeyboardInterrupt):
        score_cases(adapter, counting_editor(interrupt_after=3), cases, protocol, journal=CaseJournal(path, "grp"))
    assert len(path.read_text().splitlines()) == 2  # the first group finished, the second did not
    editor = counting_editor()
    resumed = score_cases(adapter, editor, cases, protocol, journal=CaseJournal(path, "grp"))
    assert editor.applied == [c.case_id for c in cases[2:]]
    assert resumed == score_cases(adapter, counting_editor(), cases, protocol)


def test_a_torn_last_line_is_cut_off_on_open_and_the_finished_cases_are_not_recomputed(adapter, cases, tmp_path):
    """A crash in the middle of a write leaves a line without its newline; the next record used to
    be appended onto it, making one unreadable line, so that case was computed again on every rerun."""
    path = tmp_path / "cases.jsonl"
    score_cases(adapter, counting_editor(), cases[:3], journal=CaseJournal(path, "run-1"))
    lines = path.read_text().splitlines()
    torn = lines[0] + "\n" + lines[1] + "\n" + lines[2][: len(lines[2]) // 2]
    path.write_text(torn)

    journal = CaseJournal(path, "run-1")
    assert (journal.resumed, journal.repaired) == (2, 1)
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"  # the torn tail is gone
    assert "2 finished case(s)" in journal.resume_message() and "torn last line" in journal.resume_message()
    editor = counting_editor()
    score_cases(adapter, editor, cases[:3], journal=journal)
    assert editor.applied == [cases[2].case_id]  # only the torn case

    again = CaseJournal(path, "run-1")
    assert (again.resumed, again.repaired, again.unreadable) == (3, 0, 0)  # the record written after the repair reads
    editor = counting_editor()
    score_cases(adapter, editor, cases[:3], journal=again)
    assert editor.applied == []


def test_journal_records_joined_onto_a_torn_line_by_older_versions_are_read(tmp_path):
    path = tmp_path / "cases.jsonl"
    journal = CaseJournal(path, "run-1")
    journal.add("case-a", {"p1": "{}"})
    journal.add("case-b", {"p2": "{}"})
    first, second = path.read_text().splitlines()
    path.write_text(first + "\n" + second[:20] + second + "\n" + '{"case": "c", "respo' + "\n")
    reopened = CaseJournal(path, "run-1")
    assert set(reopened.entries) == {"case-a", "case-b"} and reopened.unreadable == 1 and reopened.repaired == 0


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "cases.jsonl"
    CaseJournal(path, "run-1").add("case-a", {"p1": "{}"})
    path.write_text(path.read_text().rstrip("\n"))  # cut just before the newline
    journal = CaseJournal(path, "run-1")
    assert (journal.resumed, journal.repaired) == (1, 0) and path.read_text().endswith("}\n")
    journal.add("case-b", {"p2": "{}"})
    assert set(CaseJournal(path, "run-1").entries) == {"case-a", "case-b"}
