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

Without torchvision, transformers cannot load these processors; mmke_eval/backends/no_torchvision.py
lets them load without their video processor, and images are processed exactly as with it.
"""

from __future__ import annotations

import torch

from mmke_eval.adapters.hf_vlm import HFVisionLanguageAdapter

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
        # The patch merger projects the vision tower's output into the language model: the alignment module.
        "alignment": (r"(^|\.)visual\.merger\.",),
        "vision": (r"(^|\.)visual\.(?!merger\.)",),
    }

    def _image_block(self) -> list[int]:
        config = self.model.config
        return [int(config.vision_start_token_id), self.image_token_id, int(config.vision_end_token_id)]

    def _extra_inputs(self, ids: torch.Tensor, image_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not image_inputs:
            return {}
        return {"mm_token_type_ids": (ids == self.image_token_id).to(torch.int)}
