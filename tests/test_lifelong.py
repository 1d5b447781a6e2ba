"""Lifelong editing (``lifelong=T``): a stream of T edits, immediate and retention scores at each
checkpoint, on the wrapper's fake adapter (tests/test_wrapper.py), whose "knowledge" is the list of
live edits: a relation probe is right iff its case's edit is live."""

import json

import pytest

from mmke_eval import families, metrics, parallel
from mmke_eval.engine import schedules
from mmke_eval.journal import CaseJournal
from mmke_eval.options import OptionError
from mmke_eval.protocol import Protocol
from mmke_eval.report.rows import format_table, table_rows
from test_wrapper import FakeEditor, make_lmm, make_requests, probe_docs


class ForgettingEditor(FakeEditor):
    """Each edit pushes the oldest live edit out once ``keep`` are live (as fine-tuning forgets);
    restore puts it back, so undoing the stream in reverse order ends on the unedited model."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep

    def apply(self, adapter, request):
        handle = super().apply(adapter, request)
        handle.stats["forgot"] = adapter.edits.pop(0) if len(adapter.edits) > self.keep else None
        return handle

    def restore(self, adapter, handle):
        super().restore(adapter, handle)
        if handle.stats["forgot"] is not None:
            adapter.edits.insert(0, handle.stats["forgot"])


def stream_docs(n: int) -> list[dict]:
    return [doc for i in range(1, n + 1) for doc in probe_docs(f"c{i}", f"T{i}")]


def run(editor, protocol, docs, task="t"):
    lm = make_lmm(editor, protocol)
    lm.task_dict[task] = {"eval": docs}
    return lm, lm.generate_until(make_requests({task: docs}))


def test_every_score_says_which_edits_were_live():
    """Pre-edit outputs on the unedited model; each case right after its own edit (n live); at the
    checkpoints 1 and 10 and at T=12 every case edited so far, on the model with n edits live."""
    editor = FakeEditor()
    docs = stream_docs(12)
    lm, _ = run(editor, Protocol(lifelong=12), docs)
    assert editor.log == [f"apply c{i}" for i in range(1, 13)] + ["restore"] * 12
    assert lm.adapter.edits == []
    calls = [(live, sorted({q.prompt.split(" of ")[1] for q in queries}))
             for (what, live, _), (_, queries) in zip(lm.adapter.calls, lm.adapter.queries) if what == "tf"]
    pre, post = calls[:12], calls[12:]
    assert pre == [(0, [f"c{i}"]) for i in range(1, 13)]  # locality baselines, unedited
    expected = []
    for n in range(1, 13):
        expected += [(n, [f"c{n}"])] * 2  # immediate: the locality batch, then the others
        if n in (10, 12):  # retention: every earlier edit on this model (case n's own scores are the immediate ones)
            for i in range(1, n):
                expected += [(n, [f"c{i}"])] * 2
    assert post == expected


def test_immediate_and_retention_scores_at_each_checkpoint_by_hand():
    """An editor that keeps only the last 2 edits: right after its edit every case is right; after
    N edits only cases N-1 and N are. T-Rel at 1, 10, 12 edits: 100, 2/10, 2/12; immediate 100.
    The fake model's outputs agree with the unedited ones at 1 of 3 positions once any edit is live."""
    docs = stream_docs(12)
    lm, outputs = run(ForgettingEditor(keep=2), Protocol(lifelong=12), docs)
    stream = lm.describe()["lifelong"]["t"]
    assert stream["edits"] == 12 and stream["checkpoints"] == [1, 10, 12]
    rows = {(row["score"], row["edits"]): row for row in stream["rows"]}
    assert list(rows) == [("retention", 1), ("retention", 10), ("retention", 12), ("immediate", 12)]
    assert rows[("retention", 1)]["t_rel"] == 100.0
    assert rows[("retention", 10)]["t_rel"] == pytest.approx(100 * 2 / 10)
    assert rows[("retention", 12)]["t_rel"] == pytest.approx(100 * 2 / 12)
    assert rows[("immediate", 12)]["t_rel"] == 100.0
    assert all(row["t_loc"] == pytest.approx(100 / 3) for row in rows.values())
    assert rows[("retention", 1)]["port"] is None  # no probe of that kind: no number, never a zero

    responses = [json.loads(o) for o in outputs]
    first, last = responses[0], responses[-1]  # case c1's first probe, case c12's last
    assert first["live_edits"] == 12 and first["lifelong"]["position"] == 1
    assert sorted(first["lifelong"]["retention"], key=int) == ["1", "10", "12"]
    assert last["lifelong"]["position"] == 12 and list(last["lifelong"]["retention"]) == ["12"]
    t_rel_c1 = responses[0]  # t_rel, t_loc, i_loc per case
    assert t_rel_c1["probe"] == "t_rel"
    assert t_rel_c1["lifelong"]["immediate"]["score"] == 1.0 and t_rel_c1["lifelong"]["immediate"]["live_edits"] == 1
    assert [t_rel_c1["lifelong"]["retention"][c]["score"] for c in ("1", "10", "12")] == [1.0, 0.0, 0.0]
    # the task's lmms-eval numbers are the final state's: equal to the retention row at T
    items = {}
    for doc, out in zip(docs, outputs):
        for name, item in metrics.probe_items(families.kind_of(doc), doc["answer"], out, "", doc["case_id"]).items():
            items.setdefault(name, []).append(item)
    assert metrics.case_mean(items["t_rel"]) == pytest.approx(rows[("retention", 12)]["t_rel"])
    assert metrics.case_mean(items["t_loc"]) == pytest.approx(rows[("retention", 12)]["t_loc"])


def test_checkpoints_are_those_up_to_t_and_t():
    assert schedules.Lifelong(1).checkpoints() == [1]
    assert schedules.Lifelong(40).checkpoints() == [1, 10, 40]
    assert schedules.Lifelong(1000).checkpoints() == [1, 10, 100, 1000]
    assert schedules.Lifelong(1500).checkpoints() == [1, 10, 100, 1000, 1500]


def test_cases_after_the_stream_are_not_edited_and_left_unscored():
    editor = FakeEditor()
    lm, outputs = run(editor, Protocol(lifelong=2), stream_docs(3))
    assert editor.log == ["apply c1", "apply c2", "restore", "restore"]
    tail = [json.loads(o) for o in outputs[6:]]
    assert all(r["score"] is None and r["unscored"] == schedules.BEYOND_STREAM_REASON for r in tail)
    assert lm.describe()["protocol"]["unscored_cases"] == {"t": 1}


def test_a_stream_longer_than_the_task_is_refused():
    with pytest.raises(ValueError, match=r"lifelong=5: t has 3 edit cases; a stream of 5 edits needs as many \(pass lifelong=3 or less"):
        run(FakeEditor(), Protocol(lifelong=5), stream_docs(3))


def test_lifelong_is_its_own_schedule_and_refused_in_several_processes():
    with pytest.raises(OptionError, match="lifelong=T is its own schedule .*drop sequential=true"):
        Protocol(lifelong=3, sequential=True)
    with pytest.raises(OptionError, match="drop user_number"):
        Protocol(lifelong=3, user_number=2)
    assert parallel.refusal(Protocol(lifelong=3), 1) is None
    assert "lifelong=3 cannot run in several processes (2 here): a lifelong stream is sequential" in parallel.refusal(Protocol(lifelong=3), 2)


def test_a_finished_stream_is_resumed_and_an_interrupted_one_restarts(tmp_path, capsys):
    docs = stream_docs(3)
    path = tmp_path / "cases.jsonl"

    class Failing(FakeEditor):
        def apply(self, adapter, request):
            if request.case_id == "c3":
                raise RuntimeError("interrupted")
            return super().apply(adapter, request)

    lm = make_lmm(Failing(), Protocol(lifelong=3))
    lm.evaluator.journal = CaseJournal(path, "key")
    lm.task_dict["t"] = {"eval": docs}
    with pytest.raises(RuntimeError, match="interrupted"):
        lm.generate_until(make_requests({"t": docs}))
    assert lm.adapter.edits == []  # undone on the way out
    editor = FakeEditor()
    lm = make_lmm(editor, Protocol(lifelong=3))
    lm.evaluator.journal = CaseJournal(path, "key")
    lm.task_dict["t"] = {"eval": docs}
    capsys.readouterr()
    first = lm.generate_until(make_requests({"t": docs}))
    assert editor.log[:3] == ["apply c1", "apply c2", "apply c3"]  # from the first edit again
    assert "lifelong stream of 3 edits starts at its first edit" in capsys.readouterr().err
    editor = FakeEditor()
    lm = make_lmm(editor, Protocol(lifelong=3))
    lm.evaluator.journal = CaseJournal(path, "key")
    lm.task_dict["t"] = {"eval": docs}
    again = lm.generate_until(make_requests({"t": docs}))
    assert editor.log == [] and again == first  # the finished stream, whole
    assert lm.describe()["lifelong"]["t"]["rows"] == make_rows(first, docs)


def make_rows(outputs, docs):
    lm = make_lmm(FakeEditor(), Protocol(lifelong=3))
    from mmke_eval.engine.cases import ProbeRequest

    cases = {}
    for index, doc in enumerate(docs):
        cases.setdefault(doc["case_id"], []).append(ProbeRequest(index, doc, None, {}))
    return schedules.Lifelong(3).rows(list(cases.values()), outputs)


def test_table_rows_of_a_stream_carry_edits_and_score():
    docs = stream_docs(10)
    lm, _ = run(ForgettingEditor(keep=2), Protocol(lifelong=10), docs, task="mmke_mini_entity")
    results = {"results": {"mmke_mini_entity": {"t_rel,none": 20.0}},
               "configs": {"mmke_mini_entity": {"dataset_kwargs": {"data_files": {"eval": "x.json"}}}},
               "mmke": {"lifelong": lm.describe()["lifelong"], "cards": {"mmke_mini_entity": {"benchmark": "mmke", "family": "mmke"}}}}
    rows = table_rows(results, "fake")
    assert [(r["edits"], r["score"], r["t_rel"]) for r in rows] == [(1, "retention", 100.0), (10, "retention", 20.0), (10, "immediate", 100.0)]
    table = format_table(rows)
    assert "| Task | Editor | Edits | Score | T-Rel |" in table
    assert "| mmke_mini_entity | fake | 10 | retention | 20.0 |" in table


def test_a_stream_on_the_world_model_from_the_api_and_in_the_report(tmp_path):
    """End to end on the built-in world model: mmke_table.json has a row per checkpoint, every
    sample says its model state, and `mmke-eval report` shows the task's final state."""
    import mmke_eval
    from mmke_eval.report.runs import load_runs

    out = tmp_path / "out"
    results = mmke_eval.evaluate(tasks=["mmke_mini_entity"], editors=["ft_llm"], model_args="lifelong=2", cases=3,
                                 output_path=out, log_samples=True)["ft_llm"]
    table = json.loads((out / "mmke_table.json").read_text())
    assert [(row["edits"], row["score"]) for row in table] == [(1, "retention"), (2, "retention"), (2, "immediate")]
    final = results["results"]["mmke_mini_entity"]
    assert table[1]["t_rel"] == pytest.approx(final["t_rel,none"]) and table[1]["i_loc"] == pytest.approx(final["i_loc,none"])
    samples = [json.loads(line) for path in (out / "ft_llm").rglob("*_samples_mmke_mini_entity.jsonl") for line in path.open()]
    answers = [sample["filtered_resps"] for sample in samples]  # lmms-eval writes a one-answer list as its answer
    responses = [json.loads(answer if isinstance(answer, str) else answer[0]) for answer in answers]
    scored = [r for r in responses if r.get("score") is not None]
    assert scored and all(r["live_edits"] == 2 for r in scored)
    assert sum(r.get("unscored") == schedules.BEYOND_STREAM_REASON for r in responses) == len(responses) - len(scored)
    (run,), _ = load_runs([out])
    (entry,) = run.entries
    assert entry.values["t_rel"] == pytest.approx(final["t_rel,none"])
