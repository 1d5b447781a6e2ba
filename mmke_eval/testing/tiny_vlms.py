"""Tiny random vision-language models of the real transformers classes, built offline.

One builder per model the adapters serve (OneVision's is in ``tiny_llava``). Each
returns ``(model, processor)`` in memory; ``save_tiny(name, folder)`` writes a folder that the
lmms-eval backend of that model loads like a Hub checkpoint, where its processor can be saved.
Everything is seeded, and the tokenizers are byte-level BPEs trained on a fixed corpus (the same
leading-space behaviour as GPT-2/OPT and Qwen: " Paris" and "Paris" are different tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable
from unittest import mock

import torch

from mmke_eval.testing.tiny_llava import IMAGE_SIZE, MAX_POSITIONS, PATCH_SIZE, SEED, _corpus, build_tiny_onevision

VOCAB_SIZE = 1000
NUM_QUERY_TOKENS = 4  # BLIP-2 / InstructBLIP / MiniGPT-4 use 32; 4 keeps the tiny models tiny
HIDDEN = 64


def bpe_tokenizer(specials: list[str], bos: str | None, eos: str, pad: str, unk: str | None = None, extra: list[str] = (), add_bos: bool = True, cls=None):
    """A byte-level BPE (``specials`` first in the vocabulary), adding ``bos`` in front when ``add_bos``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=list(specials) + list(extra),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if bos is not None and add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    kwargs = {"bos_token": bos} if bos is not None else {}
    return (cls or PreTrainedTokenizerFast)(
        tokenizer_object=tok, eos_token=eos, pad_token=pad, unk_token=unk, additional_special_tokens=list(extra),
        model_input_names=["input_ids", "attention_mask"], padding_side="right", model_max_length=MAX_POSITIONS, **kwargs,
    )


def _seeded(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    # Seed locally so that building a fixture leaves the caller's RNG state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build().eval()


def _without_video_processor(build: Callable[[], object]) -> object:
    """Build a processor whose class insists on a video processor (which needs torchvision) without one.

    Such a processor handles images, all the adapters need, but cannot be saved.
    """
    from transformers import ProcessorMixin

    strict = ProcessorMixin.check_argument_for_proper_class

    def allow_no_video(self, name, argument):
        return None if (name == "video_processor" and argument is None) else strict(self, name, argument)

    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", allow_no_video):
        return build()


# -- BLIP-2 OPT ----------------------------------------------------------------------------------
def opt_tokenizer():
    """OPT's conventions: "</s>" is BOS and EOS and is put in front of every text; "<pad>" pads."""
    return bpe_tokenizer(["<s>", "<pad>", "</s>", "<unk>"], bos="</s>", eos="</s>", pad="<pad>", unk="<unk>", extra=["<image>"])


def _blip_vision_and_qformer():
    from transformers import Blip2QFormerConfig, Blip2VisionConfig

    vision = Blip2VisionConfig(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    qformer = Blip2QFormerConfig(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                 encoder_hidden_size=HIDDEN)
    return vision, qformer


def blip_image_processor():
    from transformers import BlipImageProcessor

    # BLIP-2's preprocessing: resize to a square, CLIP mean/std (the PIL backend without torchvision)
    return BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                              image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])


def build_tiny_blip2():
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, OPTConfig

    tokenizer = opt_tokenizer()
    processor = Blip2Processor(image_processor=blip_image_processor(), tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    vision, qformer = _blip_vision_and_qformer()
    text = OPTConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                     word_embed_proj_dim=HIDDEN, max_position_embeddings=MAX_POSITIONS, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                         num_query_tokens=NUM_QUERY_TOKENS, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    model = _seeded(lambda: Blip2ForConditionalGeneration(config))
    return model, processor


# -- LLaVA-1.5 (the same model tiny_llava.build_tiny_llava writes) ---------------------------------
def build_tiny_llava15():
    from transformers import LlavaForConditionalGeneration

    from mmke_eval.testing.tiny_llava import build_config, build_processor, build_tokenizer

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = _seeded(lambda: LlavaForConditionalGeneration(build_config(tokenizer)))
    return model, processor


# -- Qwen2-VL / Qwen2.5-VL -----------------------------------------------------------------------
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL's template in shape: a default system turn, ChatML turns, the image wrapped in vision tokens.
QWEN_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# 8 px patches merged 2x2; 32x32 to 64x64 pixels: 4 to 16 image tokens, by the image's shape.
QWEN_PIXELS = {"min_pixels": 32 * 32, "max_pixels": 64 * 64}


def qwen_tokenizer():
    """Qwen's conventions: no BOS, "<|endoftext|>" pads, "<|im_end|>" ends a turn."""
    return bpe_tokenizer(QWEN_SPECIALS[:1], bos=None, eos="<|im_end|>", pad="<|endoftext|>", extra=QWEN_SPECIALS[1:])


def qwen_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(patch_size=PATCH_SIZE, merge_size=2, temporal_patch_size=2, **QWEN_PIXELS)


def qwen_processor(processor_class, chat_template: str = QWEN_CHAT_TEMPLATE, image_processor=None):
    tokenizer = qwen_tokenizer()
    image_processor = image_processor or qwen_image_processor()
    return _without_video_processor(lambda: processor_class(image_processor=image_processor, tokenizer=tokenizer,
                                                            video_processor=None, chat_template=chat_template))


def _qwen_text_config(tokenizer) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS, bos_token_id=None,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})


def _qwen_token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def build_tiny_qwen2_vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    processor = qwen_processor(Qwen2VLProcessor)
    tokenizer = processor.tokenizer
    vision = dict(depth=2, embed_dim=HIDDEN, hidden_size=HIDDEN, num_heads=4, mlp_ratio=2, patch_size=PATCH_SIZE,
                  spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=_qwen_text_config(tokenizer), vision_config=vision, tie_word_embeddings=False,
                           **_qwen_token_ids(tokenizer))
    return _seeded(lambda: Qwen2VLForConditionalGeneration(config)), processor


def build_tiny_qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    processor = qwen_processor(Qwen2_5_VLProcessor)
    tokenizer = processor.tokenizer
    # window attention over 2x2 merged patches (window_size in pixels), full attention in the last block
    vision = dict(depth=2, hidden_size=HIDDEN, out_hidden_size=HIDDEN, intermediate_size=128, num_heads=4,
                  patch_size=PATCH_SIZE, spatial_merge_size=2, temporal_patch_size=2, window_size=32,
                  fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=_qwen_text_config(tokenizer), vision_config=vision, tie_word_embeddings=False,
                              **_qwen_token_ids(tokenizer))
    return _seeded(lambda: Qwen2_5_VLForConditionalGeneration(config)), processor


# -- Qwen3-VL -------------------------------------------------------------------------------------
# Qwen3-VL-Instruct's template in shape: unlike Qwen2-VL's, no default system turn.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen3_vl():
    """Qwen3-VL: the vision tower's position embeddings are learned (a 4x4 grid here, interpolated
    to the image's), its first block also feeds the language model's first layer (DeepStack, a
    second patch merger), and the language model's M-RoPE sections are interleaved."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # Qwen3-VL's normalisation (mean and std 0.5), Qwen2-VL's resize with the tiny patches.
    image_processor = Qwen2VLImageProcessorPil(patch_size=PATCH_SIZE, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                                               image_std=[0.5] * 3, **QWEN_PIXELS)
    processor = qwen_processor(Qwen3VLProcessor, QWEN3_CHAT_TEMPLATE, image_processor)
    tokenizer = processor.tokenizer
    vision = dict(depth=2, hidden_size=HIDDEN, intermediate_size=128, num_heads=4, patch_size=PATCH_SIZE, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=HIDDEN, num_position_embeddings=16, deepstack_visual_indexes=[0])
    text = {**_qwen_text_config(tokenizer), "head_dim": HIDDEN // 4,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}}
    config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_qwen_token_ids(tokenizer))
    return _seeded(lambda: Qwen3VLForConditionalGeneration(config)), processor


# -- InstructBLIP (Vicuna) -----------------------------------------------------------------------
def wordpiece_tokenizer():
    """A BERT-style uncased WordPiece tokenizer ([CLS] text [SEP]), the Q-Former's instruction tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(_corpus(), trainer=trainers.WordPieceTrainer(vocab_size=500, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"])


def build_tiny_instructblip():
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor, LlamaConfig

    from mmke_eval.testing.tiny_llava import build_tokenizer

    tokenizer = build_tokenizer()  # LLaMA conventions (BOS "<s>"), with "<image>"
    qformer_tokenizer = wordpiece_tokenizer()
    processor = InstructBlipProcessor(image_processor=blip_image_processor(), tokenizer=tokenizer,
                                      qformer_tokenizer=qformer_tokenizer, num_query_tokens=NUM_QUERY_TOKENS)
    vision, qformer = _blip_vision_and_qformer()
    qformer = {**qformer.to_dict(), "vocab_size": len(qformer_tokenizer), "pad_token_id": qformer_tokenizer.pad_token_id}
    qformer.pop("model_type", None)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=176, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_POSITIONS,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config = InstructBlipConfig(vision_config=vision.to_dict(), qformer_config=qformer, text_config=text.to_dict(),
                                num_query_tokens=NUM_QUERY_TOKENS, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    return _seeded(lambda: InstructBlipForConditionalGeneration(config)), processor


# -- LLaVA-NeXT -----------------------------------------------------------------------------------
def build_tiny_llava_next():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from mmke_eval.testing.tiny_llava import CHAT_TEMPLATE, build_tokenizer

    tokenizer = build_tokenizer()
    pinpoints = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE], [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]]
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=CHAT_TEMPLATE)
    vision = CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=HIDDEN)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=176, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_POSITIONS,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                             vision_feature_layer=-2, vision_feature_select_strategy="default",
                             image_grid_pinpoints=pinpoints, tie_word_embeddings=False)
    return _seeded(lambda: LlavaNextForConditionalGeneration(config)), processor


# -- MiniGPT-4, as the original checkpoint files --------------------------------------------------
def original_vision_qformer_files(blip2, folder: Path) -> tuple[Path, Path]:
    """Write a BLIP-2's vision tower and Q-Former as the original files MiniGPT-4 loads: an EVA
    ViT-g state dict (``eva_vit_g.pth``; EVA has no key bias, so it must be zero) and a LAVIS BLIP-2
    checkpoint (``{"model": ...}``: ln_vision, query_tokens, Qformer.bert.*), each with parts that
    MiniGPT-4 drops (an extra ViT block, the Q-Former's text branch, BLIP-2's T5 projection)."""
    import re

    vit, lavis = {}, {}
    hidden = blip2.config.vision_config.hidden_size
    for name, value in blip2.state_dict().items():
        value = value.clone()
        if name.startswith("vision_model."):
            key = name[len("vision_model."):]
            if key.endswith("self_attn.qkv.bias"):
                block = re.search(r"layers\.(\d+)\.", key).group(1)
                if value[hidden : 2 * hidden].abs().max() != 0:
                    raise ValueError("EVA ViT-g has no key bias: zero it before writing")
                vit[f"blocks.{block}.attn.q_bias"], vit[f"blocks.{block}.attn.v_bias"] = value[:hidden], value[2 * hidden:]
                continue
            if key.startswith("post_layernorm."):
                lavis["ln_vision." + key.split(".")[-1]] = value
                continue
            key = (key.replace("embeddings.class_embedding", "cls_token").replace("embeddings.position_embedding", "pos_embed")
                   .replace("embeddings.patch_embedding", "patch_embed.proj").replace("encoder.layers.", "blocks.")
                   .replace("layer_norm1", "norm1").replace("layer_norm2", "norm2").replace("self_attn.qkv", "attn.qkv")
                   .replace("self_attn.projection", "attn.proj"))
            vit[key] = value
        elif name.startswith("qformer."):
            key = name[len("qformer."):]
            key = "bert.embeddings.LayerNorm." + key.split(".")[-1] if key.startswith("layernorm.") else "bert." + key
            lavis["Qformer." + key.replace("attention.attention.", "attention.self.")] = value
        elif name == "query_tokens":
            lavis[name] = value
    layers = blip2.config.vision_config.num_hidden_layers
    vit.update({k.replace("blocks.0.", f"blocks.{layers}."): torch.randn_like(v) for k, v in vit.items() if k.startswith("blocks.0.")})
    q_hidden = blip2.config.qformer_config.hidden_size
    lavis.update({"Qformer.cls.predictions.bias": torch.zeros(10), "Qformer.bert.embeddings.word_embeddings.weight": torch.zeros(10, q_hidden),
                  "Qformer.bert.encoder.layer.0.intermediate.dense.weight": torch.zeros(4, q_hidden), "t5_proj.weight": torch.zeros(4, q_hidden)})
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(vit, folder / "eva_vit_g.pth")
    torch.save({"model": lavis}, folder / "blip2_pretrained_flant5xxl.pth")
    return folder / "eva_vit_g.pth", folder / "blip2_pretrained_flant5xxl.pth"


def write_tiny_minigpt4(folder: Path) -> Path:
    """A folder laid out as MiniGPT-4's released files (vicuna/, eva_vit_g.pth,
    blip2_pretrained_flant5xxl.pth, pretrained_minigpt4_7b.pth) plus minigpt4_sizes.json, from a
    tiny random BLIP-2's vision side and a tiny LLaMA; ``--model minigpt4`` loads it."""
    import json

    from transformers import LlamaConfig, LlamaForCausalLM

    from mmke_eval.backends.minigpt4 import FILES, SIZES_FILE
    from mmke_eval.testing.tiny_llava import build_tokenizer

    folder = Path(folder)
    blip2 = reference_blip2_for_minigpt4()
    original_vision_qformer_files(blip2, folder)
    tokenizer = build_tokenizer()
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=176, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=MAX_POSITIONS,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    llm = _seeded(lambda: LlamaForCausalLM(text))
    llm.save_pretrained(folder / FILES["llm"])
    tokenizer.save_pretrained(folder / FILES["llm"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 1)
        proj = torch.nn.Linear(blip2.config.qformer_config.hidden_size, HIDDEN)
    torch.save({"model": {"llama_proj.weight": proj.weight.detach(), "llama_proj.bias": proj.bias.detach()}}, folder / FILES["proj"])
    vision, qformer = _blip_vision_and_qformer()
    (folder / SIZES_FILE).write_text(json.dumps({
        "vision": {k: getattr(vision, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size")},
        "qformer": {k: getattr(qformer, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")},
        "num_query_tokens": NUM_QUERY_TOKENS, "image_size": IMAGE_SIZE}))
    return folder


def reference_blip2_for_minigpt4():
    """The tiny BLIP-2 whose vision side the tiny MiniGPT-4 carries: EVA's zero key bias, and LAVIS's
    ln_vision eps (1e-5), so that transformers' BLIP-2 computes the features MiniGPT-4 should."""
    model, _ = build_tiny_blip2()
    hidden = model.config.vision_config.hidden_size
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.qkv.bias[hidden : 2 * hidden] = 0
    model.vision_model.post_layernorm.eps = 1e-5
    return model


def build_tiny_minigpt4():
    import tempfile

    from mmke_eval.backends.minigpt4 import load_minigpt4

    folder = write_tiny_minigpt4(Path(tempfile.mkdtemp(prefix="tiny_minigpt4_")))
    return load_minigpt4(str(folder))


def _save_without_video_processor(processor, folder: Path) -> None:
    """What save_pretrained writes for these processors, less the video processor it cannot save."""
    import json

    import inspect

    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    # The processor's own settings (OneVision: num_image_tokens, vision_aspect_ratio, ...).
    skip = {"self", "image_processor", "tokenizer", "video_processor", "chat_template", "kwargs"}
    settings = {name: getattr(processor, name) for name in inspect.signature(type(processor).__init__).parameters
                if name not in skip and hasattr(processor, name)}
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": type(processor).__name__, **settings}))
    (folder / "chat_template.jinja").write_text(processor.chat_template)


TINY_BUILDERS: dict[str, Callable[[], tuple]] = {
    "llava": build_tiny_llava15,
    "llava_next": build_tiny_llava_next,
    "llava_onevision": build_tiny_onevision,
    "blip2": build_tiny_blip2,
    "instructblip": build_tiny_instructblip,
    "minigpt4": build_tiny_minigpt4,
    "qwen2_vl": build_tiny_qwen2_vl,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "qwen3_vl": build_tiny_qwen3_vl,
}


def save_tiny(name: str, folder: Path) -> Path:
    """Write tiny model ``name`` and its processor to ``folder`` (a from_pretrained folder); return it."""
    if name == "minigpt4":  # no transformers class: the original files
        return write_tiny_minigpt4(folder)
    model, processor = TINY_BUILDERS[name]()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = processor.tokenizer
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    if getattr(processor, "video_processor", "absent") is None:
        _save_without_video_processor(processor, folder)
    else:
        processor.save_pretrained(folder)
    return folder


