"""MiniGPT-4 (Vicuna-7B) assembled from transformers parts, and ``--model minigpt4`` for lmms-eval.

transformers has no MiniGPT-4 class. The model is BLIP-2's frozen vision side (EVA ViT-g and its
``ln_vision``, the Q-Former and its 32 query tokens) feeding a linear projection (``llama_proj``)
into a Vicuna (LLaMA) language model. Here: ``Blip2VisionModel`` (its ``post_layernorm`` is
``ln_vision``), ``Blip2QFormerModel``, ``nn.Linear`` and ``LlamaForCausalLM``.

Weights come from the original checkpoint files, mapped name by name (``_VIT_RULES``,
``_QFORMER_RULES``), in the original load order: the EVA ViT-g file, then the BLIP-2 Q-Former
checkpoint (which may also hold ``visual_encoder.*`` and ``ln_vision.*``; later files win, as
LAVIS loads them with ``strict=False``), then the MiniGPT-4 checkpoint's ``llama_proj``. A key
that maps to nothing and is not on the list of parts MiniGPT-4 drops (the Q-Former's text branch,
the T5 projection, EVA's 40th block) is an error, and so is a weight of the model that no file
provides: a silently random weight would give wrong numbers, never a crash.

    lmms-eval --model minigpt4 --model_args pretrained=/models/minigpt4,device=cuda
    # /models/minigpt4 holds vicuna/ (Vicuna-7B v0 in transformers format, with its tokenizer),
    # eva_vit_g.pth, blip2_pretrained_flant5xxl.pth and pretrained_minigpt4_7b.pth;
    # or name each: llm=...,vit=...,qformer=...,proj=...

A folder may hold ``minigpt4_sizes.json`` for a model of other sizes than the released one
(``{"vision": {...}, "qformer": {...}, "num_query_tokens": N, "image_size": N}``, Blip2VisionConfig
and Blip2QFormerConfig fields); the tests' tiny MiniGPT-4 uses it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmke_eval.adapters.minigpt4 import MiniGPT4Adapter
from mmke_eval.backends.base import AdapterBackend, parse_dtype

IMAGE_TOKEN = "<ImageHere>"
SIZES_FILE = "minigpt4_sizes.json"
FILES = {
    "llm": "vicuna",
    "vit": "eva_vit_g.pth",
    "qformer": "blip2_pretrained_flant5xxl.pth",
    "proj": "pretrained_minigpt4_7b.pth",
}
# BLIP-2's image preprocessing (Blip2ImageEvalProcessor): a bicubic resize to a square, CLIP mean/std.
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

# (original name pattern, our name) for the EVA ViT-g file (no prefix) and visual_encoder.* keys.
_VIT_RULES = [
    (r"cls_token", "vision_model.embeddings.class_embedding"),
    (r"pos_embed", "vision_model.embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
]
# q_bias and v_bias: EVA keeps the key bias at zero; transformers holds one qkv bias.
_QKV_BIAS = re.compile(r"blocks\.(\d+)\.attn\.(q|v)_bias")
_QFORMER_RULES = [
    (r"ln_vision\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (r"query_tokens", "query_tokens"),
    (r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", r"qformer.layernorm.\1"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.attention.\3.\4"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.output.\3.\4"),
    (r"Qformer\.bert\.encoder\.layer\.(\d+)\.(intermediate_query|output_query)\.(dense|LayerNorm)\.(weight|bias)",
     r"qformer.encoder.layer.\1.\2.\3.\4"),
    (r"llama_proj\.(weight|bias)", r"llama_proj.\1"),
]
# What MiniGPT-4 drops from these files: the Q-Former's text branch (word and position embeddings,
# the text FFN, the LM head), the T5/OPT projections of BLIP-2, EVA's head/norm.
_DROPPED = re.compile(
    r"Qformer\.(cls\.|bert\.embeddings\.(word_embeddings|position_embeddings|position_ids)"
    r"|bert\.encoder\.layer\.\d+\.(intermediate|output)\.)|(t5|opt)_(proj|model)\.|^(norm|head|fc_norm|lm_head)\.|^rel_pos_bias"
)


@dataclass
class MiniGPT4Config:
    vision_config: Any
    qformer_config: Any
    text_config: Any
    num_query_tokens: int = 32
    image_token_id: int = -1
    _name_or_path: str = ""
    extra: dict = field(default_factory=dict)


class MiniGPT4ForConditionalGeneration(nn.Module):
    """Vision (EVA ViT-g + ln_vision) -> Q-Former -> llama_proj -> LLaMA, on transformers modules.

    ``forward``/``generate`` take ``input_ids`` holding ``num_query_tokens`` placeholder ids where
    the projected query embeddings go (the placeholder id lies beyond the vocabulary and is never
    embedded), ``attention_mask`` and ``pixel_values``.
    """

    def __init__(self, config: MiniGPT4Config):
        from transformers import Blip2QFormerModel, Blip2VisionModel, LlamaForCausalLM

        super().__init__()
        self.config = config
        self.vision_model = Blip2VisionModel(config.vision_config)
        # LAVIS's ln_vision is a torch LayerNorm with the default eps, not the ViT's 1e-6.
        self.vision_model.post_layernorm.eps = 1e-5
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(config.qformer_config)
        self.llama_proj = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        self.language_model = LlamaForCausalLM(config.text_config)

    @property
    def dtype(self) -> torch.dtype:
        return self.llama_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.llama_proj.weight.device

    def get_input_embeddings(self) -> nn.Module:
        """The language model's token embeddings (the transformers API; SERAC's scope classifier starts from them)."""
        return self.language_model.get_input_embeddings()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = self.vision_model(pixel_values=pixel_values).last_hidden_state
        mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        queries = self.query_tokens.expand(image.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=image, encoder_attention_mask=mask).last_hidden_state
        return self.llama_proj(out)

    def _embeds(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        placeholder = input_ids == self.config.image_token_id
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(placeholder, 0))
        if pixel_values is None:
            if placeholder.any():
                raise ValueError("MiniGPT-4: image placeholders without pixel_values")
            return embeds
        features = self.image_features(pixel_values).to(embeds.dtype)
        if int(placeholder.sum()) != features.shape[0] * features.shape[1]:
            raise ValueError(f"MiniGPT-4: {int(placeholder.sum())} image placeholders for {features.shape[0]} image(s) "
                             f"of {features.shape[1]} query embeddings")
        return embeds.masked_scatter(placeholder.unsqueeze(-1), features)

    def forward(self, input_ids, attention_mask=None, pixel_values=None, **kwargs):
        return self.language_model(inputs_embeds=self._embeds(input_ids, pixel_values), attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, pixel_values=None, **kwargs):
        """Returns the input ids followed by the new ones, as transformers' generate does."""
        embeds = self._embeds(input_ids, pixel_values)
        return self.language_model.generate(input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


class MiniGPT4Processor:
    """The tokenizer (with the image placeholder token) and BLIP-2's image preprocessing."""

    def __init__(self, tokenizer, image_processor):
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token = IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, target in rules:
        if re.fullmatch(pattern, key):
            return re.sub(f"^{pattern}$", target, key)
    return None


def map_original_state_dict(original: dict[str, torch.Tensor], source: str, num_vision_layers: int) -> dict[str, torch.Tensor]:
    """Our names for the weights of one original file; raises on a key it does not know."""
    mapped: dict[str, torch.Tensor] = {}
    biases: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in original.items():
        vit_key = key[len("visual_encoder."):] if key.startswith("visual_encoder.") else (key if source == "vit" else None)
        if vit_key is not None:
            block = re.match(r"blocks\.(\d+)\.", vit_key)
            if block and int(block.group(1)) >= num_vision_layers:
                continue  # EVA ViT-g has 40 blocks; BLIP-2 uses the output of the 39th
            if (bias := _QKV_BIAS.fullmatch(vit_key)) is not None:
                biases.setdefault(bias.group(1), {})[bias.group(2)] = value
                continue
            name = _rename(vit_key, _VIT_RULES)
        else:
            name = _rename(key, _QFORMER_RULES)
        if name is not None:
            mapped[name] = value
        elif not _DROPPED.search(vit_key if vit_key is not None else key):
            unknown.append(key)
    if unknown:
        raise ValueError(f"MiniGPT-4 {source} checkpoint: {len(unknown)} key(s) with no place in the model, e.g. {unknown[:5]}")
    for layer, parts in biases.items():
        if set(parts) != {"q", "v"}:
            raise ValueError(f"MiniGPT-4 {source} checkpoint: block {layer} has {sorted(parts)} bias but not both q and v")
        q, v = parts["q"], parts["v"]
        mapped[f"vision_model.encoder.layers.{layer}.self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return mapped


def _torch_file(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state) if isinstance(state, dict) else state


def build_config(text_config, image_token_id: int, image_size: int = 224, vision: dict | None = None, qformer: dict | None = None,
                 num_query_tokens: int = 32, name_or_path: str = "") -> MiniGPT4Config:
    """MiniGPT-4's sizes: EVA ViT-g as BLIP-2 uses it (39 blocks of 1408, patch 14) and BLIP-2's
    Q-Former (BERT-base, cross-attention every 2nd layer); ``vision``/``qformer`` override (tests)."""
    from transformers import Blip2QFormerConfig, Blip2VisionConfig

    vision_config = Blip2VisionConfig(**{"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39,
                                         "num_attention_heads": 16, "image_size": image_size, "patch_size": 14,
                                         "layer_norm_eps": 1e-6, "qkv_bias": True, **(vision or {})})
    qformer_config = Blip2QFormerConfig(**{"encoder_hidden_size": vision_config.hidden_size, **(qformer or {})})
    return MiniGPT4Config(vision_config, qformer_config, text_config, num_query_tokens, image_token_id, name_or_path)


def load_minigpt4(pretrained: str | None = None, llm: str | None = None, vit: str | None = None, qformer: str | None = None,
                  proj: str | None = None, dtype: torch.dtype = torch.float32, image_size: int = 224,
                  vision: dict | None = None, qformer_sizes: dict | None = None, num_query_tokens: int = 32):
    """(model, processor) from the original files; see the module docstring for the layout."""
    from transformers import AutoConfig, AutoTokenizer, BlipImageProcessor, LlamaForCausalLM

    given = {"llm": llm, "vit": vit, "qformer": qformer, "proj": proj}
    paths = {}
    for part, default in FILES.items():
        if given[part]:
            paths[part] = Path(given[part]).expanduser()
        elif pretrained:
            paths[part] = Path(pretrained).expanduser() / default
        else:
            raise ValueError(f"minigpt4: give pretrained=FOLDER (holding {', '.join(FILES.values())}) or {part}=PATH")
        if not paths[part].exists():
            raise FileNotFoundError(f"minigpt4: {part} = {paths[part]} does not exist (expected {FILES[part]}; docs/models.md)")

    sizes_file = Path(pretrained).expanduser() / SIZES_FILE if pretrained else None
    if sizes_file is not None and sizes_file.is_file():
        sizes = json.loads(sizes_file.read_text())
        unknown = sorted(set(sizes) - {"vision", "qformer", "num_query_tokens", "image_size"})
        if unknown:
            raise ValueError(f"minigpt4: {sizes_file}: unknown key(s) {unknown}")
        vision, qformer_sizes = sizes.get("vision", vision), sizes.get("qformer", qformer_sizes)
        num_query_tokens, image_size = sizes.get("num_query_tokens", num_query_tokens), sizes.get("image_size", image_size)
    tokenizer = AutoTokenizer.from_pretrained(paths["llm"])
    processor = MiniGPT4Processor(tokenizer, BlipImageProcessor(
        size={"height": image_size, "width": image_size}, resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD))
    config = build_config(AutoConfig.from_pretrained(paths["llm"]), processor.image_token_id, image_size, vision,
                          qformer_sizes, num_query_tokens, str(pretrained or paths["proj"].parent))
    with torch.device("meta"):
        model = MiniGPT4ForConditionalGeneration(config)
    language_model = LlamaForCausalLM.from_pretrained(paths["llm"], dtype=dtype)
    weights: dict[str, torch.Tensor] = {}
    layers = config.vision_config.num_hidden_layers
    for source in ("vit", "qformer", "proj"):  # the original order: later files win
        weights.update(map_original_state_dict(_torch_file(paths[source]), source, layers))
    expected = {n for n, _ in model.named_parameters() if not n.startswith("language_model.")}
    missing = sorted(expected - set(weights))
    if missing:
        raise ValueError(f"minigpt4: the checkpoint files give no value for {len(missing)} weight(s), e.g. {missing[:5]}")
    model.language_model = language_model
    model.load_state_dict({**weights, **{f"language_model.{k}": v for k, v in language_model.state_dict().items()}},
                          strict=True, assign=True)
    return model.to(dtype).eval(), processor


class MiniGPT4(AdapterBackend):
    """``--model minigpt4``; model arguments: pretrained (folder) or llm/vit/qformer/proj, device,
    dtype (auto: float16 on a GPU as the reference loads Vicuna, else float32), batch_size."""

    adapter_class = MiniGPT4Adapter

    def __init__(self, pretrained: str | None = None, llm: str | None = None, vit: str | None = None,
                 qformer: str | None = None, proj: str | None = None, device: str | None = None, dtype: str = "auto",
                 batch_size: int | str = 1, device_map: str | None = None, **kwargs) -> None:
        if kwargs:
            raise ValueError(f"minigpt4: unknown model argument(s) {sorted(kwargs)}; known: pretrained, llm, vit, qformer, "
                             "proj, device, device_map, dtype, batch_size")
        super().__init__(batch_size=batch_size, device=device, device_map=device_map)
        torch_dtype = parse_dtype(dtype, torch.float16 if self.device.type == "cuda" else torch.float32)
        self._attach(*load_minigpt4(pretrained, llm, vit, qformer, proj, torch_dtype))
