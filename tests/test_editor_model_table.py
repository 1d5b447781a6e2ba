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
from mmke_eval.data.mmke import load_cases
from mmke_eval.direct import score_cases
from mmke_eval.protocol import Protocol

PROMPT = "What is shown in the image?"
TARGET = "A red circle on a white background"
# Fast settings for a tiny random model, by config field (an editor gets those its config has):
# a high lr learns the target in a few steps; two lexically retrieved demonstrations.
# Learned editors run their networks as initialised (a gradient step of edit_lr).
FAST = {"lr": 5e-2, "steps": 3, "k": 2, "retriever": "lexical", "checkpoint": "untrained", "edit_lr": 1e-2}
TRAIN_RECORDS = [
    {"src": "What is this building?", "rephrase": "Which building is this?", "pred": "a church", "alt": "a castle"},
    {"src": "What is shown in the image?", "rephrase": "What does the picture show?", "pred": "a square", "alt": "a star"},
    {"src": "Who painted this picture?", "rephrase": "Whose painting is this?", "pred": "Monet", "alt": "Turner"},
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
    return {name for name, t in model.state_dict().items() if not torch.equal(t, before[name])}


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

    with editor.editing(adapter, request) as handle:
        in_context = bool(handle.prefix)
        answers_elsewhere = handle.responder is not None  # another model answers some queries (SERAC)
        touched = changed(model, before)
        group = editor.edited_group()
        if group is None:
            assert touched == set() and handle.touched == ()
        else:
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
    if editor.edited_group() is None and not in_context and not answers_elsewhere:  # the unedited model agrees with itself
        assert scores["t_loc"] == 100.0 and scores["i_loc"] == 100.0
