"""Qwen2-VL / Qwen2.5-VL adapter on tiny random models of the real classes, and the lmms-eval backends.

Expected inputs are the processor's own (chat template text through ``processor(...)``, which
expands the vision tokens and returns mm_token_type_ids and image_grid_thw) or a hand
tokenisation; without torchvision the processor is loaded by mmke_eval/backends/no_torchvision.py.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmke_eval.adapters.base import Query
from mmke_eval.adapters.qwen2_vl import QwenVLAdapter, reference_image, reference_image_size
from mmke_eval.testing.tiny_vlms import QWEN_PIXELS, build_tiny_qwen2_5_vl, build_tiny_qwen2_vl, save_tiny

BUILDERS = {"qwen2_vl": build_tiny_qwen2_vl, "qwen2_5_vl": build_tiny_qwen2_5_vl}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def loaded(request):
    return request.param, BUILDERS[request.param]()


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (60, 34), (220, 20, 20))


def test_chat_input_is_the_processors_and_the_answer_follows_the_generation_prompt(loaded, image):
    _, (model, processor) = loaded
    adapter = QwenVLAdapter(model, processor, image_loading="processor")  # the layout here; the loading below
    assert adapter.prompt_format == "chat"  # the reference's (EasyEdit) for these models
    prompt, target = "Where does this person live?", "Paris"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    full = processor(text=[text + target], images=[image], return_tensors="pt")
    short = processor(text=[text], images=[image], return_tensors="pt")
    n_prompt = short["input_ids"].shape[1]
    answer = full["input_ids"][0, n_prompt:].tolist()
    assert answer == processor.tokenizer(target, add_special_tokens=False)["input_ids"]  # after "\n": no space
    with torch.no_grad():
        logits = model(**full).logits[0]

    (result,) = adapter.teacher_forced([Query(prompt, image, target)], k=4)
    assert result.answer_ids == answer
    assert torch.equal(result.topk, logits.topk(4, dim=-1).indices)
    assert result.answer_positions == slice(n_prompt - 1, full["input_ids"].shape[1] - 1)
    assert result.predicted_ids == logits[n_prompt - 1 : -1].argmax(-1).tolist()


def test_reference_image_size_by_hand():
    # 34x60: sides round to 28x56 (1568 px), under 4 blocks of 28x28 (3136 px): both scaled by
    # sqrt(3136 / 2040) = 1.2399 and ceiled to multiples of 28: 42.2 -> 56, 74.4 -> 84.
    assert reference_image_size(34, 60) == (56, 84)
    assert reference_image_size(100, 200) == (112, 196)  # 3.57 -> 4 x 28, 7.14 -> 7 x 28; area in range
    # 5000x4000 (20 Mpx) over 16384 blocks (12.8 Mpx): scaled by 1/1.2478 and floored: 4007 -> 4004, 3205.6 -> 3192.
    assert reference_image_size(4000, 5000) == (3192, 4004)
    with pytest.raises(ValueError, match="aspect ratio"):
        reference_image_size(1, 300)


def test_reference_image_equals_qwen_vl_utils_fetch_image(monkeypatch):
    """Our resize against the package's own function. qwen_vl_utils imports torchvision at import
    time (absent here) but fetch_image uses only PIL: stand-in modules let it import."""
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("qwen_vl_utils") is None:
        pytest.skip("qwen-vl-utils is not installed")
    for name in ("torchvision", "torchvision.io", "torchvision.transforms"):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__version__ = "0.0"
            stub.io, stub.transforms, stub.InterpolationMode = stub, stub, None
            monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.delitem(sys.modules, "qwen_vl_utils.vision_process", raising=False)
    from qwen_vl_utils.vision_process import fetch_image

    rgba = Image.new("RGBA", (45, 70), (10, 200, 30, 128))
    for img in (Image.new("RGB", (60, 34), (220, 20, 20)), rgba, Image.new("RGB", (700, 300), (1, 2, 3))):
        ours, theirs = reference_image(img), fetch_image({"image": img})
        assert ours.size == theirs.size and ours.tobytes() == theirs.tobytes()


def test_reference_image_loading_is_the_default_and_changes_the_image_tokens(loaded, image):
    """EasyEdit (and lmms-eval's qwen2_vl) resize through qwen_vl_utils before the processor."""
    _, (model, processor) = loaded
    adapter, direct = QwenVLAdapter(model, processor), QwenVLAdapter(model, processor, image_loading="processor")
    assert adapter.image_loading == "reference" and adapter.describe()["image_loading"] == "reference"
    assert adapter.loaded_image(image).size == (84, 56)  # (width, height)
    # The tiny processor (8 px patches merged 2x2, 1024 to 4096 px) then resizes 56x84 to 48x64
    # (12 tokens) and 34x60 to 32x64 (8 tokens).
    assert adapter._image_inputs([Query("x", image)])[1] == [12]
    assert direct._image_inputs([Query("x", image)])[1] == [8]
    grid = processor.image_processor([reference_image(image)], return_tensors="pt")["image_grid_thw"][0]
    assert grid.tolist() == [1, 6, 8]
    with pytest.raises(ValueError, match="image_loading"):
        QwenVLAdapter(model, processor, image_loading="pil")


def test_raw_layout_wraps_the_image_tokens_in_vision_tokens(loaded, image):
    _, (model, processor) = loaded
    adapter = QwenVLAdapter(model, processor, prompt_format="raw", image_loading="processor")
    tok = processor.tokenizer
    grid = processor.image_processor([image], return_tensors="pt")["image_grid_thw"][0]
    n_image = int(grid.prod()) // 4  # 2x2 patches merged into one token
    assert n_image > 1
    prompt, target = "Where does this person live?", "Paris"
    ids = tok("<|vision_start|>", add_special_tokens=False)["input_ids"] + [adapter.image_token_id] * n_image \
        + tok("<|vision_end|>", add_special_tokens=False)["input_ids"] + tok(f"{prompt} {target}")["input_ids"]
    (result,) = adapter.teacher_forced([Query(prompt, image, target)], k=2)
    assert result.answer_ids == tok(" Paris", add_special_tokens=False)["input_ids"]  # the leading space, as OPT
    assert result.topk.shape[0] == len(ids)
    pixels = processor.image_processor([image], return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), mm_token_type_ids=(torch.tensor([ids]) == adapter.image_token_id).int(),
                       **pixels).logits[0]
    assert torch.equal(result.topk, logits.topk(2, dim=-1).indices)


def test_batches_of_differently_sized_images_equal_one_at_a_time(loaded):
    _, (model, processor) = loaded
    adapter = QwenVLAdapter(model, processor, batch_size=3)
    queries = [
        Query("What is shown in the image?", Image.new("RGB", (32, 64), (200, 0, 0)), "A red circle"),
        Query("Where does this person live?", None, "Paris"),
        Query("Who is it?", Image.new("RGB", (64, 64), (0, 0, 200)), "a dog", "New Fact: x y\nPrompt: "),
        Query("Who is it?", Image.new("RGB", (64, 64), (0, 0, 200)), "a dog"),
    ]
    batched = adapter.teacher_forced(queries, k=3)
    assert batched[0].topk.shape[0] != batched[3].topk.shape[0]  # image tokens follow the image's size
    assert batched[2].topk.shape == batched[3].topk.shape and batched[2].answer_positions == batched[3].answer_positions
    for q, got in zip(queries, batched):
        (alone,) = adapter.teacher_forced([q], k=3)
        assert torch.equal(got.topk, alone.topk) and got.answer_ids == alone.answer_ids
    assert adapter.generate(queries, max_new_tokens=3) == [adapter.generate([q], max_new_tokens=3)[0] for q in queries]


def test_parameter_groups(loaded):
    _, (model, processor) = loaded
    adapter = QwenVLAdapter(model, processor)
    named = set(dict(model.named_parameters()))
    assert set(adapter.parameter_group("llm_last_mlp")) == {f"model.language_model.layers.1.mlp.{m}.weight" for m in ("up_proj", "down_proj")}
    assert set(adapter.parameter_group("alignment")) == {n for n in named if n.startswith("model.visual.merger.")}
    assert set(adapter.parameter_group("vision")) == {n for n in named if n.startswith("model.visual.") and ".merger." not in n}


def test_the_lmms_eval_backend_loads_without_torchvision_and_shares_its_model(loaded, tmp_path, image):
    import importlib

    from transformers.utils import is_torchvision_available

    from mmke_eval.backends.no_torchvision import allow_image_only_processors

    name, (model, processor) = loaded
    folder = save_tiny(name, tmp_path / name)
    assert allow_image_only_processors() != is_torchvision_available()
    backend_module = importlib.import_module(f"lmms_eval.models.simple.{name}")
    backend_class = {"qwen2_vl": "Qwen2_VL", "qwen2_5_vl": "Qwen2_5_VL"}[name]
    lmms = getattr(backend_module, backend_class)(pretrained=str(folder), device="cpu", device_map="cpu", **QWEN_PIXELS)
    shared = QwenVLAdapter.from_lmms(lmms)
    assert shared.model is lmms.model and shared.processor is lmms.processor
    lmms.model.float()  # qwen2_5_vl loads bfloat16 whatever the checkpoint
    # The processor loaded without a video processor builds exactly the inputs of the one built in memory.
    for key, value in processor.image_processor([image], return_tensors="pt").items():
        assert torch.equal(value, lmms.processor.image_processor([image], return_tensors="pt")[key])
    q = Query("What is shown in the image?", image, "A red circle")
    assert shared._encode(q, 4).ids == QwenVLAdapter(model, processor)._encode(q, 4).ids
    assert torch.equal(shared.teacher_forced([q])[0].topk, QwenVLAdapter(lmms.model, processor).teacher_forced([q])[0].topk)
