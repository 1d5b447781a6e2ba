"""MEMIT and AlphaEdit (editors/alphaedit.py) on the tiny LLaVA: the edit, exact restores in a
stream, AlphaEdit's null-space guarantee, and the key-statistics cache."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from editors.alphaedit import AlphaEditEditor, MEMITEditor
from editors.base import ConfigError, EditRequest
from mmke_eval import registry
from mmke_eval.adapters.base import Query
from mmke_eval.adapters.hf_vlm import ParameterGroupError

LOCALITY = [("Who wrote Hamlet?", "Shakespeare"), ("What is the capital of Japan?", "Tokyo"),
            ("How many legs does a spider have?", "eight")]
# Tiny-model settings: both layers; a wide clamp so the target value can reach the target; the
# preserved keys' exact null space (their second moment is rank-deficient: ~40 positions in 176
# dimensions, the zero eigenvalues ~1e-11) and a small ridge.
SETTINGS = {"edit_layers": "0,1", "clamp_norm_factor": 50.0, "v_lr": 0.5, "v_weight_decay": 1e-3, "stats_cache": "off"}
ALPHA = {"nullspace_threshold": 1e-8, "l2": 1e-2}


@pytest.fixture(scope="module")
def adapter():
    builders = registry.adapter_test_models("llava_hf")
    model, processor = builders[next(iter(builders))]()  # the tiny LLaVA-1.5
    return registry.adapter_class("llava_hf")(model.eval(), processor)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("alpha") / "train.json"
    path.write_text(json.dumps([{"src": f"What is shown {i}?", "alt": "a star", "loc": q, "loc_ans": a}
                                for i, (q, a) in enumerate(LOCALITY)]))
    return str(path)


def build(name: str, **overrides):
    values = {**SETTINGS, **(ALPHA if name == "alphaedit" else {}), **overrides}
    return registry.build_editor(name, family="llava", overrides=values)


def request(train_file, target="star", colour=(230, 30, 30), case="c0"):
    return EditRequest(case_id=case, prompt="What is shown in the image?", target=target,
                       image=Image.new("RGB", (48, 40), colour), train_file=train_file)


def weights(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["memit", "alphaedit"])
def test_edit_changes_the_answer_touches_only_down_proj_and_restores_bit_identically(name, adapter, train_file):
    editor = build(name)
    req = request(train_file)
    query = Query(req.prompt, req.image, req.target)
    before_result = adapter.teacher_forced([query], k=1)[0]
    before = weights(adapter.model)
    with editor.editing(adapter, req) as handle:
        after_result = adapter.teacher_forced([query], k=1)[0]
        changed = {k for k, v in adapter.model.state_dict().items() if not torch.equal(v, before[k])}
        assert changed == {"model.language_model.layers.0.mlp.down_proj.weight", "model.language_model.layers.1.mlp.down_proj.weight"}
        assert set(handle.touched) == changed and handle.saved == {}  # no snapshot of whole matrices per edit
        assert handle.stats["edit_images"] == 1 and handle.stats["layers"] == [0, 1] and handle.stats["update_norm"] > 0
        assert handle.stats["loss"] < handle.stats["initial_loss"] and handle.stats["key_stats"] == "computed"
    # the first target token was not predicted before, it is after
    assert before_result.predicted_ids[0] != before_result.answer_ids[0]
    assert after_result.predicted_ids[0] == after_result.answer_ids[0]
    assert same(weights(adapter.model), before)


def preserved_keys(adapter, layer_names, texts):
    """The inputs of each down_proj at every position of the preserved texts."""
    keys = {name: [] for name in layer_names}
    hooks = [adapter.model.get_submodule(name.removesuffix(".weight")).register_forward_pre_hook(
        lambda module, args, name=name: keys[name].append(args[0][0].detach().double())) for name in layer_names]
    try:
        for text in texts:
            adapter.teacher_forced([Query(text)], k=1)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat(k).T for name, k in keys.items()}  # [d_in, positions]


def relative_effect(adapter, train_file, editor, names, texts):
    """max over the edited matrices of |dW K0| / (|dW| |K0|), and the largest change of a logit on
    the preserved texts, while ``editor``'s edit is live."""
    k0 = preserved_keys(adapter, names, texts)
    params = dict(adapter.model.named_parameters())
    before = {n: params[n].detach().double().clone() for n in names}
    probes = [Query(text) for text in texts]
    logits_before = [adapter.sequence_logits(q).detach() for q in probes]
    with editor.editing(adapter, request(train_file)):
        delta = {n: params[n].detach().double() - before[n] for n in names}
        ratio = max(float((delta[n] @ k0[n]).norm() / (delta[n].norm() * k0[n].norm())) for n in names)
        drift = max(float((adapter.sequence_logits(q).detach() - b).abs().max()) for q, b in zip(probes, logits_before))
    return ratio, drift


NAMES = ["model.language_model.layers.0.mlp.down_proj.weight", "model.language_model.layers.1.mlp.down_proj.weight"]


def test_alphaedit_leaves_the_preserved_keys_outputs_unchanged(adapter, train_file):
    texts = [f"{q} {a}" for q, a in LOCALITY]  # preserved=locality: the train split's locality inputs
    ratio, drift = relative_effect(adapter, train_file, build("alphaedit"), NAMES, texts)
    assert ratio < 1e-6  # dW K0 = 0 to numerical precision
    assert drift < 1e-4  # so the preserved inputs' outputs stay


def test_memit_changes_the_preserved_keys_outputs(adapter, train_file, tmp_path):
    """MEMIT only weighs the preserved keys (lambda C), on a preserved set that spans every key
    direction (more positions than down_proj's 176 inputs; with fewer, lambda C is zero in the
    directions no preserved key reaches and MEMIT's update goes there too, docs/editors.md)."""
    words = ["river", "mountain", "violin", "copper", "winter", "harbour", "lantern", "orchard", "falcon", "marble"]
    texts = [f"The {a} near the {b} was {i} years old and {c}." for i, (a, b, c) in
             enumerate(zip(words * 5, words[3:] * 5 + words[:3] * 5, words[7:] * 5 + words[:7] * 5))]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts))
    ratio, drift = relative_effect(adapter, train_file, build("memit", preserved=str(corpus)), NAMES, texts)
    assert ratio > 1e-3 and drift > 1e-3


@pytest.mark.parametrize("name", ["memit", "alphaedit"])
def test_a_stream_of_edits_restored_in_reverse_gives_back_each_state_exactly(name, adapter, train_file):
    editor = build(name)
    edits = [request(train_file, "star", (230, 30, 30), "c0"), request(train_file, "moon", (30, 30, 230), "c1"),
             request(train_file, "tree", (30, 230, 30), "c2")]
    states, handles = [weights(adapter.model)], []
    for req in edits:
        handles.append(editor.apply(adapter, req))
        states.append(weights(adapter.model))
        assert handles[-1].stats["live_edits"] == len(handles)
    assert not same(states[2], states[3]) and not same(states[1], states[2])
    with pytest.raises(RuntimeError, match="restored last first"):
        editor.restore(adapter, handles[0])
    for n in (3, 2, 1):
        editor.restore(adapter, handles[n - 1])
        assert same(weights(adapter.model), states[n - 1]), f"after restoring edit {n}"
    # a new stream starts from the base model: the first edit again gives the same weights
    with editor.editing(adapter, edits[0]):
        assert same(weights(adapter.model), states[1])


def test_alphaedit_solves_with_the_keys_of_the_edits_live_before(adapter, train_file):
    """v = (P (k k^T + Kp Kp^T) + alpha I)^-1 P k, Kp the first edit's keys on the model it edited."""
    editor = build("alphaedit")
    first = editor.apply(adapter, request(train_file, "star"))
    second = editor.apply(adapter, request(train_file, "moon", (30, 30, 230), "c1"))
    try:
        name = "model.language_model.layers.0.mlp.down_proj.weight"
        kp = editor._stream[0].keys[name].double()
        r, v = (t.double() for t in editor._stream[1].factors[name])
        p = editor.projection(name)
        # the second edit's key at layer 0: the mean key it solved with (layer 0's input does not depend on layer 0)
        k = editor._stream[1].keys[name].double()
        lhs = (p @ (k @ k.T + kp @ kp.T) + editor.config.l2 * torch.eye(p.shape[0], dtype=p.dtype)) @ v
        assert torch.allclose(lhs, p @ k, rtol=1e-4, atol=1e-6 * float((p @ k).norm()))
        without = torch.linalg.solve(p @ (k @ k.T) + editor.config.l2 * torch.eye(p.shape[0], dtype=p.dtype), p @ k)
        assert not torch.allclose(v, without.float().double(), rtol=1e-3)
    finally:
        editor.restore(adapter, second)
        editor.restore(adapter, first)


def test_key_statistics_cache_is_reused_for_the_same_model_and_recomputed_when_a_weight_changes(adapter, train_file, tmp_path):
    cache = tmp_path / "stats"
    req = request(train_file)

    def source(editor):
        with editor.editing(adapter, req) as handle:
            return handle.stats["key_stats"]

    editor = build("alphaedit", stats_cache=str(cache))
    assert source(editor) == "computed"
    files = sorted(cache.glob("*.pt"))
    assert len(files) == 1
    assert source(editor) == "reused (this process)"
    assert source(build("alphaedit", stats_cache=str(cache))) == f"loaded {files[0]}"

    weight = dict(adapter.model.named_parameters())["model.language_model.embed_tokens.weight"]
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[5] += 0.01  # a weight below the edited layers: other keys
        assert source(editor) == "computed"  # not the statistics this process holds for the old weights
        new_files = sorted(set(cache.glob("*.pt")) - set(files))
        assert len(new_files) == 1
        # a file at the new model's name that holds the old model's statistics is not served either
        shutil.copy(files[0], new_files[0])
        assert source(build("alphaedit", stats_cache=str(cache))) == "computed"
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert source(build("alphaedit", stats_cache=str(cache))) == f"loaded {files[0]}"


def test_bad_layers_are_refused(adapter, train_file):
    for bad in ("2,1", "1,1", "", "a", "3-1"):
        with pytest.raises(ConfigError, match=f"edit_layers='{bad}' must be distinct layer indices"):
            build("memit", edit_layers=bad)
    assert build("memit", edit_layers="4-8").edited_layers() == (4, 5, 6, 7, 8)  # the command line's form
    assert build("memit", edit_layers="4,5,6, 7 8").edited_layers() == (4, 5, 6, 7, 8)
    with pytest.raises(ParameterGroupError, match=r"no layer \[4\].*layers 0-1"):
        build("alphaedit", edit_layers="1,4").apply(adapter, request(train_file))
    assert isinstance(build("alphaedit"), AlphaEditEditor) and isinstance(build("memit"), MEMITEditor)


def test_lookup_token_is_the_last_prompt_token_or_the_last_image_token(adapter):
    from editors.alphaedit import _lookup

    image = Image.new("RGB", (48, 40), (230, 30, 30))
    query = Query("What is shown in the image?", image, "star")
    enc = adapter.encoded(query)
    no_target = adapter.encoded(Query(query.prompt, image))
    assert _lookup("memit", adapter, query, "prompt_last") == (len(no_target.ids) - 1, len(enc.ids))
    assert enc.ids[: len(no_target.ids)] == no_target.ids  # the answer follows that token
    pos, _ = _lookup("memit", adapter, query, "image_last")
    assert enc.ids[pos] == adapter.image_token_id and adapter.image_token_id not in enc.ids[pos + 1:]
    with pytest.raises(ValueError, match="lookup=image_last, but the edit input has no image token"):
        _lookup("memit", adapter, Query("Who wrote Hamlet?", None, "Shakespeare"), "image_last")


def test_llm_mlp_out_group_takes_explicit_layer_indices(adapter):
    down = "model.language_model.layers.{}.mlp.down_proj.weight"
    assert set(adapter.parameter_group("llm_mlp_out")) == {down.format(1)}  # an int: the last layers
    assert set(adapter.parameter_group("llm_mlp_out", last_k=(0,))) == {down.format(0)}  # a tuple: those layers
    assert set(adapter.parameter_group("llm_mlp_out", last_k=(0, 1))) == {down.format(0), down.format(1)}
    with pytest.raises(ParameterGroupError, match=r"no layer \[2\]"):
        adapter.parameter_group("llm_mlp_out", last_k=(1, 2))
    with pytest.raises(ParameterGroupError, match="layer indices must be integers >= 0"):
        adapter.parameter_group("llm_mlp_out", last_k=(-1,))
