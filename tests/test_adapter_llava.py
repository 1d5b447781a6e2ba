"""LlavaHFAdapter on a tiny random LLaVA: spans, positions, batching, parameter groups.

Expected values are recomputed by hand from the tokenizer and one plain model forward, so a
wrong slice in the adapter shows up as a mismatch, not as a tautology.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmke_eval.adapters.base import Query
from mmke_eval.adapters.hf_vlm import ParameterGroupError, cut
from mmke_eval.adapters.llava_hf import LlavaHFAdapter

PROMPTS = [
    "What is shown in the image?",
    "Where does this person live?",
    "Who is the person in the picture?",
    "What does this person like to eat?",
    "Which country does this flag belong to?",
    "The quick brown fox jumps over the",
    "The mountain is covered with",
]


@pytest.fixture(scope="module")
def loaded(tiny_llava_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(tiny_llava_dir)


@pytest.fixture(scope="module")
def adapter(loaded):
    return LlavaHFAdapter(*loaded)


@pytest.fixture(scope="module")
def images():
    return Image.new("RGB", (40, 30), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))


def n_image_tokens(adapter) -> int:
    config = adapter.model.config.vision_config
    return (config.image_size // config.patch_size) ** 2  # "default" strategy drops CLS


def hand_ids(adapter, text: str, image: bool) -> list[int]:
    """The raw protocol by hand: tokenizer ids with BOS, image tokens right after BOS."""
    ids = adapter.tokenizer(text)["input_ids"]
    assert ids[0] == adapter.tokenizer.bos_token_id
    return ids[:1] + [adapter.image_token_id] * n_image_tokens(adapter) * image + ids[1:]


def hand_logits(adapter, ids: list[int], image=None) -> torch.Tensor:
    inputs = {}
    if image is not None:
        pixels = adapter.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        inputs["pixel_values"] = pixels
    with torch.no_grad():
        return adapter.model(input_ids=torch.tensor([ids]), **inputs).logits[0]


def word_token(adapter, token_id: int) -> str | None:
    """The word if ``token_id`` is a whole word with a leading space (so " " + word maps back to it)."""
    text = adapter.tokenizer.decode([token_id])
    return text[1:] if text.startswith(" ") and text[1:].isalpha() else None


def test_answer_span_and_token_acc_match_hand_computation(adapter):
    # Build a target whose first word is the model's own greedy token, so the accuracy is not a trivial 0.
    for prompt in PROMPTS:
        ids = hand_ids(adapter, prompt, image=False)
        first = int(hand_logits(adapter, ids)[-1].argmax())
        word = word_token(adapter, first)
        if word:
            break
    else:
        pytest.fail("no prompt whose greedy next token is a plain word; change PROMPTS")
    target = f"{word} red circle"
    full = hand_ids(adapter, f"{prompt} {target}", image=False)
    n_prompt = len(ids)
    assert full[:n_prompt] == ids
    answer = full[n_prompt:]
    logits = hand_logits(adapter, full)
    predicted = logits[n_prompt - 1 : len(full) - 1].argmax(-1).tolist()
    expected_acc = sum(p == a for p, a in zip(predicted, answer)) / len(answer)

    (result,) = adapter.teacher_forced([Query(prompt, None, target)], k=3)
    assert result.answer_ids == answer and answer[0] == first
    assert result.predicted_ids == predicted
    assert result.token_acc == pytest.approx(expected_acc)
    assert 0 < result.token_acc  # the first answer token is the greedy one
    assert result.answer_positions == slice(n_prompt - 1, len(full) - 1)
    assert torch.equal(result.topk, logits.topk(3, dim=-1).indices)


def test_image_query_topk_shape_and_rows(adapter, images):
    q = Query("What is shown in the image?", images[0], "A red circle")
    ids = hand_ids(adapter, f"{q.prompt} {q.target}", image=True)
    (result,) = adapter.teacher_forced([q], k=5)
    assert result.topk.shape == (len(ids), 5)
    assert result.topk.dtype == torch.long and result.topk.device.type == "cpu"
    assert torch.equal(result.topk, hand_logits(adapter, ids, images[0]).topk(5, dim=-1).indices)
    n_answer = len(ids) - len(hand_ids(adapter, q.prompt, image=True))
    assert result.answer_positions == slice(len(ids) - 1 - n_answer, len(ids) - 1)


def test_text_without_target_has_empty_answer(adapter):
    (result,) = adapter.teacher_forced([Query("Where does this person live?")], k=2)
    assert result.answer_ids == [] and result.token_acc != result.token_acc  # nan
    n = result.topk.shape[0]
    assert result.answer_positions == slice(n, n)


def test_prefix_positions_are_excluded(adapter, images):
    prefix = "New Fact: The dog is red.\nPrompt: "
    plain = Query("Who is the person in the picture?", images[1], "a famous painter")
    edited = Query(plain.prompt, plain.image, plain.target, prefix)
    before, after = adapter.teacher_forced([plain, edited], k=4)
    assert after.topk.shape == before.topk.shape
    assert after.answer_positions == before.answer_positions
    assert after.answer_ids == before.answer_ids

    # By hand: the prefixed input, minus its prefix block (BOS and image tokens stay in front).
    full = hand_ids(adapter, f"{prefix}{plain.prompt} {plain.target}", image=True)
    n_no_prefix = len(hand_ids(adapter, f"{plain.prompt} {plain.target}", image=True))
    head = 1 + n_image_tokens(adapter)
    kept = list(range(head)) + list(range(len(full) - (n_no_prefix - head), len(full)))
    logits = hand_logits(adapter, full, images[1])
    assert torch.equal(after.topk, logits[kept].topk(4, dim=-1).indices)
    # The prefix really changes the scores at the kept positions (the test could fail).
    assert not torch.equal(after.topk[head:], before.topk[head:])


def test_answer_span_falls_back_to_common_prefix(adapter, monkeypatch):
    # A tokenizer that merges the last prompt token with the target (SentencePiece-style quirk).
    fake = {("Q", "A"): [1, 5, 6, 9, 10], ("Q", ""): [1, 5, 6, 7]}
    monkeypatch.setattr(adapter, "_text_ids", lambda body, target, has_image: fake[(body, target)])
    enc = adapter._encode(Query("Q", None, "A"), 0)
    assert enc.ids[enc.answer_start :] == [9, 10]


def test_mixed_batch_equals_one_at_a_time(loaded, images):
    adapter = LlavaHFAdapter(*loaded, batch_size=3)
    queries = [
        Query("What is shown in the image?", images[0], "A red circle"),
        Query("Where does this person live?", None, "She lives in Paris"),
        Query("Who is the person in the picture?", images[1], "a painter", "New Fact: x y\nPrompt: "),
        Query("The quick brown fox jumps over the", None, "lazy dog"),
        Query("What does this person like to eat?", images[1], "apples"),
        Query("The mountain is covered with", None, "snow", "New Fact: The dog is red.\nPrompt: "),
    ]
    batched = adapter.teacher_forced(queries, k=4)
    for q, got in zip(queries, batched):
        (alone,) = adapter.teacher_forced([q], k=4)
        assert torch.equal(got.topk, alone.topk)
        assert (got.answer_ids, got.predicted_ids, got.answer_positions) == (alone.answer_ids, alone.predicted_ids, alone.answer_positions)
        assert got.token_acc == alone.token_acc
    generated = adapter.generate(queries, max_new_tokens=4)
    assert generated == [adapter.generate([q], max_new_tokens=4)[0] for q in queries]


def test_target_loss_is_the_mean_answer_nll(adapter, images):
    q = Query("What is shown in the image?", images[0], "A red circle")
    ids = hand_ids(adapter, f"{q.prompt} {q.target}", image=True)
    n_prompt = len(hand_ids(adapter, q.prompt, image=True))
    logits = hand_logits(adapter, ids, images[0])
    expected = torch.nn.functional.cross_entropy(logits[n_prompt - 1 : -1], torch.tensor(ids[n_prompt:]))
    with torch.no_grad():  # the adapter turns gradients back on itself
        loss = adapter.target_loss(q)
    assert loss.requires_grad
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_parameter_groups(adapter):
    model = adapter.model
    last = model.config.text_config.num_hidden_layers - 1
    mlp = adapter.parameter_group("llm_last_mlp")
    assert set(mlp) == {f"model.language_model.layers.{last}.mlp.{m}.weight" for m in ("up_proj", "down_proj")}
    named = dict(model.named_parameters())
    assert all(mlp[n] is named[n] for n in mlp)  # the live tensors, not copies
    projector = adapter.parameter_group("alignment")
    assert set(projector) == {n for n in named if n.startswith("model.multi_modal_projector.")}
    vision = adapter.parameter_group("vision")
    assert set(vision) == {n for n in named if n.startswith("model.vision_tower.")}
    with pytest.raises(ValueError, match="unknown parameter group"):
        adapter.parameter_group("qformer")
    # last_k: the MLPs of the last k language-model layers
    both = adapter.parameter_group("llm_last_mlp", last_k=2)
    assert set(both) == {f"model.language_model.layers.{i}.mlp.{m}.weight" for i in (last - 1, last) for m in ("up_proj", "down_proj")}


def test_a_missing_module_name_is_an_error_never_a_fallback(loaded, monkeypatch):
    adapter = LlavaHFAdapter(*loaded)
    # A model whose MLP has no down_proj (e.g. another naming): the group must not shrink to up_proj
    # alone, nor grow to "all weights" as the old lookup did.
    groups = {**LlavaHFAdapter.parameter_groups, "llm_last_mlp": LlavaHFAdapter.parameter_groups["llm_last_mlp"][:1] + (r"layers\.{last}\.mlp\.w2\.weight$",)}
    monkeypatch.setattr(adapter, "parameter_groups", groups)
    with pytest.raises(ParameterGroupError, match=r"LlavaForConditionalGeneration: pattern .*w2.* matches no parameter"):
        adapter.parameter_group("llm_last_mlp")


def test_chat_format_uses_the_template(loaded, images):
    adapter = LlavaHFAdapter(*loaded, prompt_format="chat")
    q = Query("What is shown in the image?", images[0], "A red circle")
    (result,) = adapter.teacher_forced([q], k=2)
    enc = adapter._encode(q, n_image_tokens(adapter))
    text = adapter.tokenizer.decode(enc.ids)
    assert text.startswith("<s>USER: <image>") and "ASSISTANT: A red circle" in text
    assert adapter.tokenizer.decode(result.answer_ids) == " A red circle"
    assert adapter.describe()["prompt_format"] == "chat"
    with pytest.raises(ValueError, match="prompt_format"):
        LlavaHFAdapter(*loaded, prompt_format="vicuna")


def test_cut_at_first_stop_string():
    assert cut(" Paris. Then\n\nmore", ["\n\n", "."]) == "Paris"
    assert cut("  no stop  ", []) == "no stop"


def test_from_lmms_shares_the_model(tiny_llava_dir, adapter, images):
    from lmms_eval.models.simple.llava_hf import LlavaHf

    # device_map="" (the backend's default) is rejected by transformers 5.x's from_pretrained.
    lmms = LlavaHf(pretrained=str(tiny_llava_dir), device="cpu", dtype="float32", device_map="cpu")
    shared = LlavaHFAdapter.from_lmms(lmms, prompt_format="raw")
    assert shared.model is lmms.model and shared.processor is lmms._image_processor
    assert lmms.tokenizer.padding_side == "left"  # lmms-eval's setting; the adapter pads by hand
    queries = [Query("What is shown in the image?", images[0], "A red circle"), Query("Where?", None, "Paris")]
    for mine, theirs in zip(adapter.teacher_forced(queries, k=3), shared.teacher_forced(queries, k=3)):
        assert torch.equal(mine.topk, theirs.topk) and mine.answer_ids == theirs.answer_ids
    with pytest.raises(ValueError, match="unknown option"):
        LlavaHFAdapter.from_lmms(lmms, prompt_fromat="raw")


def test_onevision_image_sizes_batches_and_groups():
    from mmke_eval.testing.tiny_llava import build_tiny_onevision

    model, processor = build_tiny_onevision()
    adapter = LlavaHFAdapter(model, processor, batch_size=4)
    tall, wide = Image.new("RGB", (40, 64), (200, 0, 0)), Image.new("RGB", (64, 30), (0, 0, 200))
    queries = [
        Query("What is shown in the image?", tall, "A red circle"),
        Query("Where does this person live?", None, "Paris"),
        Query("Who is it?", wide, "a dog", "New Fact: x y\nPrompt: "),
        Query("Who is it?", wide, "a dog"),
    ]
    batched = adapter.teacher_forced(queries, k=3)
    # anyres: the number of image tokens depends on the image's shape.
    assert batched[0].topk.shape[0] != batched[3].topk.shape[0]
    assert batched[2].topk.shape == batched[3].topk.shape and batched[2].answer_positions == batched[3].answer_positions
    for q, got in zip(queries, batched):
        (alone,) = adapter.teacher_forced([q], k=3)
        assert torch.equal(got.topk, alone.topk) and got.answer_ids == alone.answer_ids
    assert adapter.generate(queries[:3], max_new_tokens=3) == [adapter.generate([q], max_new_tokens=3)[0] for q in queries[:3]]
    names = set(dict(model.named_parameters()))
    assert set(adapter.parameter_group("llm_last_mlp")) == {f"model.language_model.layers.1.mlp.{m}.weight" for m in ("up_proj", "down_proj")}
    assert set(adapter.parameter_group("alignment")) == {n for n in names if n.startswith("model.multi_modal_projector.")}


def test_tiny_llava_build_is_deterministic(tiny_llava_dir, tmp_path):
    from mmke_eval.testing.tiny_llava import build_tiny_llava

    rebuilt = build_tiny_llava(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (rebuilt / name).read_bytes() == (tiny_llava_dir / name).read_bytes(), name


def test_llava_next_anyres_batches_equal_one_at_a_time():
    from mmke_eval.testing.tiny_vlms import build_tiny_llava_next

    model, processor = build_tiny_llava_next()
    adapter = LlavaHFAdapter(model, processor, batch_size=3, prompt_format="raw")  # the hand expansion below is raw
    tall, wide = Image.new("RGB", (40, 64), (200, 0, 0)), Image.new("RGB", (64, 30), (0, 0, 200))
    queries = [Query("What is shown in the image?", tall, "A red circle"), Query("Where?", None, "Paris"),
               Query("Who is it?", wide, "a dog", "New Fact: x y\nPrompt: "), Query("Who is it?", wide, "a dog")]
    batched = adapter.teacher_forced(queries, k=3)
    assert batched[0].topk.shape[0] != batched[3].topk.shape[0]  # anyres: tokens follow the image's shape
    # By hand: the processor's own expansion of one image placeholder after BOS.
    out = processor(text=["<image>What is shown in the image? A red circle"], images=[tall], return_tensors="pt")
    assert batched[0].topk.shape[0] == out["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**out).logits[0]
    assert torch.equal(batched[0].topk, logits.topk(3, dim=-1).indices)
    for q, got in zip(queries, batched):
        (alone,) = adapter.teacher_forced([q], k=3)
        assert torch.equal(got.topk, alone.topk) and got.answer_ids == alone.answer_ids


@pytest.mark.parametrize("base", ["llava", "llava_onevision"])
def test_original_llava_backends_fail_before_loading_with_the_line_to_use(base, monkeypatch):
    from mmke_eval.adapters.original_llava import BackendUnavailable
    from mmke_eval.lmms.model import EditedLMM

    loaded = []
    monkeypatch.setattr("lmms_eval.models.get_model", lambda *a, **k: loaded.append(a))
    with pytest.raises(BackendUnavailable, match=r"transformers 4\.36\.2.*use --model llava_hf --model_args pretrained=llava-hf/"):
        EditedLMM(base=base, pretrained="liuhaotian/llava-v1.5-7b")
    assert loaded == []  # no backend was built, no weights were read


# -- prefix reuse (mmke_eval/adapters/prefix_cache.py) ----------------------------------------
DEMONSTRATIONS = "".join(
    f"New Fact: The {thing} is {colour}.\nPrompt: What colour is the {thing}? {colour}\n\n"
    for thing, colour in [("dog", "red"), ("car", "blue"), ("house", "green"), ("bird", "yellow"),
                          ("boat", "white"), ("tree", "brown"), ("lamp", "black"), ("cup", "grey")]
) + "New Fact: The fox is purple.\nPrompt: "


def test_prefix_reuse_gives_the_plain_results_and_computes_each_prefix_once(adapter):
    # Two images of one size: the same token ids, other pixels, so an entry must not cross them.
    red, blue = Image.new("RGB", (64, 64), (220, 20, 20)), Image.new("RGB", (64, 64), (20, 20, 220))
    queries = [Query(prompt, image, target, DEMONSTRATIONS)
               for image in (None, red, blue)
               for prompt, target in [("What colour is the fox?", "purple"), ("Which colour has the fox?", "purple fur")]]
    queries.append(Query("What colour is the fox?", red, "purple"))  # no prefix: the plain path
    plain_tf = adapter.teacher_forced(queries, k=5)
    plain_gen = adapter.generate(queries, max_new_tokens=6)

    lengths = []  # input length of every model call inside the block
    hook = adapter.model.register_forward_pre_hook(lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        with adapter.reusing_prefixes():
            assert adapter.prefix_cache is not None
            reused_tf = adapter.teacher_forced(queries, k=5)
            reused_gen = adapter.generate(queries, max_new_tokens=6)
            made, served = adapter.prefix_cache.made, adapter.prefix_cache.reused
    finally:
        hook.remove()
    assert adapter.prefix_cache is None  # nothing outlives the block

    for plain, reused in zip(plain_tf, reused_tf):
        assert reused.answer_ids == plain.answer_ids and reused.predicted_ids == plain.predicted_ids
        assert reused.token_acc == plain.token_acc and reused.answer_positions == plain.answer_positions
        assert torch.equal(reused.topk, plain.topk)
    assert reused_gen == plain_gen
    # One entry per image (none, red, blue), serving all 6 prefixed rows of both calls.
    assert made == 3 and served == 12
    n_prefix = len(adapter.tokenizer(DEMONSTRATIONS)["input_ids"])
    assert n_prefix > 64
    # Only the three entries ran the prefix; every other call ran a row's own tokens (or the
    # short plain row, and generation steps).
    assert n_image_tokens(adapter) + 12 < n_prefix - 8, "make DEMONSTRATIONS longer"
    assert sorted(lengths)[-4:-3][0] < n_prefix - 8 <= sorted(lengths)[-3], lengths


def test_prefix_reuse_is_off_outside_the_block_and_for_short_prefixes(adapter, monkeypatch):
    made = []
    monkeypatch.setattr(type(adapter), "_reusable_entry", lambda self, *a: made.append(1))
    adapter.teacher_forced([Query("What colour is the fox?", None, "purple", DEMONSTRATIONS)], k=3)
    assert made == []  # outside reusing_prefixes(): the batched path
    monkeypatch.undo()
    with adapter.reusing_prefixes():
        adapter.teacher_forced([Query("What colour is the fox?", None, "purple", "New Fact: short.\nPrompt: ")], k=3)
        assert adapter.prefix_cache.made == 0  # too short to be worth an entry: plain path


def test_prefix_reuse_can_be_turned_off_and_says_so(loaded):
    from mmke_eval.options import OptionError

    off = LlavaHFAdapter(*loaded, prefix_reuse="false")
    with off.reusing_prefixes():
        assert off.prefix_cache is None
    assert off.describe()["prefix_reuse"] == "off"
    assert LlavaHFAdapter(*loaded).describe()["prefix_reuse"] != "off"
    with pytest.raises(OptionError, match="adapter.prefix_reuse='maybe'"):
        LlavaHFAdapter(*loaded, prefix_reuse="maybe")


@pytest.mark.parametrize("prompt_format", ["raw", "chat"])
@pytest.mark.parametrize("builder", ["tiny_llava.build_tiny_onevision", "tiny_vlms.build_tiny_llava_next"])
def test_prefix_reuse_on_the_anyres_llava_models(builder, prompt_format):
    import importlib

    module, name = builder.split(".")
    model, processor = getattr(importlib.import_module(f"mmke_eval.testing.{module}"), name)()
    adapter = LlavaHFAdapter(model, processor, batch_size=3, prompt_format=prompt_format)
    tall, wide = Image.new("RGB", (40, 64), (200, 0, 0)), Image.new("RGB", (64, 30), (0, 0, 200))
    queries = [Query(prompt, image, "purple", DEMONSTRATIONS) for image in (tall, wide, None)
               for prompt in ("What colour is the fox?", "Which colour has the fox?")]
    plain_tf, plain_gen = adapter.teacher_forced(queries, k=3), adapter.generate(queries, max_new_tokens=4)
    with adapter.reusing_prefixes():
        reused_tf, reused_gen = adapter.teacher_forced(queries, k=3), adapter.generate(queries, max_new_tokens=4)
        # One per image (anyres: each its own token count). In the chat layout a text-only query's
        # prefix boundary can shift by a token with the prompt (the template's "USER: " merges
        # with it), so the text-only pair may make one more: slower, never different numbers.
        assert adapter.prefix_cache.made == 3 if prompt_format == "raw" else 3 <= adapter.prefix_cache.made <= 4
    assert reused_gen == plain_gen
    for plain, reused in zip(plain_tf, reused_tf):
        assert torch.equal(reused.topk, plain.topk) and reused.predicted_ids == plain.predicted_ids


def test_onevision_and_next_default_to_the_chat_layout_llava15_to_raw(loaded):
    """EasyEdit (the reference that reports OneVision) always builds OneVision's inputs with the
    processor's chat template, image then text in the user turn, the generation prompt, then the
    target; VLKEB/MMKE-Bench's LLaVA-1.5 has no template (docs/models.md)."""
    from mmke_eval.testing.tiny_llava import build_tiny_onevision
    from mmke_eval.testing.tiny_vlms import build_tiny_llava_next

    model, processor = build_tiny_onevision()
    adapter = LlavaHFAdapter(model, processor)
    assert adapter.prompt_format == "chat" and adapter.describe()["prompt_format"] == "chat"
    image = Image.new("RGB", (40, 64), (200, 0, 0))
    prompt, target = "What is shown in the image?", "A red circle"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = text + (target if text[-1:].isspace() else " " + target)
    full = processor(text=[full_text], images=[image], return_tensors="pt")
    short = processor(text=[text], images=[image], return_tensors="pt")
    (result,) = adapter.teacher_forced([Query(prompt, image, target)], k=3)
    n_prompt = short["input_ids"].shape[1]
    assert result.answer_ids == full["input_ids"][0, n_prompt:].tolist()
    with torch.no_grad():
        logits = model(**full).logits[0]
    assert torch.equal(result.topk, logits.topk(3, dim=-1).indices)
    assert LlavaHFAdapter(model, processor, prompt_format="raw").prompt_format == "raw"  # the option keeps raw
    assert LlavaHFAdapter(*build_tiny_llava_next()).prompt_format == "chat"
    assert LlavaHFAdapter(*loaded).prompt_format == "raw"  # LLaVA-1.5: VLKEB/MMKE-Bench's layout
@pytest.mark.parametrize("target, name, held_by", [
    ("A Snowy Owl perched on a branch.", "Snowy Owl", " Snowy Owl"),  # a name inside a caption
    ("Snowy Owl", "Snowy Owl", " Snowy Owl"),  # the whole target
    ("Two Snowy Owls sit.", "Snowy Owl", " Snowy Owl"),  # inside a longer word: up to its last character's token
])
def test_answer_span_holds_the_tokens_of_a_name_inside_the_target(adapter, images, target, name, held_by):
    """MIKE's entity match scores the answer tokens that hold the entity name (mmke_eval/engine/evaluator.py)."""
    query = Query("Describe the picture.", images[0], target)
    start = target.index(name)
    span = adapter.answer_span(query, start, start + len(name))
    answer = adapter.answer_ids(query)
    assert answer == adapter.teacher_forced([query], k=1)[0].answer_ids
    assert adapter.tokenizer.decode(answer[span]) == held_by
    assert adapter.tokenizer.decode(answer[: span.start]) + adapter.tokenizer.decode(answer[span]) + \
        adapter.tokenizer.decode(answer[span.stop:]) == adapter.tokenizer.decode(answer)
