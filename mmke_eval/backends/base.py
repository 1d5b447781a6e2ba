"""An lmms-eval backend that answers through one of our adapters.

The adapter already builds the model's inputs the reference way and generates greedily, so a
backend only loads the model: ``--model blip2_hf`` on a plain lmms-eval task asks the same
input layout as the edited model's probes. Greedy generation only: a sampling request is an
error, never silently answered greedily.
"""

from __future__ import annotations

from typing import Any

import torch
from lmms_eval.api.model import lmms
from tqdm import tqdm

from mmke_eval.adapters.base import Query
from mmke_eval.options import OptionError, parse_float, parse_int

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(value: Any, default: torch.dtype) -> torch.dtype:
    """``auto`` (the backend's reference precision) or one of DTYPES."""
    if value in (None, "auto"):
        return default
    if isinstance(value, torch.dtype) and value in DTYPES.values():
        return value
    if value not in DTYPES:
        raise OptionError(f"option dtype={value!r}: expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[value]


def resolve_device(device: Any, device_map: Any, backend: str) -> torch.device:
    """The one device our backends load the whole model on, from ``device`` and/or ``device_map``.

    lmms-eval's own backends (llava_hf, qwen2_vl, ...) take ``device_map``, some insist on it; ours
    accept it too, so the same ``--model_args`` serve every backend. Our models live on one device:
    ``device_map`` names it (``cpu``, ``cuda``, ``cuda:1``) or is ``auto`` (the first GPU, else the
    CPU); a device map that would spread the model, or one that contradicts ``device``, is refused.
    """
    device = None if device in (None, "") else str(device).strip()
    device_map = None if device_map in (None, "") else str(device_map).strip()
    if device_map == "auto":
        device_map = "cuda:0" if torch.cuda.is_available() else "cpu"
    if device_map is not None:
        try:
            mapped = torch.device(device_map)
        except (RuntimeError, TypeError):
            raise OptionError(f"{backend}: option device_map={device_map!r}: expected auto or one device (cpu, cuda, "
                              "cuda:N); this backend keeps the whole model on one device") from None
        if device is not None and torch.device(device) != mapped:
            raise OptionError(f"{backend}: options device={device} and device_map={device_map} disagree; give one of them")
        return mapped
    return torch.device(device or "cuda")


class AdapterBackend(lmms):
    """Base of our lmms-eval backends: ``self.model``, ``self.processor`` and an adapter over them."""

    adapter_class: type  # set by each backend

    def __init__(self, batch_size: int | str = 1, device: str | None = None, device_map: str | None = None) -> None:
        super().__init__()
        self.batch_size_per_gpu = parse_int("batch_size", batch_size, minimum=1)
        self._device = resolve_device(device, device_map, type(self).__name__)

    def _attach(self, model: torch.nn.Module, processor: Any) -> None:
        self.model = model.to(self._device).eval()
        self.processor = processor
        self.adapter = self.adapter_class(self.model, processor, device=self._device, batch_size=self.batch_size_per_gpu)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def generate_until(self, requests) -> list[str]:
        outputs = []
        for request in tqdm(requests, desc=f"{type(self).__name__} generating", disable=self.rank != 0):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
            if len(visuals) > 1:
                raise ValueError(f"{type(self).__name__}: {task} asks about {len(visuals)} images at once; this model takes one")
            until, max_new_tokens = _greedy_settings(dict(gen_kwargs or {}), type(self).__name__)
            query = Query(prompt=context, image=visuals[0] if visuals else None)
            outputs.append(self.adapter.generate([query], max_new_tokens=max_new_tokens, until=until)[0])
        return outputs

    def loglikelihood(self, requests) -> list:
        raise NotImplementedError(f"{type(self).__name__} answers generate_until tasks only")

    def generate_until_multi_round(self, requests) -> list:
        raise NotImplementedError(f"{type(self).__name__} answers generate_until tasks only")


def _greedy_settings(gen_kwargs: dict[str, Any], backend: str) -> tuple[list[str], int]:
    """(stop strings, max_new_tokens) of a greedy request; anything asking for sampling or beams raises."""
    until = gen_kwargs.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    max_new_tokens = parse_int("max_new_tokens", gen_kwargs.pop("max_new_tokens", 32), minimum=1)
    if gen_kwargs.pop("do_sample", False) not in (False, "false", "False", 0):
        raise ValueError(f"{backend}: do_sample=True is not supported (greedy decoding only)")
    if parse_float("temperature", gen_kwargs.pop("temperature", 0) or 0) != 0:
        raise ValueError(f"{backend}: temperature > 0 asks for sampling; greedy decoding only")
    if parse_int("num_beams", gen_kwargs.pop("num_beams", 1), minimum=1) != 1:
        raise ValueError(f"{backend}: num_beams > 1 is not supported (greedy decoding only)")
    gen_kwargs.pop("top_p", None)  # meaningless without sampling
    gen_kwargs.pop("image_aspect_ratio", None)  # lmms-eval's LLaVA hint; one image, resized by the processor
    if gen_kwargs:
        raise ValueError(f"{backend}: unsupported generation setting(s) {sorted(gen_kwargs)}")
    return until, max_new_tokens
