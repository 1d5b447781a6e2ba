"""MiniGPT-4 (Vicuna-7B), assembled from transformers parts by mmke_eval/backends/minigpt4.py.

Raw layout, the reference's (shared docs 2.4, EasyEdit/VLKEB ``mini_gpt4.py``): ``###Human: <Img>``,
the 32 projected query embeddings, ``</Img> ``, then the text, each piece tokenized without
special tokens, so no BOS; a query without an image is its text alone. No chat template.

Parameter groups: FT-LLM edits the last LLaMA layer's ``up_proj``/``down_proj`` (reference:
``llama_model.model.layers.31.mlp``); the alignment module is the Q-Former with its query tokens
and ``llama_proj`` (the reference's FT-Alignment tunes parameters named ``Qformer`` alone;
docs/models.md).
"""

from __future__ import annotations

import torch

from mmke_eval.adapters.base import Query
from mmke_eval.adapters.hf_vlm import HFVisionLanguageAdapter

_LM_LAYER = r"(^|\.)language_model\.model\.layers\.{last}\."


class MiniGPT4Adapter(HFVisionLanguageAdapter):
    family = "minigpt4"
    prompt_formats = ("raw",)
    raw_special_tokens = False
    raw_image_before = "###Human: <Img>"
    raw_image_after = "</Img> "
    raw_layout = "'###Human: <Img>' query embeddings '</Img> ' (if an image), prefix + prompt [+ ' ' + target]; no BOS"
    parameter_groups = {
        "llm_last_mlp": (_LM_LAYER + r"mlp\.up_proj\.weight$", _LM_LAYER + r"mlp\.down_proj\.weight$"),
        "llm_mlp_out": (_LM_LAYER + r"mlp\.down_proj\.weight$",),  # MEMIT / AlphaEdit
        "alignment": (r"(^|\.)query_tokens$", r"(^|\.)qformer\.", r"(^|\.)llama_proj\."),
        "vision": (r"(^|\.)vision_model\.",),
    }

    def _image_inputs(self, queries: list[Query]) -> tuple[dict[str, torch.Tensor], list[int]]:
        pixels = self.processor.image_processor([q.image for q in queries], return_tensors="pt")
        return self._to_device(pixels), [int(self.model.config.num_query_tokens)] * len(queries)
