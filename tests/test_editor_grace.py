"""GRACE (editors/grace.py): deferral inside the radius only, GRACE's codebook updates, labels per
edit, lifelong applies restored in reverse, and the model left exactly as it was."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from editors.base import EditRequest
from editors.grace import CODEBOOK_NAME, Codebook, GraceConfig, GraceEditor
from mmke_eval import registry
from mmke_eval.adapters.base import Query


@pytest.fixture(scope="module")
def adapter():
    build = registry.adapter_test_models("llava_hf")["build_tiny_llava15"]
    model, processor = build()
    return registry.adapter_class("llava_hf")(model.eval(), processor)


RED, BLUE = Image.new("RGB", (48, 40), (230, 30, 30)), Image.new("RGB", (48, 40), (30, 30, 230))


def editor(**values) -> GraceEditor:
    # The tiny model's 2 layers: the codebook on the last one; a value learns an answer's first token in a few
    # steps. Its activations there are small (norm ~0.15, other inputs ~0.2 from an edit's key): radius 0.05.
    return GraceEditor(GraceConfig(**{"layer": 1, "reference_layers": 0, "steps": 15, "lr": 0.5, "val_init": "warm", "eps": 0.05, **values}))


def request(case: str, prompt: str, target: str, image=RED) -> EditRequest:
    return EditRequest(case_id=case, prompt=prompt, target=target, image=image)


def predicted(adapter, prompt: str, target: str, image=RED) -> list[int]:
    (result,) = adapter.teacher_forced([Query(prompt, image, target)], k=1)
    return result.predicted_ids


def snapshot(ed: GraceEditor):
    book = ed._live.codebook
    return (book.keys.clone(), book.values.detach().clone(), book.radii.clone(), list(book.labels))


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a[:3], b[:3])) and a[3] == b[3]


def hand_built(keys, values, radii, positions) -> tuple[torch.nn.Linear, Codebook]:
    layer = torch.nn.Linear(4, 3)
    book = Codebook(4, 3, lambda shape: positions)
    book.keys, book.radii = torch.tensor(keys), torch.tensor(radii)
    book.values = torch.nn.Parameter(torch.tensor(values), requires_grad=False)
    book.labels = [f"label{i}" for i in range(len(keys))]
    layer.register_forward_hook(book.hook)
    return layer, book


def test_the_codebook_answers_only_inside_the_radius():
    """Two keys, radius 1: a query 0.5 from key 0 gets value 0; one 1.5 from it (and far from key 1)
    passes through; one 0.9 from key 1 gets value 1; only the query positions are touched."""
    layer, _ = hand_built([[0.0, 0, 0, 0], [10.0, 0, 0, 0]], [[1.0, 2, 3], [4.0, 5, 6]], [1.0, 1.0], [(0, 2), (1, 2), (2, 0)])
    x = torch.randn(3, 3, 4)
    x[0, 2] = torch.tensor([0.0, 0.5, 0, 0])  # 0.5 from key 0
    x[1, 2] = torch.tensor([0.0, 0, 1.5, 0])  # 1.5 from key 0, 10.1 from key 1
    x[2, 0] = torch.tensor([10.0, 0, 0, 0.9])  # 0.9 from key 1
    plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
    with torch.no_grad():
        out = layer(x)
    assert torch.equal(out[0, 2], torch.tensor([1.0, 2, 3]))
    assert torch.equal(out[2, 0], torch.tensor([4.0, 5, 6]))
    untouched = torch.ones(3, 3, dtype=torch.bool)
    untouched[0, 2] = untouched[2, 0] = False
    assert torch.equal(out[untouched], plain[untouched])  # row 1 (outside every radius) and every other position


def test_flattened_positions_as_opt_feeds_its_ffn():
    """OPT's FFN sees [batch * positions, dim]: the query is a flat row."""
    layer, _ = hand_built([[0.0, 0, 0, 0]], [[7.0, 7, 7]], [1.0], [5, 8])
    x = torch.randn(12, 4) + 5  # all far from the key ...
    x[5] = torch.tensor([0.0, 0, 0, 0.99])  # ... but this query, 0.99 from it
    with torch.no_grad():
        out = layer(x)
        plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert torch.equal(out[5], torch.tensor([7.0, 7, 7])) and torch.equal(out[torch.arange(12) != 5], plain[torch.arange(12) != 5])


def test_codebook_updates_new_expand_split_by_hand():
    """GRACE's rules on hand-built keys (eps0 = 1): a key farther than eps0 + radius is new; within
    it with the same label, the radius grows to the distance; with another label, both radii halve it."""
    ed = GraceEditor(GraceConfig(eps=1.0, val_init="cold"))
    book = Codebook(2, 3, lambda shape: None)
    undo = {"added": False, "radii": {}, "value": None}
    update = lambda key, target: ed._update_codebook(book, torch.tensor(key), None, request("c", "q", target), {"added": False, "radii": {}, "value": None})
    assert update([0.0, 0.0], "A") == ("new", None, 0)
    assert update([5.0, 0.0], "B") == ("new", 5.0, 1)  # 5 > 1 + 1
    assert update([0.0, 1.5], "A") == ("expanded", 1.5, 0)  # 1.5 <= 1 + 1, same label
    assert book.radii.tolist() == [1.5, 1.0] and len(book) == 2
    assert update([0.0, 1.0], "A") == ("within", 1.0, 0)  # inside the grown radius: nothing changes
    assert book.radii.tolist() == [1.5, 1.0]
    assert update([6.0, 0.0], "C") == ("split", 1.0, 2)  # 1 <= 1 + 1 from B's key, another label
    assert book.radii.tolist() == pytest.approx([1.5, 0.5 - 1e-5, 0.5])
    assert book.labels == ["A", "B", "C"] and undo["added"] is False


def test_an_edit_changes_its_answer_and_restore_leaves_the_model_bit_identical(adapter):
    model = adapter.model
    before = {name: t.clone() for name, t in model.state_dict().items()}
    prompt, target = "What is shown in the image?", "star"
    old = predicted(adapter, prompt, target)
    hooks = {name: len(m._forward_hooks) for name, m in model.named_modules()}  # after a forward: transformers adds its own
    ed = editor()
    handle = ed.apply(adapter, request("c0", prompt, target))
    new = predicted(adapter, prompt, target)
    # The codebook sits on the last layer: its value decides the token predicted at the key position, the answer's first
    assert new[0] != old[0] and new[0] == adapter.answer_ids(Query(prompt, RED, target))[0]
    assert handle.stats["codebook_size"] == 1 and handle.stats["key_update"] == "new" and handle.stats["edit_images"] == 1
    assert handle.stats["loss"] < handle.stats["initial_loss"]
    assert any(CODEBOOK_NAME in name for name in model.state_dict())
    # an unrelated input (far from the key) passes through: its answer is the unedited one
    other = ("Where does this person live?", "Paris", None)
    assert predicted(adapter, *other) == predicted_unedited(adapter, other, ed, handle)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in before)
    assert not {"_batch", "_padded", "_generate_ids"} & set(vars(adapter))
    assert {name: len(m._forward_hooks) for name, m in model.named_modules()} == hooks


def predicted_unedited(adapter, query, ed, handle):
    """The answer with the codebook taken away (restores ``handle``; the caller checks the model after)."""
    ed.restore(adapter, handle)
    return predicted(adapter, *query)


def test_labels_per_edit_in_a_stream(adapter):
    """Two edits with different targets live together: each input answers with its own value
    (EasyEdit gave the whole batch the first sample's label, issue 697)."""
    ed = editor()
    first = ed.apply(adapter, request("c0", "What is shown in the image?", "star"))
    second = ed.apply(adapter, request("c1", "Which color dominates?", "circle", BLUE))
    try:
        assert ed._live.codebook.labels == ["star", "circle"]
        # (the first answer token: the one the last layer's value decides)
        assert predicted(adapter, "What is shown in the image?", "star")[0] == adapter.answer_ids(Query("What is shown in the image?", RED, "star"))[0]
        assert predicted(adapter, "Which color dominates?", "circle", BLUE)[0] == adapter.answer_ids(Query("Which color dominates?", BLUE, "circle"))[0]
    finally:
        ed.restore(adapter, second)
        ed.restore(adapter, first)


def test_reverse_restores_give_back_each_intermediate_codebook(adapter):
    """Lifelong: three applies without restore (the second on the first's input with the same label
    trains the first entry further), then restores in reverse, each giving back the codebook before
    its edit exactly; restoring out of order is refused; the last restore removes the codebook."""
    before = {name: t.clone() for name, t in adapter.model.state_dict().items()}
    ed = editor(steps=3)
    edits = [request("c0", "What is shown in the image?", "star"), request("c0b", "What is shown in the image?", "star"),
             request("c1", "Which color dominates?", "circle", BLUE)]
    handles, books = [], []
    for edit in edits:
        handles.append(ed.apply(adapter, edit))
        books.append(snapshot(ed))
    assert [h.stats["codebook_size"] for h in handles] == [1, 1, 2]
    assert handles[1].stats["key_update"] == "within" and not torch.equal(books[0][1], books[1][1])  # the value trained further
    with pytest.raises(RuntimeError, match="reverse order"):
        ed.restore(adapter, handles[0])
    for i in (2, 1):
        ed.restore(adapter, handles[i])
        assert same(snapshot(ed), books[i - 1])
    ed.restore(adapter, handles[0])
    after = adapter.model.state_dict()
    assert ed._live is None and after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in before)


def test_a_forward_the_adapter_did_not_encode_is_an_error(adapter):
    ed = editor(steps=1)
    handle = ed.apply(adapter, request("c0", "What is shown in the image?", "star"))
    try:
        ids = torch.tensor([[1, 5, 6, 7]])
        with pytest.raises(RuntimeError, match="did not encode"):
            adapter.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        ed.restore(adapter, handle)


def test_layer_at_the_reference_depth_and_bad_values(adapter):
    assert registry.editor_defaults("grace")["layer"] == 18 and registry.editor_defaults("grace")["reference_layers"] == 28
    # layer 18 of 28 on the tiny 2-layer model: round(18 * 2 / 28) = 1; its FFN's down projection
    layer, module = registry.build_editor("grace", family="llava").codebook_module(adapter)
    assert layer == 1 and module.endswith("layers.1.mlp.down_proj")
    assert GraceEditor(GraceConfig(layer=0, reference_layers=0)).codebook_module(adapter)[0] == 0
    with pytest.raises(Exception, match="is layer 2 of a 2-layer language model"):
        GraceEditor(GraceConfig(layer=2, reference_layers=0)).codebook_module(adapter)
    with pytest.raises(Exception, match="val_init must be one of"):
        registry.build_editor("grace", overrides={"val_init": "hot"})
    with pytest.raises(Exception, match="is not a layer of a 28-layer model"):
        registry.build_editor("grace", overrides={"layer": 28})


def test_a_sequential_run_keeps_every_edit_live_then_leaves_the_model_as_before(adapter, mmke_fixture_root, monkeypatch):
    """Through the case evaluator with sequential=true: the codebook grows by one entry per case
    (each case's edit report says so) and the model is as before at the end."""
    from mmke_eval.direct import score_cases
    from mmke_eval.engine.evaluator import CaseEvaluator
    from mmke_eval.protocol import Protocol
    from mmke_tasks.mmke.loader import load_cases

    cases = load_cases(mmke_fixture_root, "entity_level", "eval")[0][:3]
    before = {name: t.clone() for name, t in adapter.model.state_dict().items()}
    ed = editor(steps=2)
    sizes = []
    original = CaseEvaluator.apply_case

    def recording(self, probes, handles, stats):
        out = original(self, probes, handles, stats)
        sizes.append(len(ed._live.codebook))
        return out

    monkeypatch.setattr(CaseEvaluator, "apply_case", recording)
    score_cases(adapter, ed, cases, Protocol(generate=False, sequential=True))
    assert sizes == [1, 2, 3] and ed._live is None
    after = adapter.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[n], before[n]) for n in before)


def test_each_input_is_queried_at_its_own_last_input_token_in_padded_batches(adapter):
    """A batch of inputs of different lengths: right-padded for teacher forcing, left-padded for
    generation; the edit input is answered from the codebook at its own last input token in both
    (EasyEdit queried every input at the edit's position)."""
    prompt, target = "What is shown in the image?", "star"
    longer = "Which color dominates the whole picture, and what is drawn on the left side of it?"
    ed = editor()
    handle = ed.apply(adapter, request("c0", prompt, target))
    try:
        first = adapter.answer_ids(Query(prompt, RED, target))[0]
        forced = adapter.teacher_forced([Query(longer, BLUE, "circle"), Query(prompt, RED, target)], k=1)
        assert forced[1].predicted_ids[0] == first
        generated = adapter.generate([Query(prompt, RED), Query(longer, BLUE)], max_new_tokens=1)
        assert generated[0] == adapter.tokenizer.decode([first]).strip()
    finally:
        ed.restore(adapter, handle)
