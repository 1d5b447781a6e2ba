"""The editing wrapper's case logic, on a fake adapter whose "knowledge" is a list of applied edits."""

import json
from contextlib import contextmanager

import pytest
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from editors.base import EditHandle, Editor
from mmke_eval import families
from mmke_eval.adapters.base import ForwardResult
from mmke_eval.data.schema import ProbeDoc
from mmke_eval.engine.evaluator import CaseEvaluator
from mmke_eval.lmms.model import EditedLMM
from mmke_eval.config import EditedConfig
from mmke_eval.protocol import Protocol


class FakeAdapter:
    """Answers a query right iff its target was edited in; top-k ids encode how many edits are live."""

    family = "fake"

    def describe(self):
        return {"adapter": "fake"}

    def __init__(self):
        self.edits: list[str] = []
        self.calls: list[tuple[str, int, tuple[str, ...]]] = []  # (what, live edits, prefixes)
        self.queries: list[tuple[str, list]] = []  # (what, the queries of the call)
        self.reusing = False  # inside reusing_prefixes()
        self.in_reuse_block: list[bool] = []  # per teacher_forced call

    @contextmanager
    def reusing_prefixes(self):
        self.reusing = True
        try:
            yield
        finally:
            self.reusing = False

    def teacher_forced(self, queries, k=10):
        self.calls.append(("tf", len(self.edits), tuple(q.prefix for q in queries)))
        self.in_reuse_block.append(self.reusing)
        self.queries.append(("tf", list(queries)))
        results = []
        for q in queries:
            acc = 1.0 if q.target in self.edits else 0.0
            topk = torch.full((3, k), len(self.edits), dtype=torch.long)
            topk[0] = torch.arange(k)  # first position never changes: whole-sequence agreement 1/3
            results.append(ForwardResult(acc, [1], [1 if acc else 0], topk, slice(1, 3)))
        return results

    def generate(self, queries, max_new_tokens=32, until=None):
        self.calls.append(("gen", len(self.edits), tuple(q.prefix for q in queries)))
        self.queries.append(("gen", list(queries)))
        return [q.prompt.upper() if not self.edits else "EDITED" for q in queries]


class FakeEditor(Editor):
    name = "fake"
    multi_image = "the fake editor records the K images"

    def __init__(self, prefix=""):
        super().__init__()
        self.log: list[str] = []
        self.prefix = prefix

    def apply(self, adapter, request):
        adapter.edits.append(request.target)
        self.log.append(f"apply {request.case_id}")
        return EditHandle(editor=self.name, prefix=self.prefix,
                          stats={"target": request.target, "edit_images": 1 + len(request.extra_images)})

    def restore(self, adapter, handle):
        adapter.edits.remove(handle.stats["target"])
        self.log.append("restore")


def probe_docs(case: str, target: str, kinds=("t_rel", "t_loc", "i_loc"), edit_only=False, **fields) -> list[dict]:
    base = dict(
        case_id=case, family="mmke", knowledge_type="entity_level", question="", answer=target, image="",
        edit_prompt="Who is this?", edit_target=target, edit_original="orig", edit_image="",
        rephrase_prompt="", rephrase_image="", train_file="", edit_extra_images="", edit_only=edit_only, entity="",
        followup_edits="", padding=False,
    )
    base.update(fields)
    docs = []
    for kind in kinds:
        answer = target if kind == "t_rel" else "unrelated"
        docs.append({**base, "probe": kind, "probe_id": f"{kind}_1", "question": f"{kind} q of {case}", "answer": answer})
    assert set(docs[0]) == set(ProbeDoc.__dataclass_fields__)
    return docs


def make_requests(docs_by_task, extra_plain=(), visual=lambda d: []):
    requests = []
    for task, docs in docs_by_task.items():
        for doc_id, doc in enumerate(docs):
            args = (doc["question"], {"max_new_tokens": 8, "until": ["\n"]}, visual, doc_id, task, "eval")
            requests.append(Instance("generate_until", args, idx=0, metadata={"task": task, "doc_id": doc_id, "repeats": 1}))
    return requests


def make_lmm(editor, protocol=Protocol()):
    lm = EditedLMM.__new__(EditedLMM)  # skip loading a real backend
    lmms.__init__(lm)
    lm.adapter = FakeAdapter()
    lm.editor = editor
    lm.base_name = "fake"
    lm.protocol = protocol
    lm.journal_path, lm.run_key = None, "test"
    lm.evaluator = CaseEvaluator(lm.adapter, editor, protocol)
    lm.padding_docs = {}
    lm.config = EditedConfig(base="fake", protocol=protocol)

    class Base:
        def generate_until(self, requests):
            return [f"base:{r.args[0]}" for r in requests]

    lm.base = Base()
    return lm


def test_each_case_is_edited_once_scored_and_restored():
    editor = FakeEditor()
    lm = make_lmm(editor)
    docs = probe_docs("c1", "Rome") + probe_docs("c2", "Oslo")
    lm.task_dict["mmke_x"] = {"eval": docs}
    outputs = [json.loads(o) for o in lm.generate_until(make_requests({"mmke_x": docs}))]

    assert editor.log == ["apply c1", "restore", "apply c2", "restore"]
    assert lm.adapter.edits == []  # restored
    by_kind = {(docs[i]["case_id"], o["probe"]): o for i, o in enumerate(outputs)}
    assert by_kind[("c1", "t_rel")]["score"] == 1.0  # the edit took
    # pre-edit locality ran on the unedited model for both cases (restore came before case 2)
    pre_calls = [c for c in lm.adapter.calls if c[0] == "tf" and c[1] == 0]
    assert [c[1] for c in pre_calls] == [0, 0]
    # whole sequence (weight editor default): only the first of 3 positions agrees
    assert by_kind[("c1", "t_loc")]["score"] == pytest.approx(1 / 3)
    assert by_kind[("c1", "i_loc")]["pre_generated"] == "I_LOC Q OF C1"
    assert by_kind[("c1", "t_loc")]["generated"] == "EDITED"


def test_answer_span_and_prefix_for_in_context_editors():
    editor = FakeEditor(prefix="New Fact: ...\nPrompt: ")
    editor.reference_locality_span = "answer"
    lm = make_lmm(editor)
    docs = probe_docs("c1", "Rome")
    lm.task_dict["t"] = {"eval": docs}
    outputs = [json.loads(o) for o in lm.generate_until(make_requests({"t": docs}))]
    # answer positions (rows 1-2) all changed -> 0 agreement
    assert outputs[1]["score"] == 0.0
    post_calls = [c for c in lm.adapter.calls if c[1] == 1]
    assert post_calls and all(p == "New Fact: ...\nPrompt: " for c in post_calls for p in c[2])
    # The prefixed post-edit calls run inside reusing_prefixes(), the pre-edit ones outside.
    tf_live = [c[1] for c in lm.adapter.calls if c[0] == "tf"]
    assert lm.adapter.in_reuse_block == [live == 1 for live in tf_live] and any(lm.adapter.in_reuse_block)


def test_other_tasks_and_padding_pass_through_untouched():
    editor = FakeEditor()
    lm = make_lmm(editor)
    docs = probe_docs("c1", "Rome")
    lm.task_dict["mmke"] = {"eval": docs}
    lm.task_dict["mme"] = {"eval": [{"question": "Is it red?"}]}
    requests = make_requests({"mmke": docs, "mme": [{"question": "Is it red?"}]})
    # lmms-eval's filler request in several processes: a copy of the rank's last request
    from lmms_eval.evaluator import _clone_padding_request

    requests.append(_clone_padding_request(requests[1]))
    outputs = lm.generate_until(requests)
    assert outputs[-2] == "base:Is it red?"
    assert outputs[-1] == ""  # padding: not answered, no edit for it
    assert json.loads(outputs[1])["probe"] == "t_loc"  # the request it copies was answered
    assert editor.log == ["apply c1", "restore"]


def test_sequential_edits_pile_up_and_are_all_undone():
    editor = FakeEditor()
    lm = make_lmm(editor, Protocol(sequential=True))
    docs = probe_docs("c1", "Rome") + probe_docs("c2", "Oslo")
    lm.task_dict["t"] = {"eval": docs}
    outputs = [json.loads(o) for o in lm.generate_until(make_requests({"t": docs}))]
    assert editor.log == ["apply c1", "apply c2", "restore", "restore"]
    assert lm.adapter.edits == []
    # case 2 was scored with both edits live against a pre-edit baseline of the unedited model
    live = [c[1] for c in lm.adapter.calls if c[0] == "tf"]
    assert live == [0, 0, 1, 1, 2, 2]  # post-edit: the locality batch, then the others
    assert outputs[3]["probe"] == "t_rel" and outputs[3]["score"] == 1.0


def test_sequential_gap_scores_each_case_after_gap_more_edits_and_leaves_the_tail_unscored():
    from mmke_eval import metrics

    editor = FakeEditor()
    lm = make_lmm(editor, Protocol(sequential=True, sequential_gap=1))
    docs = probe_docs("c1", "Rome") + probe_docs("c2", "Oslo") + probe_docs("c3", "Lima")
    lm.task_dict["t"] = {"eval": docs}
    outputs = lm.generate_until(make_requests({"t": docs}))
    assert editor.log == ["apply c1", "apply c2", "apply c3", "restore", "restore", "restore"]
    # three unedited pre-edit passes, then c1 scored with 2 edits live, c2 with 3; c3 never
    live = [c[1] for c in lm.adapter.calls if c[0] == "tf"]
    assert live == [0, 0, 0, 2, 2, 3, 3]
    scores = [metrics.probe_scores(families.kind_of(doc), doc["answer"], out) for doc, out in zip(docs, outputs)]
    assert scores[0]["t_rel"] == 1.0 and all(v != v for v in scores[6].values())  # c3: NaN everywhere
    t_rel = [{"case": d["case_id"], "score": sc["t_rel"]} for d, sc in zip(docs, scores) if d["probe"] == "t_rel"]
    assert metrics.case_mean(t_rel) == 100.0  # the mean is over the two scored cases
    assert lm.describe()["protocol"]["unscored_cases"] == {"t": 1}


def test_sequential_gap_needs_sequential():
    with pytest.raises(ValueError, match="sequential=true"):
        Protocol(sequential_gap=10)


def test_sequential_edits_restart_with_each_task_of_a_group():
    editor = FakeEditor()
    lm = make_lmm(editor, Protocol(sequential=True))
    entity, user = probe_docs("e1", "Rome") + probe_docs("e2", "Oslo"), probe_docs("u1", "Bob")
    lm.task_dict["entity"], lm.task_dict["user"] = {"eval": entity}, {"eval": user}
    lm.generate_until(make_requests({"entity": entity, "user": user}))
    assert editor.log == ["apply e1", "apply e2", "restore", "restore", "apply u1", "restore"]


def test_restore_happens_when_probing_fails():
    editor = FakeEditor()
    lm = make_lmm(editor)
    docs = probe_docs("c1", "Rome")
    lm.task_dict["t"] = {"eval": docs}

    def broken(queries, **kwargs):
        raise RuntimeError("out of memory")

    lm.adapter.generate = broken
    with pytest.raises(RuntimeError):
        lm.generate_until(make_requests({"t": docs}))
    # generation of the pre-edit locality probes failed before any edit; now fail after the edit
    lm.adapter.generate = FakeAdapter.generate.__get__(lm.adapter)
    real_tf = lm.adapter.teacher_forced

    def fail_after_edit(queries, k=10):
        if lm.adapter.edits:
            raise RuntimeError("boom")
        return real_tf(queries, k)

    lm.adapter.teacher_forced = fail_after_edit
    with pytest.raises(RuntimeError, match="boom"):
        lm.generate_until(make_requests({"t": docs}))
    assert lm.adapter.edits == []
    assert editor.log[-2:] == ["apply c1", "restore"]


def test_protocol_rejects_bad_values():
    with pytest.raises(ValueError, match="loc_span"):
        Protocol(loc_span="prompt")
    with pytest.raises(ValueError):
        Protocol(t_loc_k=0)


def test_post_edit_locality_inputs_go_through_the_pre_edit_batches():
    """Same queries, same order, same batch: an unchanged model gives bit-identical outputs."""
    lm = make_lmm(FakeEditor())
    docs = probe_docs("c1", "Rome", kinds=("t_rel", "t_loc", "i_rel", "i_loc", "port"))
    lm.task_dict["t"] = {"eval": docs}
    lm.generate_until(make_requests({"t": docs}))
    for what in ("tf", "gen"):
        calls = [[q.prompt for q in queries] for kind, queries in lm.adapter.queries if kind == what]
        pre, post_local, post_others = calls
        assert pre == post_local == ["t_loc q of c1", "i_loc q of c1"]
        assert post_others == ["t_rel q of c1", "i_rel q of c1", "port q of c1"]


def test_sequential_cases_n_with_gap_g_scores_n_cases_after_g_more_edits():
    """VLKEB: case i is scored after edits 0..i+G; the G edit-only cases after the N are edited, not scored."""
    n, gap = 3, 2
    editor = FakeEditor()
    lm = make_lmm(editor, Protocol(sequential=True, sequential_gap=gap))
    docs = []
    for i in range(n + gap):
        docs += probe_docs(f"c{i}", f"T{i}", edit_only=i >= n)
    lm.task_dict["t"] = {"eval": docs}
    outputs = [json.loads(o) for o in lm.generate_until(make_requests({"t": docs}))]
    scored = {doc["case_id"] for doc, out in zip(docs, outputs) if out.get("score") is not None}
    assert scored == {"c0", "c1", "c2"}
    # the live edits at each post-edit call (the adapter counts them)
    post = [c for c in lm.adapter.calls if c[0] == "tf" and c[1] > 0]
    assert [c[1] for c in post] == [3, 3, 4, 4, 5, 5]  # c0 after 3 edits, c1 after 4, c2 after all 5
    assert editor.log[: n + gap] == [f"apply c{i}" for i in range(n + gap)] and lm.adapter.edits == []
    unscored = {doc["case_id"] for doc, out in zip(docs, outputs) if out.get("unscored")}
    assert unscored == {"c3", "c4"}
    assert all("edit-only" in out["unscored"] for out in outputs if out.get("unscored"))
    protocol = lm.describe()["protocol"]
    assert protocol["unscored_cases"] == {"t": 0} and protocol["edit_only_cases"] == {"t": 2}
    # no pre-edit pass was spent on the edit-only cases
    assert len([c for c in lm.adapter.calls if c[0] == "tf" and c[1] == 0]) == n


def test_edit_only_cases_need_sequential_editing():
    lm = make_lmm(FakeEditor())
    docs = probe_docs("c0", "T", edit_only=True)
    lm.task_dict["t"] = {"eval": docs}
    with pytest.raises(ValueError, match="edit-only"):
        lm.generate_until(make_requests({"t": docs}))


@pytest.mark.parametrize(
    "editor_images, port_image, expected",
    [({}, "auto", "one_hop"), ({"user_specific": "edit"}, "auto", "edit"), ({"user_specific": "edit"}, "data", "one_hop"),
     ({}, "edit", "edit")],
)
def test_portability_image_follows_the_option_and_the_editors_reference(tmp_path, editor_images, port_image, expected):
    from PIL import Image

    paths = {}
    for name, colour in (("edit", (255, 0, 0)), ("one_hop", (0, 0, 255))):
        paths[name] = str(tmp_path / f"{name}.png")
        Image.new("RGB", (4, 4), colour).save(paths[name])
    editor = FakeEditor()
    editor.reference_port_images = editor_images
    lm = make_lmm(editor, Protocol(port_image=port_image))
    docs = probe_docs("c1", "Rome", kinds=("t_rel", "port"), knowledge_type="user_specific", edit_image=paths["edit"])
    docs[1]["image"] = paths["one_hop"]
    lm.task_dict["t"] = {"eval": docs}
    visual = lambda doc: [Image.open(doc["image"]).convert("RGB")] if doc["image"] else []  # noqa: E731
    outputs = [json.loads(o) for o in lm.generate_until(make_requests({"t": docs}, visual=visual))]
    port_queries = [q for kind, queries in lm.adapter.queries if kind == "tf" for q in queries if q.prompt.startswith("port")]
    colour = {(255, 0, 0): "edit", (0, 0, 255): "one_hop"}[port_queries[0].image.getpixel((0, 0))]
    assert colour == expected
    assert outputs[1]["port_image"] == ("edit" if expected == "edit" else "data")
    resolved = lm.describe()["protocol"]["port_image_resolved"]
    assert resolved.get("user_specific", resolved["default"]) == outputs[1]["port_image"]


def _draw(path, colour):
    from PIL import Image

    image = Image.new("RGB", (8, 6), (250, 250, 250))
    image.putpixel((1, 1), colour)
    image.save(path)
    return str(path)


class RecordingEditor(FakeEditor):
    """Records the edit images each edit request carries."""

    def __init__(self):
        super().__init__()
        self.requests = []

    def apply(self, adapter, request):
        self.requests.append(request)
        return super().apply(adapter, request)


def test_multi_step_editing_gives_the_editor_k_images_of_the_subject(tmp_path):
    edit, second, third = (_draw(tmp_path / f"{n}.png", c) for n, c in (("a", (255, 0, 0)), ("b", (0, 255, 0)), ("c", (0, 0, 255))))
    docs = probe_docs("c1", "Bolo", edit_image=edit, edit_extra_images=f"{second}\n{third}")
    for k, expected in ((1, []), (2, [second]), (3, [second, third])):
        editor = RecordingEditor()
        lm = make_lmm(editor, Protocol(edit_images=k))
        lm.task_dict["t"] = {"eval": docs}
        lm.generate_until(make_requests({"t": docs}))
        (request,) = editor.requests
        assert request.image.getpixel((1, 1)) == (255, 0, 0)
        colours = {(0, 255, 0): second, (0, 0, 255): third}
        assert [colours[image.getpixel((1, 1))] for image in request.extra_images] == expected
        sample = json.loads(lm.generate_until(make_requests({"t": docs}))[0])
        assert sample["edit"]["edit_images"] == k  # every sample's edit report says how many images the edit used
    lm = make_lmm(RecordingEditor(), Protocol(edit_images=4))
    lm.task_dict["t"] = {"eval": docs}
    from mmke_eval.data.schema import DataError

    with pytest.raises(DataError, match="case c1: edit_images=4 needs 4 images of the edit subject; the mmke data gives 3"):
        lm.generate_until(make_requests({"t": docs}))


def test_edit_augmentation_changes_only_the_edit_image_deterministically(tmp_path):
    from PIL import Image, ImageOps

    edit = _draw(tmp_path / "edit.png", (255, 0, 0))
    docs = probe_docs("c1", "Bolo", edit_image=edit)
    seen = {}
    for kind in ("none", "hflip", "noise", "noise"):
        editor = RecordingEditor()
        lm = make_lmm(editor, Protocol(edit_augment=kind, augment_seed=3))
        lm.task_dict["t"] = {"eval": docs}
        lm.generate_until(make_requests({"t": docs}))
        seen.setdefault(kind, []).append(editor.requests[0].image)
    original = Image.open(edit).convert("RGB")
    assert seen["none"][0].tobytes() == original.tobytes()
    assert seen["hflip"][0].tobytes() == ImageOps.mirror(original).tobytes()
    first, again = seen["noise"]
    assert first.tobytes() != original.tobytes() and first.tobytes() == again.tobytes()  # seeded per case
    assert lm.describe()["protocol"]["edit_augment"] == "noise"


def test_follow_up_edits_are_applied_after_the_case_edit_and_all_restored():
    """VLKEB's edit twice: both edits live while the case is probed, restored in reverse after."""
    editor = FakeEditor()
    lm = make_lmm(editor)
    docs = probe_docs("c1", "Rome", followup_edits=json.dumps([["Who founded Rome?", "Romulus"]]))
    lm.task_dict["t"] = {"eval": docs}
    lm.generate_until(make_requests({"t": docs}))
    assert editor.log == ["apply c1", "apply c1#edit2", "restore", "restore"] and lm.adapter.edits == []
    assert {c[1] for c in lm.adapter.calls if c[1] > 0} == {2}  # probed with both edits live
    sequential = FakeEditor()
    lm = make_lmm(sequential, Protocol(sequential=True))
    lm.task_dict["t"] = {"eval": docs}
    lm.generate_until(make_requests({"t": docs}))
    assert sequential.log == ["apply c1", "apply c1#edit2", "restore", "restore"] and lm.adapter.edits == []


def test_follow_up_edits_need_a_weight_editor():
    editor = FakeEditor(prefix="New Fact: ...")
    lm = make_lmm(editor)
    docs = probe_docs("c1", "Rome", followup_edits=json.dumps([["Who founded Rome?", "Romulus"]]))
    lm.task_dict["t"] = {"eval": docs}
    with pytest.raises(ValueError, match="edits in context"):
        lm.generate_until(make_requests({"t": docs}))
    assert lm.adapter.edits == []  # what was applied is restored


def test_user_number_scores_each_group_of_n_cases_with_all_n_edits_live():
    """MMKE-Bench's user number: N users' edits applied, each of them scored, undone before the next N."""
    editor = FakeEditor()
    lm = make_lmm(editor, Protocol(user_number=2))
    docs = probe_docs("c1", "Rome") + probe_docs("c2", "Oslo") + probe_docs("c3", "Lima")
    lm.task_dict["t"] = {"eval": docs}
    outputs = [json.loads(o) for o in lm.generate_until(make_requests({"t": docs}))]
    assert editor.log == ["apply c1", "apply c2", "restore", "restore", "apply c3", "restore"]
    live = [c[1] for c in lm.adapter.calls if c[0] == "tf"]
    assert live == [0, 0, 2, 2, 2, 2, 0, 1, 1]  # pre c1, pre c2, c1 and c2 with both edits, pre c3, c3 alone
    assert all(o["score"] == 1.0 for o in outputs if o["probe"] == "t_rel") and lm.adapter.edits == []
    with pytest.raises(ValueError, match="user_number needs sequential=false"):
        Protocol(user_number=2, sequential=True)


def test_user_number_refuses_in_context_editors():
    lm = make_lmm(FakeEditor(prefix="New Fact: ..."), Protocol(user_number=2))
    docs = probe_docs("c1", "Rome") + probe_docs("c2", "Oslo")
    lm.task_dict["t"] = {"eval": docs}
    with pytest.raises(ValueError, match="cannot hold several cases' edits"):
        lm.generate_until(make_requests({"t": docs}))
    assert lm.adapter.edits == []


class CharAdapter(FakeAdapter):
    """One position per character: two lead positions ("<>", BOS and an image), the prefix, then
    ``prompt + " " + target``; each position's top-k ids are that character's code and the next
    k-1 codes, so two positions agree exactly when they hold the same character. ``topk`` leaves the
    prefix out, as the adapters do."""

    def teacher_forced(self, queries, k=10):
        self.calls.append(("tf", len(self.edits), tuple(q.prefix for q in queries)))
        self.queries.append(("tf", list(queries)))
        results = []
        for q in queries:
            body = f"{q.prompt} {q.target}"
            kept = "<>" + body  # the prefix's positions are not rows of topk
            topk = torch.tensor([[ord(c) + j for j in range(k)] for c in kept], dtype=torch.long)
            n = len(kept)
            results.append(ForwardResult(0.0, [1], [0], topk, slice(n - len(q.target), n)))
        return results


@pytest.mark.parametrize("span, expected", [
    # pre "<>" + body (25 positions) against the post-edit input's last 25: the prefix's last two
    # characters ": " meet "<>", the 23 characters of the body meet themselves
    ("sequence", 23 / 25),
    ("query", 1.0),  # the prefix left out: the same 25 positions
    ("answer", 1.0),
])
def test_in_context_locality_sequence_compares_the_whole_right_aligned_input_prefix_included(span, expected):
    """EasyEdit's IKE locality (loc_span=sequence): post-edit with demonstrations against pre-edit
    without, whole sequences right-aligned, so the pre-edit BOS and image positions meet the end of
    the demonstrations. Body of the t_loc probe: "t_loc q of c1 unrelated" (23 characters)."""
    prefix = "New Fact: ...\nPrompt: "
    editor = FakeEditor(prefix=prefix)
    lm = make_lmm(editor, Protocol(loc_span=span))
    lm.adapter = lm.evaluator.adapter = CharAdapter()
    docs = probe_docs("c1", "Rome")
    lm.task_dict["t"] = {"eval": docs}
    outputs = {o["probe"]: o for o in map(json.loads, lm.generate_until(make_requests({"t": docs})))}
    assert outputs["t_loc"]["score"] == pytest.approx(expected) and outputs["i_loc"]["score"] == pytest.approx(expected)
    post_loc = [q for what, qs in lm.adapter.queries if what == "tf" for q in qs if q.prompt.endswith("t_loc q of c1")][-1]
    if span == "sequence":  # the same text, the prefix inside the compared input
        assert (post_loc.prefix, post_loc.prompt) == ("", prefix + "t_loc q of c1")
    else:
        assert (post_loc.prefix, post_loc.prompt) == (prefix, "t_loc q of c1")


def test_an_editor_that_cannot_use_several_images_refuses_them_and_every_edit_report_says_how_many():
    class SingleImage(FakeEditor):
        multi_image = None  # the class declares it: no multi-step editing
        multi_image_refusal = "it edits from one image"

    from editors.base import ConfigError

    with pytest.raises(ConfigError, match="editor 'fake' cannot use edit_images=2: it edits from one image; run it with edit_images=1"):
        make_lmm(SingleImage(), Protocol(edit_images=2))
    make_lmm(SingleImage(), Protocol(edit_images=1))  # one image: fine

    class Silent(FakeEditor):
        def apply(self, adapter, request):
            handle = super().apply(adapter, request)
            del handle.stats["edit_images"]
            return handle

    lm = make_lmm(Silent())
    docs = probe_docs("c1", "Rome")
    lm.task_dict["t"] = {"eval": docs}
    with pytest.raises(ValueError, match="its edit report .* lacks 'edit_images'"):
        lm.generate_until(make_requests({"t": docs}))
    assert lm.adapter.edits == []  # restored


class LetterAdapter(FakeAdapter):
    """One token per character of the target; the edited model predicts every character right except
    those in ``unknown``. Its ``answer_span`` is the characters' own positions."""

    def __init__(self, unknown=""):
        super().__init__()
        self.unknown = set(unknown)

    def answer_ids(self, query):
        return [ord(c) for c in query.target]

    def answer_span(self, query, start, end):
        return slice(start, end)

    def teacher_forced(self, queries, k=10):
        results = []
        for q in queries:
            answer = self.answer_ids(q)
            predicted = [0 if chr(a) in self.unknown else a for a in answer]
            acc = sum(p == a for p, a in zip(predicted, answer)) / len(answer) if answer else float("nan")
            n = len(answer) + 2
            results.append(ForwardResult(acc, answer, predicted, torch.zeros((n, k), dtype=torch.long), slice(2, n)))
        return results

    def generate(self, queries, max_new_tokens=32, until=None):
        return ["It is a Snowy Owl." for _ in queries]


def mike_docs(answers_entities: dict[str, tuple[str, str]]) -> list[dict]:
    docs = probe_docs("c1", "Snowy Owl", kinds=tuple(answers_entities), family="mike", knowledge_type="elc")
    for doc in docs:
        doc["answer"], doc["entity"] = answers_entities[doc["probe"]]
    return docs


def scores_of(protocol, unknown, answers_entities):
    from mmke_eval import metrics

    lm = make_lmm(FakeEditor(), protocol)
    lm.adapter = lm.evaluator.adapter = LetterAdapter(unknown)
    docs = mike_docs(answers_entities)
    lm.task_dict["t"] = {"eval": docs}
    outputs = lm.generate_until(make_requests({"t": docs}))
    return {doc["probe"]: metrics.probe_scores(families.kind_of(doc), doc["answer"], out, doc["entity"])
            for doc, out in zip(docs, outputs)}


@pytest.mark.parametrize("unknown, expected", [
    # a name of one token, right / wrong: A = (1 + 1) / 2, (0 + 0) / 2
    ("", {"rel": 1.0, "t_gen": 1.0, "i_gen": 1.0}),
    ("X", {"rel": 0.0, "t_gen": 1.0, "i_gen": 1.0}),
    # "w" is in the two-token-or-more name "Snowy Owl" twice and in no other word of the caption:
    # name: token accuracy 7/9, name not all right -> 7/18; caption (23 characters): 21/23 -> 21/46
    ("w", {"rel": 1.0, "t_gen": 7 / 18, "i_gen": 21 / 46}),
    # "b" only in "branch", outside the name: caption 22/23 and the name right -> (22/23 + 1) / 2
    ("b", {"rel": 1.0, "t_gen": 1.0, "i_gen": (22 / 23 + 1) / 2}),
])
def test_mike_entity_accuracy_is_token_accuracy_plus_the_names_tokens_all_right_by_hand(unknown, expected):
    """MIKE eq. 6 as the paper reads it (entity_acc=tokens, default): A = (teacher-forced token
    accuracy over the answer + 1[every token of the entity name right]) / 2, per probe."""
    answers = {"rel": ("X", "X"), "t_gen": ("Snowy Owl", "Snowy Owl"), "i_gen": ("A Snowy Owl on a branch", "Snowy Owl")}
    scores = scores_of(Protocol(), unknown, answers)
    assert {kind: s[f"{kind}_entity"] for kind, s in scores.items()} == pytest.approx(expected)


def test_mike_entity_accuracy_on_generations_is_the_option_and_needs_them():
    """entity_acc=generation: (exact match of the generation + 1[it contains the name]) / 2, whatever the
    teacher-forced tokens: "It is a Snowy Owl." for every probe."""
    answers = {"t_gen": ("Snowy Owl", "Snowy Owl"), "i_gen": ("A Snowy Owl on a branch", "Snowy Owl")}
    scores = scores_of(Protocol(entity_acc="generation"), "w", answers)
    assert scores["t_gen"]["t_gen_entity"] == 0.5 and scores["i_gen"]["i_gen_entity"] == 0.5
    with pytest.raises(ValueError, match="entity_acc=generation .* needs generate=true"):
        Protocol(entity_acc="generation", generate=False)
    with pytest.raises(ValueError, match="option entity_acc=.*expected one of tokens, generation"):
        Protocol(entity_acc="words")


def test_mike_entity_missing_from_its_answer_is_an_error_naming_the_case():
    from mmke_eval.data.schema import DataError

    with pytest.raises(DataError, match="case c1, probe i_gen_1: the entity name 'Snowy Owl' does not occur in the answer"):
        scores_of(Protocol(), "", {"i_gen": ("A bird on a branch", "Snowy Owl")})
