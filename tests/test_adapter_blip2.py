"""BLIP-2 OPT adapter and the blip2_hf backend on a tiny random BLIP-2 (real transformers classes).

Expected values are built by hand from the tokenizer and one plain model call, as the reference
lays out BLIP-2 inputs: query embeddings first, then the text without BOS.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmke_eval.adapters.base import Query
from mmke_eval.adapters.blip2 import Blip2Adapter
from mmke_eval.testing.tiny_vlms import NUM_QUERY_TOKENS, build_tiny_blip2, save_tiny


@pytest.fixture(scope="module")
def adapter():
    return Blip2Adapter(*build_tiny_blip2())


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (40, 30), (220, 20, 20))


def test_answer_tokens_carry_opts_leading_space(adapter, image):
    tok = adapter.tokenizer
    prompt, target = "Where does this person live?", "Paris"
    # The reference labels tok("Paris") (no space); the model sees "... live? Paris", i.e. " Paris".
    assert tok("Paris", add_special_tokens=False)["input_ids"] != tok(" Paris", add_special_tokens=False)["input_ids"]
    text_ids = tok(f"{prompt} {target}", add_special_tokens=False)["input_ids"]
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert text_ids[: len(prompt_ids)] == prompt_ids and tok.bos_token_id not in text_ids
    answer = text_ids[len(prompt_ids):]
    assert answer == tok(" Paris", add_special_tokens=False)["input_ids"]

    image_token = adapter.model.config.image_token_id
    ids = [image_token] * NUM_QUERY_TOKENS + text_ids  # query embeddings first, no BOS
    pixels = adapter.processor.image_processor([image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = adapter.model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0]
    start = NUM_QUERY_TOKENS + len(prompt_ids)
    predicted = logits[start - 1 : len(ids) - 1].argmax(-1).tolist()

    (result,) = adapter.teacher_forced([Query(prompt, image, target)], k=4)
    assert result.answer_ids == answer
    assert result.predicted_ids == predicted
    assert result.answer_positions == slice(start - 1, len(ids) - 1)
    assert torch.equal(result.topk, logits.topk(4, dim=-1).indices)  # the query positions are included
    assert result.token_acc == sum(p == a for p, a in zip(predicted, answer)) / len(answer)


def test_text_only_queries_go_to_the_language_model_alone(adapter):
    tok = adapter.tokenizer
    ids = tok("Where does this person live? Paris", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = adapter.model.language_model(input_ids=torch.tensor([ids])).logits[0]
    (result,) = adapter.teacher_forced([Query("Where does this person live?", None, "Paris")], k=2)
    assert torch.equal(result.topk, logits.topk(2, dim=-1).indices)
    with torch.no_grad():
        loss = adapter.target_loss(Query("Where does this person live?", None, "Paris"))
    n = len(tok("Where does this person live?", add_special_tokens=False)["input_ids"])
    expected = torch.nn.functional.cross_entropy(logits[n - 1 : -1], torch.tensor(ids[n:]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_batches_equal_one_at_a_time(image):
    adapter = Blip2Adapter(*build_tiny_blip2(), batch_size=3)
    queries = [
        Query("What is shown in the image?", image, "A red circle"),
        Query("Where does this person live?", None, "She lives in Paris"),
        Query("Who is it?", Image.new("RGB", (64, 64), (0, 0, 200)), "a painter", "New Fact: x y\nPrompt: "),
        Query("The mountain is covered with", None, "snow", "New Fact: The dog is red.\nPrompt: "),
    ]
    for q, got in zip(queries, adapter.teacher_forced(queries, k=3)):
        (alone,) = adapter.teacher_forced([q], k=3)
        assert torch.equal(got.topk, alone.topk) and got.answer_ids == alone.answer_ids
    assert adapter.generate(queries, max_new_tokens=3) == [adapter.generate([q], max_new_tokens=3)[0] for q in queries]


def test_parameter_groups_are_the_reference_modules(adapter):
    named = set(dict(adapter.model.named_parameters()))
    last = adapter.model.config.text_config.num_hidden_layers - 1
    assert set(adapter.parameter_group("llm_last_mlp")) == {
        f"language_model.model.decoder.layers.{last}.{m}.weight" for m in ("fc1", "fc2")}
    assert set(adapter.parameter_group("alignment")) == {
        n for n in named if n.startswith(("qformer.", "language_projection.")) or n == "query_tokens"}
    assert set(adapter.parameter_group("vision")) == {n for n in named if n.startswith("vision_model.")}
    with pytest.raises(ValueError, match="prompt_format"):
        Blip2Adapter(adapter.model, adapter.processor, prompt_format="chat")  # no chat template


def test_blip2_hf_backend_loads_a_folder_and_shares_its_model(tmp_path, image):
    from mmke_eval.backends.blip2_hf import Blip2HF
    from mmke_eval.options import OptionError

    folder = save_tiny("blip2", tmp_path / "blip2")
    backend = Blip2HF(pretrained=str(folder), device="cpu", dtype="float32")
    shared = Blip2Adapter.from_lmms(backend)
    assert shared.model is backend.model and shared.processor is backend.processor
    fresh = Blip2Adapter(*build_tiny_blip2())
    q = Query("What is shown in the image?", image, "A red circle")
    assert torch.equal(shared.teacher_forced([q])[0].topk, fresh.teacher_forced([q])[0].topk)
    with pytest.raises(ValueError, match="unknown model argument"):
        Blip2HF(pretrained=str(folder), device="cpu", dtpye="float32")
    with pytest.raises(OptionError, match="dtype='half'"):
        Blip2HF(pretrained=str(folder), device="cpu", dtype="half")


def test_instructblip_layout_and_qformer_instruction(tmp_path, image):
    """Query embeddings, then BOS and the text (transformers' layout); the Q-Former reads the
    instruction without the answer. lmms-eval's instructblip backend shares its model."""
    from lmms_eval.models.simple.instructblip import InstructBLIP

    from mmke_eval.adapters.blip2 import InstructBlipAdapter
    from mmke_eval.testing.tiny_vlms import build_tiny_instructblip

    model, processor = build_tiny_instructblip()
    adapter = InstructBlipAdapter(model, processor)
    prompt, target = "What is shown in the image?", "A red circle"
    with_answer = processor(images=[image], text=[f"{prompt} {target}"], return_tensors="pt")
    instruction = processor(images=[image], text=[prompt], return_tensors="pt")
    ids = with_answer["input_ids"][0].tolist()
    assert ids[: NUM_QUERY_TOKENS + 1] == [model.config.image_token_id] * NUM_QUERY_TOKENS + [processor.tokenizer.bos_token_id]
    n_prompt = instruction["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(input_ids=with_answer["input_ids"], pixel_values=with_answer["pixel_values"],
                       qformer_input_ids=instruction["qformer_input_ids"],
                       qformer_attention_mask=instruction["qformer_attention_mask"]).logits[0]
    (result,) = adapter.teacher_forced([Query(prompt, image, target)], k=3)
    assert result.answer_ids == ids[n_prompt:]
    assert torch.equal(result.topk, logits.topk(3, dim=-1).indices)
    assert set(adapter.parameter_group("alignment")) == {
        n for n, _ in model.named_parameters() if n.startswith(("qformer.", "language_projection.")) or n == "query_tokens"}

    model.save_pretrained(tmp_path / "ib")
    processor.save_pretrained(tmp_path / "ib")
    lmms = InstructBLIP(pretrained=str(tmp_path / "ib"), device="cpu")
    shared = InstructBlipAdapter.from_lmms(lmms)
    assert shared.model is lmms.model and shared.processor is lmms._image_processor
    assert torch.equal(shared.teacher_forced([Query(prompt, image, target)], k=3)[0].topk, result.topk)


def test_encoder_decoder_language_models_are_refused():
    from transformers import Blip2Config, Blip2ForConditionalGeneration, T5Config

    from mmke_eval.testing.tiny_vlms import _blip_vision_and_qformer, opt_tokenizer

    vision, qformer = _blip_vision_and_qformer()
    t5 = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    model = Blip2ForConditionalGeneration(Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                                                      text_config=t5.to_dict(), num_query_tokens=2))
    with pytest.raises(ValueError, match="encoder-decoder language model"):
        Blip2Adapter(model, build_tiny_blip2()[1])
