"""The `lora` editor (editors/lora.py): a peft adapter on the language model, one adapter across a stream.

On the tiny random LLaVA-1.5: the edit learns the target; only the adapter's own tensors change
(every original tensor unchanged, by identity); restore is bit-identical; successive applies train
the same adapter and reverse restores give each intermediate adapter back exactly.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from editors.base import ConfigError, EditRequest
from editors.lora import LoRAConfig, LoRAEditor, _orthogonal_penalty
from mmke_eval.adapters.base import Query
from mmke_eval.adapters.llava_hf import LlavaHFAdapter
from mmke_eval.testing.tiny_vlms import build_tiny_llava15

PROMPT = "What is shown in the image?"
RED = Image.new("RGB", (48, 40), (230, 30, 30))
REQUESTS = [EditRequest(case_id=f"c{i}", prompt=prompt, target=target, image=RED)
            for i, (prompt, target) in enumerate([(PROMPT, "A red circle"), ("Who lives here?", "Anna"), ("Which city is this?", "Paris")])]


@pytest.fixture(scope="module")
def adapter():
    model, processor = build_tiny_llava15()
    return LlavaHFAdapter(model.eval(), processor)


def state(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def same_state(model, before) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(t, before[name]) for name, t in now.items())


def adapter_state(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items() if "lora_" in name}


def loss(adapter, request) -> float:
    with torch.no_grad():
        return float(adapter.target_loss(Query(request.prompt, request.image, request.target)))


@pytest.mark.parametrize("lora_type", ["lora", "adalora"])
def test_the_edit_lowers_the_target_loss(adapter, lora_type):
    before = loss(adapter, REQUESTS[0])
    editor = LoRAEditor(LoRAConfig(lora_type=lora_type, rank=4, lr=0.05, steps=3))
    with editor.editing(adapter, REQUESTS[0]) as handle:
        after = loss(adapter, REQUESTS[0])
        # the adapter has the asked rank (AdaLoRA's is peft's init_r: r would be ignored)
        ranks = {t.shape[0] for name, t in adapter_state(adapter.model).items() if ".lora_A." in name}
        assert ranks == {4} and handle.stats["rank"] == 4
        assert after < before
        assert handle.stats["initial_loss"] == pytest.approx(before, rel=1e-5)
        assert handle.stats["loss"] == pytest.approx(after, rel=1e-5)


def test_enough_steps_make_the_model_answer_the_target(adapter):
    request = REQUESTS[0]
    query = Query(request.prompt, request.image, request.target)
    assert adapter.teacher_forced([query])[0].token_acc < 1.0
    editor = LoRAEditor(LoRAConfig(optimizer="adam", lr=1e-2, lr_decay=1.0, steps=40))
    with editor.editing(adapter, request):
        assert adapter.teacher_forced([query])[0].token_acc == 1.0


def test_only_the_adapter_changes_and_restore_is_bit_identical(adapter):
    model = adapter.model
    before = state(model)
    kept = {name: (t, t.detach().clone()) for name, t in model.state_dict(keep_vars=True).items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    editor = LoRAEditor(LoRAConfig(lr=0.05, steps=3))
    with editor.editing(adapter, REQUESTS[0]) as handle:
        present = {id(t) for t in model.state_dict(keep_vars=True).values()}
        for name, (t, value) in kept.items():  # every original tensor still in the model, unchanged
            assert id(t) in present and torch.equal(t.detach(), value), name
        added = {name for name, t in model.state_dict(keep_vars=True).items() if id(t) not in {id(t) for t, _ in kept.values()}}
        assert added and all(".lora_A." in name or ".lora_B." in name for name in added)
        # q_proj and v_proj of every language-model layer, nothing in the vision tower or projector
        assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in added} == {"q_proj", "v_proj"}
        assert all("language_model.layers." in name for name in added)
        assert handle.touched == () and editor.edited_group() is None
        # rank 8 on each adapted (in, out) linear: 8 * (in + out) parameters
        wrapped = [m.base_layer for m in model.modules() if hasattr(m, "base_layer")]
        assert handle.stats["adapter_params"] == sum(8 * (m.in_features + m.out_features) for m in wrapped)
        assert handle.stats["adapted_modules"] == len(wrapped) == 2 * model.config.text_config.num_hidden_layers
        assert handle.stats["edit_images"] == 1 and handle.stats["steps"] == 3 and handle.stats["seconds"] >= 0
    assert same_state(model, before)
    assert not hasattr(model, "peft_config") and not any(hasattr(m, "base_layer") for m in model.modules())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


def test_a_stream_trains_one_adapter_and_reverse_restores_give_each_state_back(adapter):
    model = adapter.model
    original = state(model)
    editor = LoRAEditor(LoRAConfig(lr=0.05, steps=2))
    handles, states, tensors = [], [], []
    for request in REQUESTS:
        handles.append(editor.apply(adapter, request))
        states.append(state(model))
        tensors.append({name: t for name, t in model.state_dict(keep_vars=True).items() if "lora_" in name})
    # one adapter: the same tensors trained on by every edit, not a new one per edit
    assert all({n: id(t) for n, t in later.items()} == {n: id(t) for n, t in tensors[0].items()} for later in tensors[1:])
    assert [h.stats["live_edits"] for h in handles] == [1, 2, 3]
    adapters = [{n: t for n, t in s.items() if "lora_" in n} for s in states]
    for i in (1, 2):  # edit i+1 started from the adapter edit i left (what its restore puts back)
        assert handles[i].saved.keys() == adapters[i - 1].keys()
        assert all(torch.equal(handles[i].saved[n], adapters[i - 1][n]) for n in adapters[i - 1])
        assert any(not torch.equal(adapters[i][n], adapters[i - 1][n]) for n in adapters[i])
    with pytest.raises(RuntimeError, match="reverse order"):
        editor.restore(adapter, handles[0])
    for i in (2, 1):
        editor.restore(adapter, handles[i])
        assert same_state(model, states[i - 1])
    editor.restore(adapter, handles[0])
    assert same_state(model, original) and not hasattr(model, "peft_config")
    # the next stream starts a new adapter from the same seeded initialisation
    first = editor.apply(adapter, REQUESTS[0])
    assert same_state(model, states[0])
    editor.restore(adapter, first)


def test_edit_two_starts_from_edit_one(adapter):
    """The second edit of a stream trains the adapter the first left, not a fresh one: its result
    differs from the same edit made alone (which starts from the seeded initialisation)."""
    model = adapter.model
    editor = LoRAEditor(LoRAConfig(lr=0.05, steps=2))
    first = editor.apply(adapter, REQUESTS[0])
    second = editor.apply(adapter, REQUESTS[1])
    stream = adapter_state(model)
    editor.restore(adapter, second)
    editor.restore(adapter, first)
    alone = LoRAEditor(LoRAConfig(lr=0.05, steps=2))
    with alone.editing(adapter, REQUESTS[1]):
        single = adapter_state(model)
    assert stream.keys() == single.keys() and any(not torch.equal(stream[n], single[n]) for n in stream)


def test_a_failed_edit_leaves_the_model_as_it_was(adapter, monkeypatch):
    model = adapter.model
    before = state(model)
    editor = LoRAEditor(LoRAConfig(steps=2))
    monkeypatch.setattr(adapter, "target_loss", lambda query: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        editor.apply(adapter, REQUESTS[0])
    assert same_state(model, before) and editor._live == [] and not hasattr(model, "peft_config")


def test_layers_and_target_modules_choose_the_adapted_modules(adapter):
    editor = LoRAEditor(LoRAConfig(target_modules="o_proj", layers="1", steps=1))
    with editor.editing(adapter, REQUESTS[0]):
        wrapped = [name for name, m in adapter.model.named_modules() if hasattr(m, "base_layer")]
    assert wrapped == ["model.language_model.layers.1.self_attn.o_proj"]
    with pytest.raises(ConfigError, match="target_modules entry 'c_attn' is no module of the decoder layers .*q_proj"):
        LoRAEditor(LoRAConfig(target_modules="c_attn")).apply(adapter, REQUESTS[0])
    with pytest.raises(ConfigError, match="layers='7' outside the 2 decoder layers"):
        LoRAEditor(LoRAConfig(layers="7")).apply(adapter, REQUESTS[0])
    with pytest.raises(ConfigError, match="lora_type must be one of"):
        LoRAConfig(lora_type="dora")


def test_adalora_orthogonal_penalty_by_hand():
    # P (lora_A, r x in) = [[1,0,0],[0,2,0]]: P P^T - I = diag(0, 3), norm 3; Q (lora_B) = I: 0. Mean 1.5.
    params = {"q.lora_A.x": torch.tensor([[1.0, 0, 0], [0, 2.0, 0]]), "q.lora_B.x": torch.eye(2), "q.lora_E.x": torch.ones(2, 1)}
    assert float(_orthogonal_penalty(params)) == pytest.approx(1.5)


def test_a_float16_model_keeps_its_dtype_and_the_adapter_trains_in_float32():
    model, processor = build_tiny_llava15()
    adapter = LlavaHFAdapter(model.to(torch.float16).eval(), processor)
    before = state(adapter.model)
    editor = LoRAEditor(LoRAConfig(lr=0.05, steps=2))
    with editor.editing(adapter, REQUESTS[0]) as handle:
        assert {t.dtype for t in adapter_state(adapter.model).values()} == {torch.float32}
        assert handle.stats["loss"] < handle.stats["initial_loss"] and handle.stats["loss_scaling"] == "dynamic"
    assert same_state(adapter.model, before)


def test_module_and_layer_lists_pass_through_editor_args():
    """A comma separates --editor_args items, so the lists take spaces (or an escaped comma)."""
    from mmke_eval import registry
    from mmke_eval.keyvalues import parse_key_values

    values = parse_key_values(r"target_modules=q_proj o_proj,layers=0\,1,steps=2", "--editor_args")
    editor = registry.build_editor("lora", family="llava", overrides=values)
    assert editor.config.module_names() == ["q_proj", "o_proj"] and editor.config.layer_indices() == [0, 1]
    assert (editor.config.lora_type, editor.config.rank, editor.config.steps) == ("adalora", 12, 2)  # the family's, then ours
    assert registry.build_editor("lora").config.module_names() == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="layers must be layer indices"):
        LoRAConfig(layers="last")


def test_summary_of_a_task():
    stats = [{"adapter_params": 64, "live_edits": 1, "initial_loss": 2.0, "loss": 0.5, "seconds": 1.0},
             {"adapter_params": 64, "live_edits": 2, "initial_loss": 3.0, "loss": None, "seconds": 2.0}]
    assert LoRAEditor().summarize(stats) == {"edits": 2, "adapter_params": 64, "most_live_edits": 2,
                                             "mean_initial_loss": 2.5, "mean_loss": 0.5, "mean_seconds": 1.5}
