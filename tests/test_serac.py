"""SERAC (editors/serac.py): memory, hard routing, restore, training, checkpoints, and a trained
SERAC on the world model.

The mechanics run on a tiny random LLaVA (mmke_eval/testing); what must be learned runs on the
shipped world model, with a SERAC trained for a few dozen steps inside the test (``trained``).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from editors.base import ConfigError, EditRequest
from editors.learned import CheckpointError
from editors.serac import SERACEditor
from mmke_eval import registry
from mmke_eval.adapters.base import Query
from mmke_eval.adapters.llava_hf import LlavaHFAdapter
from mmke_tasks.mmke.loader import load_cases
from mmke_eval.direct import probe_requests, score_cases
from mmke_eval.engine.evaluator import CaseEvaluator
from mmke_eval.protocol import Protocol

TYPES = ("entity_level", "visual_knowledge", "user_specific")


def state(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def identical(model, before) -> bool:
    return all(torch.equal(t, before[name]) for name, t in model.state_dict().items())


def serac(adapter, checkpoint: str = "", **overrides) -> SERACEditor:
    """The registry's SERAC for the adapter's family; untrained networks unless ``checkpoint``."""
    editor = registry.build_editor("serac", family=adapter.family, overrides={**overrides, **({"checkpoint": checkpoint} if checkpoint else {})})
    if not checkpoint:
        editor.ensure_ready(adapter, for_training=True)
    return editor


@pytest.fixture(scope="module")
def tiny():
    from mmke_eval.testing.tiny_vlms import build_tiny_llava15

    model, processor = build_tiny_llava15()
    return LlavaHFAdapter(model.eval(), processor)


@pytest.fixture(scope="module")
def world():
    from mmke_eval.testing.world import world_adapter

    return world_adapter()


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    from mmke_eval.mini.generate import generate

    return generate(tmp_path_factory.mktemp("mini"), seed=0)  # the world the model was trained on


def fixture_cases(root, n: int = 3):
    return load_cases(root, "entity_level", "eval")[0][:n]


def request_of(case) -> EditRequest:
    doc = probe_requests([case])[0][0].doc
    return CaseEvaluator(None, None, Protocol()).edit_request(doc)


# -- configuration ----------------------------------------------------------------------------------
def test_config_is_checked_and_registry_has_reference_defaults():
    editor = registry.build_editor("serac")
    assert editor.config.meta_lr == 1e-5 and editor.config.threshold == 0.5
    assert editor.config.cf_target == "llm_last_mlp" and editor.config.cf_layers == 1
    assert editor.config.cf_prefix == "{prompt} {target} "  # the reference's cached "src alt "
    assert editor.edited_group() is None  # no weight is ever changed
    described = editor.describe()
    assert "hard" in described["routing"] and "soft mixture" in described["routing"]
    world = registry.build_editor("serac", family="mmke_mini_world").config  # the world model's own training settings
    assert world.meta_lr == 1e-3 and world.cf_prefix == "New Fact: {prompt} {target}\nPrompt: "
    with pytest.raises(ConfigError, match="cls_key"):
        registry.build_editor("serac", overrides={"cls_key": "answer"})
    with pytest.raises(ConfigError, match="cf_prefix"):
        registry.build_editor("serac", overrides={"cf_prefix": "{question}"})


# -- memory, routing and restore (tiny random LLaVA) --------------------------------------------------
def test_an_untrained_serac_asks_for_a_checkpoint(tiny, mmke_fixture_root):
    with pytest.raises(ConfigError, match="needs trained networks"):
        registry.build_editor("serac").apply(tiny, request_of(fixture_cases(mmke_fixture_root, 1)[0]))


def test_apply_and_restore_change_no_weight_and_keep_exactly_the_memory(tiny, mmke_fixture_root):
    editor = serac(tiny, threshold=-1.0)  # every query goes to the counterfactual model
    before = state(tiny.model)
    params = dict(tiny.model.named_parameters())
    requests = [request_of(c) for c in fixture_cases(mmke_fixture_root)]
    handles = [editor.apply(tiny, r) for r in requests]
    assert [e.request for e in editor.memory] == requests and [h.stats["memory"] for h in handles] == [1, 2, 3]
    assert identical(tiny.model, before) and handles[0].touched == ()
    query = Query("What is shown in the image?", requests[0].image, "a cat")
    handles[0].responder.teacher_forced([query, replace(query, image=None)], k=3)
    handles[0].responder.generate([query], max_new_tokens=2)
    assert identical(tiny.model, before)
    assert all(p is params[n] for n, p in tiny.model.named_parameters())  # the original Parameter objects are back
    editor.restore(tiny, handles[1])  # exactly that entry
    assert [e.request for e in editor.memory] == [requests[0], requests[2]]
    editor.restore(tiny, handles[2])
    editor.restore(tiny, handles[0])
    assert editor.memory == [] and identical(tiny.model, before)


def test_nothing_routed_answers_exactly_as_the_base_model(tiny, mmke_fixture_root):
    editor = serac(tiny, threshold=1.01)  # no probability exceeds it
    request = request_of(fixture_cases(mmke_fixture_root, 1)[0])
    queries = [Query("What is shown in the image?", request.image, "a cat"), Query("Who lives here?", None, "Anna")]
    base = tiny.teacher_forced(queries, k=5)
    base_text = tiny.generate(queries, max_new_tokens=3)
    with editor.editing(tiny, request) as handle:
        routed = handle.responder.teacher_forced(queries, k=5)
        text = handle.responder.generate(queries, max_new_tokens=3)
    for a, b in zip(base, routed):
        assert torch.equal(a.topk, b.topk) and a.token_acc == b.token_acc and a.predicted_ids == b.predicted_ids
    assert text == base_text


def test_routed_queries_go_through_the_counterfactual_tensors_with_the_edit_as_prefix(tiny, mmke_fixture_root):
    from editors.learned import substituted

    editor = serac(tiny, threshold=-1.0)
    with torch.no_grad():
        for p in editor.learned.cf.values():
            p.add_(0.05 * torch.randn_like(p))  # a counterfactual model that differs from the base
    request = request_of(fixture_cases(mmke_fixture_root, 1)[0])
    queries = [Query("What is shown in the image?", request.image, "a cat"), Query("Who lives here?", None, "Anna")]
    with editor.editing(tiny, request) as handle:
        routed = handle.responder.teacher_forced(queries, k=5)
        prefix = editor.memory[0].prefix
    assert prefix == f"{request.prompt} {request.target} "
    with torch.no_grad(), substituted(tiny.model, editor.learned.cf_tensors(tiny.model)):
        expected = tiny.teacher_forced([replace(q, prefix=prefix) for q in queries], k=5)
    plain = tiny.teacher_forced([replace(q, prefix=prefix) for q in queries], k=5)
    for a, b in zip(expected, routed):
        assert torch.equal(a.topk, b.topk) and a.predicted_ids == b.predicted_ids
    assert any(not torch.equal(a.topk, b.topk) for a, b in zip(plain, routed))  # the trained copy was used


def test_memory_is_empty_between_cases_and_accumulates_in_sequential_mode(tiny, mmke_fixture_root):
    cases = fixture_cases(mmke_fixture_root, 3)
    none = score_cases(tiny, registry.build_editor("none"), cases, Protocol(generate=False))
    for sequential in (False, True):
        editor = serac(tiny, threshold=1.01)
        grouped = probe_requests(cases)
        results = [None] * sum(len(g) for g in grouped)
        CaseEvaluator(tiny, editor, Protocol(generate=False, sequential=sequential)).answer_cases(grouped, results, progress=False)
        sizes = [json.loads(results[g[0].index])["edit"]["memory"] for g in grouped]
        assert sizes == ([1, 2, 3] if sequential else [1, 1, 1])
        assert editor.memory == []
        # Nothing routed: every score is the base model's, locality exactly 100.
        scores = score_cases(tiny, editor, cases, Protocol(generate=False, sequential=sequential))
        assert scores["t_loc"] == 100.0 and scores["i_loc"] == 100.0
        assert {k: scores[k] for k in ("t_rel", "i_rel", "i_gen", "port")} == {k: none[k] for k in ("t_rel", "i_rel", "i_gen", "port")}


# -- training and checkpoints (world model) ---------------------------------------------------------
def world_training(root, split: str = "train", n: int = 40):
    """(case, template) pairs of the world's train split, as `mmke-eval train-editor` reads them."""
    return [(case, "mmke/probe.jinja") for kt in TYPES for case in load_cases(root, kt, split)[0][:n]]


TRAINED = {"cls_image": True}  # the architecture of the ``trained`` checkpoint


@pytest.fixture(scope="module")
def trained(world, mini_root, tmp_path_factory):
    """A SERAC trained on the world's train split, its classifier with images: the classifier only
    (cf_coef=0, a few seconds; the counterfactual copy keeps the base weights, which read the
    IKE-format prefix already)."""
    from mmke_eval.training.loop import train

    folder = tmp_path_factory.mktemp("serac_ckpt")
    editor = registry.build_editor("serac", family=world.family,
                                   overrides={**TRAINED, "cf_coef": 0, "max_steps": 150, "val_every": 150, "val_cases": 4})
    train(editor, world, world_training(mini_root), {"sha256": "test", "cases": 120}, folder, progress=False)
    return folder


def test_a_few_training_steps_lower_the_meta_loss(world, mini_root):
    from mmke_eval.training.data import training_example

    editor = serac(world, negatives=0)
    examples = [training_example(*pair) for pair in world_training(mini_root, n=1)]
    optimizer = torch.optim.Adam(editor.optimizer_groups())
    editor.learned.train()

    def total() -> tuple[float, dict]:
        with torch.no_grad():
            parts = [editor.meta_loss(world, ex) for ex in examples]
        return sum(float(loss) for loss, _ in parts), parts[0][1]

    before, parts = total()
    assert set(parts) == {"cls_bce", "cf_nll", "cls_acc"} and parts["cf_nll"] > 0
    for _ in range(4):
        for ex in examples:
            loss, _ = editor.meta_loss(world, ex)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    after, _ = total()
    assert after < before - 0.05, (before, after)


def test_checkpoint_round_trips_exactly_and_is_refused_for_another_base_model(world, tiny, trained):
    from safetensors.torch import load_file

    editor = serac(world, checkpoint=str(trained), **TRAINED)
    editor.ensure_ready(world)
    saved = load_file(str(trained / "editor.safetensors"))
    state_now = editor.learned.state_dict()
    assert set(saved) == set(state_now) and all(torch.equal(saved[k], state_now[k].cpu()) for k in saved)
    meta = json.loads((trained / "editor.json").read_text())
    assert sorted(meta["edited_modules"]) == sorted(editor.edited_modules(world))  # the cf group's weights
    assert editor.describe()["checkpoint_info"]["editor"] == "serac"
    with pytest.raises(CheckpointError, match="other editor settings"):
        serac(world, checkpoint=str(trained), cls_dim=8, **TRAINED).ensure_ready(world)
    with pytest.raises(CheckpointError, match="cls_image"):
        serac(world, checkpoint=str(trained), **{**TRAINED, "cls_image": False}).ensure_ready(world)
    with pytest.raises(CheckpointError):
        serac(tiny, checkpoint=str(trained), **TRAINED).ensure_ready(tiny)  # other modules (shapes)
    weight = world.parameter_group("llm_last_mlp")[min(editor.edited_modules(world))]
    original = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.01)  # the same architecture, other weights
    try:
        with pytest.raises(CheckpointError, match="another base model"):
            serac(world, checkpoint=str(trained), **TRAINED).ensure_ready(world)
    finally:
        with torch.no_grad():
            weight.copy_(original)


def test_trained_serac_routes_in_scope_probes_and_edits_the_world_model(world, mini_root, trained):
    cases = [case for kt in TYPES for case in load_cases(mini_root, kt, "eval")[0][:3]]  # held out
    before = state(world.model)
    editor = serac(world, checkpoint=str(trained), **TRAINED)
    routed: dict[str, list[bool]] = {}
    for case in cases:
        probes = probe_requests([case])[0]
        with editor.editing(world, request_of(case)):
            for probe, (entry, _) in zip(probes, editor.route(world, [p.query for p in probes])):
                routed.setdefault(probe.doc["probe"], []).append(entry is not None)
    share = {kind: sum(v) / len(v) for kind, v in routed.items()}
    assert share["i_rel"] >= 0.8 and share["i_gen"] >= 0.8, share  # in scope: the counterfactual model
    assert share["i_loc"] <= 0.2 and share["t_loc"] <= 0.3, share  # out of scope: the base model
    none = score_cases(world, registry.build_editor("none"), cases, Protocol(generate=False))
    edited = score_cases(world, editor, cases, Protocol(generate=False))
    assert edited["i_rel"] >= none["i_rel"] + 40 and edited["i_gen"] >= none["i_gen"] + 40, edited
    assert edited["i_loc"] >= 95 and edited["t_loc"] >= 75, edited
    assert editor.memory == [] and identical(world.model, before)


def test_the_image_tells_apart_edits_with_the_same_prompt_in_a_full_memory(world, mini_root, trained):
    # Sequential editing: every entity edit asks "What is in the image?"; the probe about "the thing
    # in the image" must go to the entry whose edit image shows that thing.
    cases = load_cases(mini_root, "entity_level", "eval")[0][:4]
    editor = serac(world, checkpoint=str(trained), **TRAINED)
    requests = [request_of(c) for c in cases]
    handles = [editor.apply(world, r) for r in requests]
    try:
        for case, request in zip(cases, requests):
            probes = [p.query for p in probe_requests([case])[0] if p.doc["probe"] in ("i_rel", "i_gen")]
            assert [entry.request if entry else None for entry, _ in editor.route(world, probes)] == [request] * len(probes)
    finally:
        for handle in reversed(handles):
            editor.restore(world, handle)
    assert editor.memory == []


def test_text_only_probes_are_scored_on_text_alone(world, trained):
    editor = serac(world, checkpoint=str(trained), **TRAINED)
    editor.ensure_ready(world)
    from PIL import Image

    keys = [("What is in the image?", Image.new("RGB", (32, 32), (200, 30, 30))), ("What is this sign?", None)]
    queries = [("Where is Robim from?", None), ("Who owns the cyan striped hat?", None)]
    cls = editor.learned.classifier
    with torch.no_grad():
        text_only = cls.logits(cls.encode([editor._ids(world, t) for t, _ in keys]), cls.encode([editor._ids(world, t) for t, _ in queries]))
        assert torch.equal(editor.scope_logits(world, keys, queries), text_only)
