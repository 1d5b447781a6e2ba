"""Qwen3-VL adapter on a tiny random Qwen3VLForConditionalGeneration, and lmms-eval's qwen3_vl backend.

Expected inputs are the processor's own (the chat template's text through ``processor(...)``,
which expands the vision tokens and returns mm_token_type_ids and image_grid_thw); without
torchvision the backend's processor loads through mmke_eval/backends/no_torchvision.py.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmke_eval import registry
from mmke_eval.adapters.base import Query
from mmke_eval.adapters.qwen2_vl import reference_image
from mmke_eval.adapters.qwen3_vl import Qwen3VLAdapter
from mmke_eval.testing.tiny_vlms import QWEN_PIXELS, build_tiny_qwen2_vl, build_tiny_qwen3_vl, save_tiny


@pytest.fixture(scope="module")
def loaded():
    return build_tiny_qwen3_vl()


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (60, 34), (220, 20, 20))


def test_registered_as_the_qwen3_vl_backend_with_its_own_family(loaded):
    assert registry.adapter_class("qwen3_vl") is Qwen3VLAdapter
    assert "build_tiny_qwen3_vl" in registry.adapter_test_models("qwen3_vl")
    model, processor = loaded
    adapter = Qwen3VLAdapter(model, processor)
    assert adapter.family == "qwen3_vl" and adapter.describe()["family"] == "qwen3_vl"
    assert adapter.describe()["image_loading"] == "reference"


def test_chat_input_is_the_processors_and_the_answer_follows_the_generation_prompt(loaded, image):
    model, processor = loaded
    adapter = Qwen3VLAdapter(model, processor, image_loading="processor")  # the layout here; the loading below
    assert adapter.prompt_format == "chat"  # EasyEdit's for Qwen-VL models
    prompt, target = "Where does this person live?", "Paris"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # Qwen3-VL's template: no default system turn (Qwen2-VL's has one).
    assert text == f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
    full = processor(text=[text + target], images=[image], return_tensors="pt")
    short = processor(text=[text], images=[image], return_tensors="pt")
    n_prompt = short["input_ids"].shape[1]
    answer = full["input_ids"][0, n_prompt:].tolist()
    assert answer == processor.tokenizer(target, add_special_tokens=False)["input_ids"]  # after "\n": no space
    with torch.no_grad():
        logits = model(**full).logits[0]

    enc = adapter.encoded(Query(prompt, image, target))
    assert enc.ids == full["input_ids"][0].tolist()
    (result,) = adapter.teacher_forced([Query(prompt, image, target)], k=4)
    assert result.answer_ids == answer
    assert torch.equal(result.topk, logits.topk(4, dim=-1).indices)
    assert result.answer_positions == slice(n_prompt - 1, full["input_ids"].shape[1] - 1)
    assert result.predicted_ids == logits[n_prompt - 1 : -1].argmax(-1).tolist()
    # Greedy generation continues the processor's input.
    with torch.no_grad():
        expected = model.generate(**short, max_new_tokens=3, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    assert adapter.generate([Query(prompt, image)], max_new_tokens=3) == \
        [processor.tokenizer.decode(expected[0, n_prompt:], skip_special_tokens=True).strip()]


def test_image_tokens_expand_by_the_grid_after_the_reference_resize(loaded, image):
    """EasyEdit loads every Qwen-VL image through qwen_vl_utils.fetch_image's defaults (28-pixel
    multiples): 60x34 -> 84x56; the tiny processor (8 px patches merged 2x2, 1024 to 4096 px)
    then makes it 64x48: a 6x8 patch grid, 12 image tokens. Straight to the processor, 60x34
    becomes 64x32: a 4x8 grid, 8 tokens."""
    model, processor = loaded
    adapter, direct = Qwen3VLAdapter(model, processor), Qwen3VLAdapter(model, processor, image_loading="processor")
    assert adapter.loaded_image(image).size == (84, 56)
    grid = processor.image_processor([reference_image(image)], return_tensors="pt")["image_grid_thw"][0]
    assert grid.tolist() == [1, 6, 8]
    q = Query("Who is it?", image, "a dog")
    tok = processor.tokenizer.convert_tokens_to_ids
    for a, n in ((adapter, 12), (direct, 8)):
        ids = a.encoded(q).ids
        start = ids.index(tok("<|vision_start|>"))
        assert ids[start + 1 : start + 1 + n] == [a.image_token_id] * n and ids[start + 1 + n] == tok("<|vision_end|>")
        assert ids.count(a.image_token_id) == n


def test_batches_of_differently_sized_images_equal_one_at_a_time(loaded):
    model, processor = loaded
    adapter = Qwen3VLAdapter(model, processor, batch_size=3)
    queries = [
        Query("What is shown in the image?", Image.new("RGB", (32, 64), (200, 0, 0)), "A red circle"),
        Query("Where does this person live?", None, "Paris"),
        Query("Who is it?", Image.new("RGB", (64, 64), (0, 0, 200)), "a dog", "New Fact: x y\nPrompt: "),
        Query("Who is it?", Image.new("RGB", (64, 64), (0, 0, 200)), "a dog"),
    ]
    batched = adapter.teacher_forced(queries, k=3)
    assert batched[0].topk.shape[0] != batched[3].topk.shape[0]  # image tokens follow the image's size
    for q, got in zip(queries, batched):
        (alone,) = adapter.teacher_forced([q], k=3)
        assert torch.equal(got.topk, alone.topk) and got.answer_ids == alone.answer_ids
        assert got.answer_positions == alone.answer_positions
    assert adapter.generate(queries, max_new_tokens=3) == [adapter.generate([q], max_new_tokens=3)[0] for q in queries]


def test_parameter_groups_put_the_deepstack_mergers_in_alignment(loaded):
    model, processor = loaded
    adapter = Qwen3VLAdapter(model, processor)
    named = set(dict(model.named_parameters()))
    assert set(adapter.parameter_group("llm_last_mlp")) == {f"model.language_model.layers.1.mlp.{m}.weight" for m in ("up_proj", "down_proj")}
    mergers = {n for n in named if n.startswith(("model.visual.merger.", "model.visual.deepstack_merger_list."))}
    assert any(".deepstack_merger_list.0." in n for n in mergers)
    assert set(adapter.parameter_group("alignment")) == mergers
    assert set(adapter.parameter_group("vision")) == {n for n in named if n.startswith("model.visual.")} - mergers


def test_other_models_are_refused_with_their_class():
    model, processor = build_tiny_qwen2_vl()
    with pytest.raises(ValueError, match="qwen3_vl adapter: serves Qwen3VLForConditionalGeneration .*not Qwen2VLForConditionalGeneration"):
        Qwen3VLAdapter(model, processor)


def test_the_lmms_eval_backend_loads_without_torchvision_and_shares_its_model(loaded, tmp_path, image):
    from lmms_eval.models.simple.qwen3_vl import Qwen3_VL

    from mmke_eval.backends.no_torchvision import image_only_processors

    model, processor = loaded
    folder = save_tiny("qwen3_vl", tmp_path / "qwen3_vl")
    with image_only_processors():
        lmms = Qwen3_VL(pretrained=str(folder), device="cpu", device_map="cpu", **QWEN_PIXELS)
    shared = registry.adapter_class("qwen3_vl").from_lmms(lmms)
    assert shared.model is lmms.model and shared.processor is lmms.processor
    lmms.model.float()  # the backend loads bfloat16 whatever the checkpoint
    for key, value in processor.image_processor([image], return_tensors="pt").items():
        assert torch.equal(value, lmms.processor.image_processor([image], return_tensors="pt")[key])
    q = Query("What is shown in the image?", image, "A red circle")
    assert shared.encoded(q).ids == Qwen3VLAdapter(model, processor).encoded(q).ids
    # The same (bfloat16-rounded) weights through the processor built in memory: the same scores.
    assert torch.equal(shared.teacher_forced([q])[0].topk, Qwen3VLAdapter(lmms.model, processor).teacher_forced([q])[0].topk)
