"""The shipped world model behind its adapter, in float32 (tests and smoke runs that edit it)."""

from __future__ import annotations


def world_adapter():
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmke_eval.adapters.llava_hf import LlavaHFAdapter
    from mmke_eval.mini import WORLD_MODEL_DIR as folder

    model = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return LlavaHFAdapter(model, AutoProcessor.from_pretrained(folder))
