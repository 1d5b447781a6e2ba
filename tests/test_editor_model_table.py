"""Every registered editor on every model family the adapter serves: one table, the same contract.

For each (editor, model): the edit changes exactly what the editor says it changes (weight editors:
their parameter group, and the edit example's loss falls; IKE and none: no weight), the edited
model can be probed, and restore leaves every weight bit-identical.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from editors.base import EditRequest
from mmke_eval import registry
from mmke_eval.adapters.base import Query
from mmke_eval.adapters.llava_hf import LlavaHFAdapter

PROMPT = "What is shown in the image?"
TARGET = "A red circle on a white background"
# Editor arguments for a tiny random model: a high lr learns the target in a few steps.
FAST = {
    "ft_llm": {"lr": 5e-2, "steps": 8},
    "ft_alignment": {"lr": 5e-2, "steps": 8},
    "ike": {"k": 2, "retriever": "lexical"},
    "none": {},
}
TRAIN_RECORDS = [
    {"src": "What is this building?", "rephrase": "Which building is this?", "pred": "a church", "alt": "a castle"},
    {"src": "What is shown in the image?", "rephrase": "What does the picture show?", "pred": "a square", "alt": "a star"},
    {"src": "Who painted this picture?", "rephrase": "Whose painting is this?", "pred": "Monet", "alt": "Turner"},
]


def llava_1_5(tiny_llava_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(tiny_llava_dir)


def llava_onevision(_):
    from mmke_eval.testing.tiny_llava import build_tiny_onevision

    model, processor = build_tiny_onevision()
    return model.eval(), processor


MODELS = {"llava-1.5": llava_1_5, "llava-onevision": llava_onevision}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_and_processor(request, tiny_llava_dir):
    return request.param, MODELS[request.param](tiny_llava_dir)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "entity_train.json"
    path.write_text(json.dumps(TRAIN_RECORDS))
    return path


def state(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def changed(model, before) -> set[str]:
    return {name for name, t in model.state_dict().items() if not torch.equal(t, before[name])}


@pytest.mark.parametrize("editor_name", sorted(registry.editor_names()))
def test_editor_contract_on_every_model(editor_name, model_and_processor, train_file):
    _, (model, processor) = model_and_processor
    adapter = LlavaHFAdapter(model, processor)
    editor = registry.build_editor(editor_name, family=adapter.family, overrides=FAST[editor_name])
    image = Image.new("RGB", (48, 40), (230, 30, 30))
    request = EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=image, train_file=str(train_file))
    edit_query = Query(PROMPT, image, TARGET)
    with torch.no_grad():
        loss_before = float(adapter.target_loss(edit_query))
    before = state(model)

    with editor.editing(adapter, request) as handle:
        touched = changed(model, before)
        if editor_name in ("ft_llm", "ft_alignment"):
            group = set(adapter.parameter_group(editor.config.target))
            assert touched and touched <= group and set(handle.touched) == group
            with torch.no_grad():
                assert float(adapter.target_loss(edit_query)) < loss_before
        else:
            assert touched == set()
        if editor_name == "ike":
            assert handle.prefix.index("a star") < handle.prefix.index(TARGET)  # the closest demonstration, then the fact
        probes = [Query(PROMPT, image, TARGET, handle.prefix), Query("Where does this person live?", None, "Paris", handle.prefix)]
        results = adapter.teacher_forced(probes, k=3)
        assert all(0.0 <= r.token_acc <= 1.0 for r in results)
        assert len(adapter.generate(probes, max_new_tokens=2)) == 2

    assert changed(model, before) == set()
