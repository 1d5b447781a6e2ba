"""``--model blip2_hf``: BLIP-2 (``Blip2ForConditionalGeneration`` + ``Blip2Processor``) for lmms-eval.

    lmms-eval --model blip2_hf --model_args pretrained=Salesforce/blip2-opt-2.7b,device=cuda,dtype=float16 ...
    mmke-eval --model blip2_hf --model_args pretrained=Salesforce/blip2-opt-2.7b,device=cuda --editor ft_llm ...

lmms-eval 0.7.3 has no BLIP-2 backend. This one answers through the BLIP-2 adapter, i.e. in the
reference layout (query embeddings, then the text without BOS; mmke_eval/adapters/blip2.py).
``dtype=auto`` loads float16 on a GPU, as the reference loads OPT-2.7B, and float32 on a CPU.
"""

from __future__ import annotations

import torch

from mmke_eval.adapters.blip2 import Blip2Adapter
from mmke_eval.backends.base import AdapterBackend, parse_dtype


class Blip2HF(AdapterBackend):
    adapter_class = Blip2Adapter

    def __init__(self, pretrained: str = "Salesforce/blip2-opt-2.7b", device: str | None = None, dtype: str = "auto",
                 batch_size: int | str = 1, device_map: str | None = None, **kwargs) -> None:
        if kwargs:  # a misspelt option must not be ignored
            raise ValueError(f"blip2_hf: unknown model argument(s) {sorted(kwargs)}; known: pretrained, device, device_map, "
                             "dtype, batch_size")
        super().__init__(batch_size=batch_size, device=device, device_map=device_map)
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        torch_dtype = parse_dtype(dtype, torch.float16 if self.device.type == "cuda" else torch.float32)
        model = Blip2ForConditionalGeneration.from_pretrained(str(pretrained), dtype=torch_dtype)
        self._attach(model, Blip2Processor.from_pretrained(str(pretrained)))
