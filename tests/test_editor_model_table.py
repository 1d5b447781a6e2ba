"""Every registered editor on every model every registered adapter serves: one table, one contract.

Both axes come from registry.yaml (``editors:``, and each adapter's ``tiny:`` models), so a new
editor or adapter enters the table by itself. For each (editor, model): the edit changes exactly
the parameter group the editor names (``edited_group``; none: no weight at all), a weight edit
lowers the edit example's loss, every probe kind of the MMKE family runs through the case
evaluator on the edited model, and restore leaves every weight bit-identical. Learned editors
(SERAC, MEND, ...) run with their networks built and untrained; an editor whose edit hands back a
``responder`` (SERAC) answers the probes through it.
"""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
from PIL import Image

from editors.base import EditRequest
from editors.learned import LearnedEditor
from mmke_eval import families, registry
from mmke_eval.adapters.base import Query
from mmke_tasks.mmke.loader import load_cases
from mmke_eval.direct import score_cases
from mmke_eval.protocol import Protocol

PROMPT = "What is shown in the image?"
TARGET = "A red circle on a white background"
# Fast settings for a tiny random model, by config field (an editor gets those its config has):
# a high lr learns the target in a few steps; two lexically retrieved demonstrations.
# Learned editors run their networks as initialised (a gradient step of edit_lr). GRACE's value starts
# at the layer's own output (warm), so its few steps start from the unedited loss (a cold, random
# value would first have to undo its own start). MEMIT/AlphaEdit edit both layers of the 2-layer tiny
# models (their 7B layers 4-8 do not exist there), with a target value free to move (a random model's
# hidden states are small) and a small ridge.
FAST = {"lr": 5e-2, "steps": 3, "k": 2, "retriever": "lexical", "checkpoint": "untrained", "edit_lr": 1e-2, "val_init": "warm",
        "edit_layers": "0,1", "v_lr": 0.5, "clamp_norm_factor": 50.0, "v_weight_decay": 1e-3, "l2": 1e-2}
TRAIN_RECORDS = [  # with locality neighbours (loc, loc_ans): MEMIT's and AlphaEdit's preserved keys
    {"src": "What is this building?", "rephrase": "Which building is this?", "pred": "a church", "alt": "a castle",
     "loc": "Who wrote Hamlet?", "loc_ans": "Shakespeare"},
    {"src": "What is shown in the image?", "rephrase": "What does the picture show?", "pred": "a square", "alt": "a star",
     "loc": "What is the capital of Japan?", "loc_ans": "Tokyo"},
    {"src": "Who painted this picture?", "rephrase": "Whose painting is this?", "pred": "Monet", "alt": "Turner",
     "loc": "How many legs does a spider have?", "loc_ans": "eight"},
]
# Editors this table cannot run from the registry alone, and where they are tested instead.
ELSEWHERE = {"serac_ref": "needs a converted reference checkpoint and its DistilBERT and counterfactual LM folders; "
                          "tests/test_serac_reference.py runs it on the tiny LLaVA and BLIP-2 and checks that other models are refused"}
MODELS = [(adapter, model) for adapter in registry.adapter_names() for model in registry.adapter_test_models(adapter)]


@pytest.fixture(scope="module", params=MODELS, ids=[f"{a}:{m}" for a, m in MODELS])
def adapter(request):
    name, model_name = request.param
    model, processor = registry.adapter_test_models(name)[model_name]()
    return registry.adapter_class(name)(model.eval(), processor)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "entity_train.json"
    path.write_text(json.dumps(TRAIN_RECORDS))
    return path


def state(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def changed(model, before) -> set[str]:
    """Names (as before) of the model's original tensors whose values changed, and any key added or
    removed; a side-memory editor that wraps a module (peft) renames its tensors, which are found by identity."""
    now = model.state_dict()
    if now.keys() != before.keys():
        return set(now.keys() ^ before.keys())
    return {name for name, t in now.items() if not torch.equal(t, before[name])}


def originals(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (the parameter or buffer itself, a copy of its value)."""
    return {name: (t, t.detach().clone()) for name, t in model.state_dict(keep_vars=True).items()}


def changed_originals(model, kept) -> set[str]:
    """Original tensors (by identity, whatever they are called now) whose values changed, or that left the model."""
    present = {id(t) for t in model.state_dict(keep_vars=True).values()}
    return {name for name, (t, value) in kept.items() if id(t) not in present or not torch.equal(t.detach(), value)}


def added_parameters(model, kept) -> dict[str, torch.Tensor]:
    ids = {id(t) for t, _ in kept.values()}
    return {name: t for name, t in model.state_dict(keep_vars=True).items() if id(t) not in ids}


def names_of(model, params) -> set[str]:
    """state_dict names of parameters (the same tensors; a shared tensor keeps its first name)."""
    ids = {id(p) for p in params.values()}
    return {name for name, t in model.state_dict(keep_vars=True).items() if id(t) in ids}


def fast_editor(editor_name: str, adapter, **settings):
    """The editor with the fast settings its config has; a learned editor with its networks built,
    untrained (the contract holds whatever they learned)."""
    known = {f.name for f in fields(registry.editor_class(editor_name).config_class)}
    editor = registry.build_editor(editor_name, family=adapter.family, overrides={k: v for k, v in {**FAST, **settings}.items() if k in known})
    if isinstance(editor, LearnedEditor):
        editor.ensure_ready(adapter, for_training=True)
    return editor


def test_every_adapter_declares_tiny_models_or_says_why_not():
    for name in registry.adapter_names():
        cls = registry.adapter_class(name)
        assert registry.adapter_test_models(name) or getattr(cls, "unavailable_reason", None), name


@pytest.mark.parametrize("editor_name", sorted(registry.editor_names()))
def test_editor_contract_on_every_model(editor_name, adapter, train_file, mmke_fixture_root):
    if editor_name in ELSEWHERE:
        pytest.skip(ELSEWHERE[editor_name])
    model = adapter.model
    editor = fast_editor(editor_name, adapter)
    image = Image.new("RGB", (48, 40), (230, 30, 30))
    request = EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=image, train_file=str(train_file))
    edit_query = Query(PROMPT, image, TARGET)
    with torch.no_grad():
        loss_before = float(adapter.target_loss(edit_query))
    before = state(model)
    kept = originals(model)

    with editor.editing(adapter, request) as handle:
        in_context = bool(handle.prefix)
        answers_elsewhere = handle.responder is not None  # another model answers some queries (SERAC)
        group = editor.edited_group()
        if editor.side_memory:  # no weight of the model changes; its own modules beside them do the edit
            assert group is None and changed_originals(model, kept) == set() and handle.touched == ()
            assert added_parameters(model, kept), f"{editor_name}: a side-memory edit added nothing to the model"
            with torch.no_grad():
                assert float(adapter.target_loss(edit_query)) < loss_before
        elif group is None:
            assert changed(model, before) == set() and handle.touched == ()
        else:
            touched = changed(model, before)
            members = names_of(model, adapter.parameter_group(group, last_k=editor.edited_layers()))
            assert touched and touched <= members and names_of(model, {n: p for n, p in model.named_parameters() if n in handle.touched}) == members
            with torch.no_grad():
                assert float(adapter.target_loss(edit_query)) < loss_before
        probes = [Query(PROMPT, image, TARGET, handle.prefix), Query("Where does this person live?", None, "Paris", handle.prefix)]
        answerer = handle.responder if answers_elsewhere else adapter
        results = answerer.teacher_forced(probes, k=3)
        assert all(0.0 <= r.token_acc <= 1.0 and r.answer_ids for r in results)
        assert len(answerer.generate(probes, max_new_tokens=2)) == 2
    assert changed(model, before) == set()

    # Every probe kind of the MMKE family, through the case evaluator: pre-edit, edit, probes, restore
    # (one training step is enough to run them on an edited model).
    case = load_cases(mmke_fixture_root, "entity_level", "eval")[0][:1]
    scores = score_cases(adapter, fast_editor(editor_name, adapter, steps=1), case, Protocol(generate=False))
    kinds = [kind.name for kind in families.get("mmke").probes]
    assert set(kinds) <= set(scores) and all(0.0 <= scores[k] <= 100.0 for k in kinds)
    assert changed(model, before) == set()
    if editor.edited_group() is None and not (in_context or answers_elsewhere or editor.side_memory):  # the unedited model agrees with itself
        assert scores["t_loc"] == 100.0 and scores["i_loc"] == 100.0


@pytest.mark.parametrize("editor_name", sorted(registry.editor_names()))
def test_every_editor_uses_two_edit_images_and_says_so_or_refuses_them(editor_name, tiny_llava15_adapter, train_file):
    """Multi-step editing (edit_images=2): an editor either refuses before any edit, in one line, or
    uses both images and records it (``edit_images`` in its edit report, which every sample carries).
    Using them: a weight edit from (red, blue) differs from one from (red, red); SERAC holds one
    memory entry per image."""
    if editor_name in ELSEWHERE:
        pytest.skip(ELSEWHERE[editor_name])
    from editors.base import ConfigError
    from mmke_eval.engine.evaluator import CaseEvaluator

    adapter = tiny_llava15_adapter
    editor = fast_editor(editor_name, adapter)
    if editor.multi_image_rule() is None:  # declared on the class: it cannot use several images
        with pytest.raises(ConfigError, match=f"editor '{editor_name}' cannot use edit_images=2: .*; run it with edit_images=1"):
            CaseEvaluator(adapter, editor, Protocol(edit_images=2))
        return
    CaseEvaluator(adapter, editor, Protocol(edit_images=2))  # accepted
    red, blue = Image.new("RGB", (48, 40), (230, 30, 30)), Image.new("RGB", (48, 40), (30, 30, 230))
    before = state(adapter.model)
    after = {}
    for label, second in (("red+blue", blue), ("red+red", red)):
        request = EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=red, extra_images=(second,), train_file=str(train_file))
        with editor.editing(adapter, request) as handle:
            after[label] = state(adapter.model)
            entries = getattr(handle.responder, "entries", None)
            if editor.edited_group() is None and entries is None and not editor.side_memory:  # no edit at all (none)
                assert handle.stats["edit_images"] == 0
                return
            assert handle.stats["edit_images"] == 2
            if entries is not None:  # a memory editor: one entry per edit image
                assert [e.request.image for e in entries] == [red, second] and len(editor.memory) == 2
        assert changed(adapter.model, before) == set()
    if editor.edited_group() is not None or editor.side_memory:
        assert changed_between(after["red+blue"], after["red+red"])


def changed_between(a, b) -> set[str]:
    return {name for name in a if not torch.equal(a[name], b[name])}


@pytest.fixture(scope="module")
def tiny_llava15_adapter():
    name, model_name = MODELS[0]
    model, processor = registry.adapter_test_models(name)[model_name]()
    return registry.adapter_class(name)(model.eval(), processor)


@pytest.mark.parametrize("editor_name", ["mend", "ke"])
def test_mend_and_ke_multi_image_successive_makes_one_edit_per_image(editor_name, tiny_llava15_adapter, train_file):
    """multi_image=successive: K edits in order, the second from the gradient of the model the first
    edited; combined (default): one edit from both images' gradients."""
    adapter = tiny_llava15_adapter
    red, blue = Image.new("RGB", (48, 40), (230, 30, 30)), Image.new("RGB", (48, 40), (30, 30, 230))
    request = EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=red, extra_images=(blue,))
    weights = {}
    for mode in ("combined", "successive"):
        editor = fast_editor(editor_name, adapter, multi_image=mode)
        with editor.editing(adapter, request) as handle:
            weights[mode] = state(adapter.model)
            assert (handle.stats["edit_images"], handle.stats["multi_image"], handle.stats["updates"]) == (2, mode, 1 if mode == "combined" else 2)
        assert mode in editor.multi_image_rule()
    # by hand: successive = the red edit, then the blue edit computed on the red-edited model
    editor = fast_editor(editor_name, adapter)
    with editor.editing(adapter, EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=red)):
        with editor.editing(adapter, EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=blue)):
            by_hand = state(adapter.model)
    assert not changed_between(weights["successive"], by_hand)
    assert changed_between(weights["successive"], weights["combined"])
    with pytest.raises(Exception, match="multi_image must be one of"):
        fast_editor(editor_name, adapter, multi_image="mean")
