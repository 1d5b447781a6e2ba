"""Qwen2-VL and Qwen2.5-VL through transformers (lmms-eval's ``qwen2_vl`` and ``qwen2_5_vl`` backends).

An image is ``<|vision_start|>``, one ``<|image_pad|>`` per merged patch group (the count depends
on the image's size: ``image_grid_thw.prod() // merge_size**2``), ``<|vision_end|>``. The model
places them in 3-D rotary positions from ``mm_token_type_ids`` (1 at image tokens), which is
derived here from the token ids for every forward pass and generation.

Input formats (``prompt_format``):

* ``chat`` (default; EasyEdit's protocol for the Qwen-VL models it loads through transformers):
  the processor's chat template, the image then prefix + prompt in the user turn, the generation
  prompt, then the target;
* ``raw``: the vision block, then prefix + prompt [+ ' ' + target], no template (Qwen's
  tokenizer adds no BOS).

Image loading (``image_loading``):

* ``reference`` (default; EasyEdit's ``Qwen2VLProcessor`` and lmms-eval's own ``qwen2_vl``
  backend load images through ``qwen_vl_utils.fetch_image`` before the processor): the image
  converted to RGB (transparency on white) and resized with PIL's default (bicubic) filter to
  the nearest multiples of 28 pixels per side, scaled to within 4 to 16384 blocks of 28x28
  pixels, keeping the aspect ratio (``reference_image_size``); then the processor, as always;
* ``processor``: the image straight to the processor, which resizes it by its own settings.

On the real checkpoints (14-pixel patches merged 2x2, 4 to 16384 tokens) both give the same
size; on a processor with other settings (the tiny test models) the token count differs. The
package ``qwen-vl-utils`` imports torchvision at import time, which this environment lacks, so
the resize is implemented here from its documented behaviour (tests/test_adapter_qwen2_vl.py
compares it with the package's own function).

Without torchvision, transformers cannot load these processors; mmke_eval/backends/no_torchvision.py
lets them load without their video processor, and images are processed exactly as with it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from PIL import Image

from mmke_eval.adapters.base import Query
from mmke_eval.adapters.hf_vlm import HFVisionLanguageAdapter

IMAGE_LOADINGS = ("reference", "processor")
# qwen_vl_utils.fetch_image's defaults, as EasyEdit calls it: 14-pixel patches merged 2x2, so
# sides in multiples of 28, and between 4 and 16384 such blocks.
REFERENCE_FACTOR = 28
REFERENCE_MIN_PIXELS = 4 * REFERENCE_FACTOR**2
REFERENCE_MAX_PIXELS = 16384 * REFERENCE_FACTOR**2
MAX_ASPECT_RATIO = 200


def reference_image_size(height: int, width: int, factor: int = REFERENCE_FACTOR, min_pixels: int = REFERENCE_MIN_PIXELS,
                         max_pixels: int = REFERENCE_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) the reference loader resizes an image to: each side rounded to a multiple
    of ``factor`` (at least one), then, if the area leaves [min_pixels, max_pixels], both sides
    scaled by the same ratio into it (floored when shrinking, ceiled when growing)."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"qwen2_vl image loading: aspect ratio {max(height, width) / min(height, width):.0f} "
                         f"exceeds {MAX_ASPECT_RATIO}, which the reference loader refuses")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def _checked_loading(value) -> str:
    if value not in IMAGE_LOADINGS:
        raise ValueError(f"qwen2_vl adapter: adapter.image_loading must be one of {', '.join(IMAGE_LOADINGS)}, not {value!r}")
    return value


def reference_image(image: Image.Image) -> Image.Image:
    """The image as the reference loader hands it to the processor (see the module docstring)."""
    if image.mode == "RGBA":
        rgb = Image.new("RGB", image.size, (255, 255, 255))
        rgb.paste(image, mask=image.split()[3])
    else:
        rgb = image.convert("RGB")
    height, width = reference_image_size(rgb.height, rgb.width)
    return rgb.resize((width, height))  # PIL's default filter (bicubic), as the reference

# The vision tower is "visual.blocks", so "layers" are the language model's alone, in every
# transformers layout (model.language_model.layers, model.layers).
_LM_LAYER = r"(^|\.)layers\.{last}\."


class QwenVLAdapter(HFVisionLanguageAdapter):
    """Qwen2-VL / Qwen2.5-VL; see the module docstring."""

    family = "qwen2_vl"
    default_prompt_format = "chat"
    raw_layout = "<|vision_start|> image tokens <|vision_end|> (if an image), prefix + prompt [+ ' ' + target]; no template"
    parameter_groups = {
        "llm_last_mlp": (_LM_LAYER + r"mlp\.up_proj\.weight$", _LM_LAYER + r"mlp\.down_proj\.weight$"),
        "llm_mlp_out": (_LM_LAYER + r"mlp\.down_proj\.weight$",),  # MEMIT / AlphaEdit
        # The patch merger projects the vision tower's output into the language model: the alignment module.
        "alignment": (r"(^|\.)visual\.merger\.",),
        "vision": (r"(^|\.)visual\.(?!merger\.)",),
    }

    def __init__(self, model, processor, *args, image_loading: str = "reference", **kwargs):
        super().__init__(model, processor, *args, **kwargs)
        self.image_loading = _checked_loading(image_loading)

    @classmethod
    def from_lmms(cls, lmms_model, **options):
        image_loading = _checked_loading(options.pop("image_loading", "reference"))
        adapter = super().from_lmms(lmms_model, **options)
        adapter.image_loading = image_loading
        return adapter

    def describe(self) -> dict:
        loading = {"reference": "qwen_vl_utils.fetch_image's resize (multiples of 28, 4 to 16384 blocks of 28x28 px, "
                                "PIL bicubic), then the processor (EasyEdit, lmms-eval's qwen2_vl)",
                   "processor": "the image straight to the processor"}[self.image_loading]
        return {**super().describe(), "image_loading": self.image_loading, "image_loading_layout": loading}

    def loaded_image(self, image: Image.Image) -> Image.Image:
        """The image as this adapter hands it to the processor."""
        return reference_image(image) if self.image_loading == "reference" else image

    def _image_inputs(self, queries: list[Query]) -> tuple[dict[str, torch.Tensor], list[int]]:
        return super()._image_inputs([replace(q, image=self.loaded_image(q.image)) for q in queries])

    def _image_block(self) -> list[int]:
        config = self.model.config
        return [int(config.vision_start_token_id), self.image_token_id, int(config.vision_end_token_id)]

    def _extra_inputs(self, ids: torch.Tensor, image_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not image_inputs:
            return {}
        return {"mm_token_type_ids": (ids == self.image_token_id).to(torch.int)}
