"""MiniGPT-4 assembled from transformers parts and loaded from the original checkpoint layout.

The tiny original files are written from a tiny random transformers BLIP-2 (its vision tower and
Q-Former in EVA/LAVIS names), so transformers' own BLIP-2 says what MiniGPT-4's image features
must be; a weight that lands in the wrong place changes them.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmke_eval.adapters.base import Query
from mmke_eval.adapters.minigpt4 import MiniGPT4Adapter
from mmke_eval.backends.minigpt4 import FILES, MiniGPT4, load_minigpt4
from mmke_eval.testing.tiny_vlms import NUM_QUERY_TOKENS, reference_blip2_for_minigpt4, write_tiny_minigpt4


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_minigpt4(tmp_path_factory.mktemp("minigpt4"))


@pytest.fixture(scope="module")
def loaded(folder):
    return load_minigpt4(str(folder))


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (40, 30), (220, 20, 20))


def test_image_features_are_transformers_blip2_features_through_llama_proj(loaded, image):
    model, processor = loaded
    blip2 = reference_blip2_for_minigpt4()
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        query_output = blip2.get_image_features(pixel_values=pixels, return_dict=True).qformer_outputs.last_hidden_state
        assert torch.allclose(model.image_features(pixels), model.llama_proj(query_output), atol=1e-6)
    proj = torch.load(folder_of(model) / FILES["proj"], weights_only=True)["model"]
    assert torch.equal(model.llama_proj.weight, proj["llama_proj.weight"])


def folder_of(model):
    from pathlib import Path

    return Path(model.config._name_or_path)


def test_prompt_wrap_and_answer_span_by_hand(loaded, image):
    model, processor = loaded
    adapter = MiniGPT4Adapter(model, processor)
    tok = processor.tokenizer
    plain = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt, target = "What is shown in the image?", "A red circle"
    ids = plain("###Human: <Img>") + [processor.image_token_id] * NUM_QUERY_TOKENS + plain("</Img> ") + plain(f"{prompt} {target}")
    n_prompt = len(ids) - len(plain(f"{prompt} {target}")) + len(plain(prompt))
    assert tok.bos_token_id not in ids  # the reference's MiniGPT-4 input has no BOS
    pixels = processor.image_processor([image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0]
    (result,) = adapter.teacher_forced([Query(prompt, image, target)], k=3)
    assert result.answer_ids == ids[n_prompt:] == plain(" " + target)[-len(ids[n_prompt:]):]
    assert torch.equal(result.topk, logits.topk(3, dim=-1).indices)
    assert result.answer_positions == slice(n_prompt - 1, len(ids) - 1)
    (text_only,) = adapter.teacher_forced([Query(prompt, None, target)], k=3)
    assert text_only.topk.shape[0] == len(plain(f"{prompt} {target}"))  # no wrap without an image


def test_parameter_groups(loaded):
    model, processor = loaded
    adapter = MiniGPT4Adapter(model, processor)
    named = set(dict(model.named_parameters()))
    assert set(adapter.parameter_group("llm_last_mlp")) == {f"language_model.model.layers.1.mlp.{m}.weight" for m in ("up_proj", "down_proj")}
    assert set(adapter.parameter_group("alignment")) == {n for n in named if n.startswith(("qformer.", "llama_proj.")) or n == "query_tokens"}


def test_unknown_or_missing_checkpoint_keys_are_errors(folder, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    lavis = torch.load(broken / FILES["qformer"], weights_only=True)
    lavis["model"]["Qformer.bert.encoder.layer.0.attention.self.qeury.weight"] = torch.zeros(1)
    torch.save(lavis, broken / FILES["qformer"])
    with pytest.raises(ValueError, match="no place in the model.*qeury"):
        load_minigpt4(str(broken))
    del lavis["model"]["Qformer.bert.encoder.layer.0.attention.self.qeury.weight"]
    del lavis["model"]["query_tokens"]
    torch.save(lavis, broken / FILES["qformer"])
    with pytest.raises(ValueError, match="no value for 1 weight.*query_tokens"):
        load_minigpt4(str(broken))
    (broken / FILES["proj"]).unlink()
    with pytest.raises(FileNotFoundError, match="pretrained_minigpt4_7b.pth"):
        load_minigpt4(str(broken))


def test_backend_shares_its_model_and_refuses_unknown_arguments(folder, loaded, image):
    backend = MiniGPT4(pretrained=str(folder), device="cpu")
    shared = MiniGPT4Adapter.from_lmms(backend)
    assert shared.model is backend.model
    q = Query("What is shown in the image?", image, "A red circle")
    assert torch.equal(shared.teacher_forced([q])[0].topk, MiniGPT4Adapter(*loaded).teacher_forced([q])[0].topk)
    with pytest.raises(ValueError, match="unknown model argument"):
        MiniGPT4(pretrained=str(folder), device="cpu", vicuna="x")
