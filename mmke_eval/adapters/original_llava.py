"""lmms-eval's ``llava`` and ``llava_onevision`` backends: the original LLaVA / LLaVA-NeXT code.

Those backends load the model through the ``llava`` package of the original repositories, with
its own model classes (``LlavaLlamaForCausalLM``, ``LlavaQwenForCausalLM``) and input code. That
package cannot be installed beside lmms-eval 0.7.3 and mmke-eval: its PyPI release
(``llava-torch`` 1.2.2.post1) pins transformers 4.36.2 and torch 2.0.1, where we need
transformers >= 4.57, and LLaVA-NeXT is not on PyPI at all. The same checkpoints, converted,
run through transformers and lmms-eval's ``llava_hf`` backend, which mmke-eval serves. So these
two names fail at once, before any weights load, with the line to use instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

from mmke_eval.adapters.base import ModelAdapter

_INSTEAD = {
    "llava": "--model llava_hf --model_args pretrained=llava-hf/llava-1.5-7b-hf (LLaVA-1.5 converted to transformers)",
    "llava_onevision": "--model llava_hf --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf "
                       "(LLaVA-OneVision converted to transformers; LLaVA-NeXT: llava-hf/llava-v1.6-vicuna-7b-hf)",
}


class BackendUnavailable(RuntimeError):
    """A backend that mmke-eval cannot edit; the message says what to run instead."""

    is_root_cause = True  # the CLI shows this message as the error


class OriginalLlavaAdapter(ModelAdapter):
    """Refuses the original-repository LLaVA backends; see the module docstring."""

    unavailable_reason: ClassVar[str] = (
        "needs the original LLaVA/LLaVA-NeXT package (pip llava-torch pins transformers 4.36.2 and torch 2.0.1), "
        "which cannot be installed beside lmms-eval 0.7.3 and mmke-eval (transformers >= 4.57)"
    )

    @classmethod
    def check_backend(cls, base: str) -> None:
        instead = _INSTEAD.get(base, "--model llava_hf")
        raise BackendUnavailable(f"lmms-eval's {base!r} backend {cls.unavailable_reason}; use {instead}")

    @classmethod
    def from_lmms(cls, lmms_model: Any, **options: Any) -> "ModelAdapter":
        raise BackendUnavailable(f"lmms-eval's original LLaVA backends {cls.unavailable_reason}; use --model llava_hf")

    def teacher_forced(self, queries, k=10):  # pragma: no cover - never built
        raise NotImplementedError

    def target_loss(self, query):  # pragma: no cover
        raise NotImplementedError

    def generate(self, queries, max_new_tokens=32, until=None):  # pragma: no cover
        raise NotImplementedError

    @property
    def max_length(self) -> int:  # pragma: no cover
        raise NotImplementedError

    def count_tokens(self, query):  # pragma: no cover
        raise NotImplementedError

    def parameter_group(self, group):  # pragma: no cover
        raise NotImplementedError
