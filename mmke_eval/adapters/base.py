"""Model adapters: everything an editor or the wrapper needs to know about one model family.

An adapter wraps a loaded model + processor (usually taken from an lmms-eval backend instance)
and offers three operations on ``Query`` objects: teacher-forced scoring, a differentiable
target loss (for editors that train), and greedy generation. It also names the parameter
groups editors act on ("llm_last_mlp", "alignment", "vision"). No other module may branch on
model names: that knowledge lives here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Query:
    """One input to the model: ``[image] prefix prompt[ target]``.

    ``prefix`` is editor context (IKE demonstrations). Its token positions are excluded from the
    positions compared for locality, so pre-edit (no prefix) and post-edit inputs line up.
    ``target`` is scored teacher-forced and is joined to the prompt with one space (reference
    protocol: labels are the target with a leading space).
    """

    prompt: str
    image: Any = None  # PIL.Image.Image or None
    target: str = ""
    prefix: str = ""


@dataclass
class ForwardResult:
    """Teacher-forced outputs of one query.

    ``topk`` holds the top-K token ids (K = the ``k`` asked for, sorted by score) at every
    position of the query (image positions included, prefix positions excluded), in order.
    ``answer_positions`` indexes the rows of ``topk`` whose logits predict the answer tokens.
    """

    token_acc: float  # mean over answer tokens of argmax == label; nan when there is no target
    answer_ids: list[int]
    predicted_ids: list[int]  # argmax at the answer positions (the teacher-forced "decode")
    topk: torch.Tensor  # LongTensor [n_positions, K], on CPU
    answer_positions: slice


FAMILY_CONFIG_KEY = "mmke_family"


class ModelAdapter(ABC):
    """Adapter over one loaded multimodal model."""

    family: str = ""  # key for per-family editor defaults in registry.yaml ("llava", "blip2", ...)

    def __init__(self, model: torch.nn.Module, processor: Any, device: torch.device | str | None = None):
        self.model = model
        self.processor = processor
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        # A checkpoint may name its own family for editor defaults (config key ``mmke_family``):
        # the mmke_mini world model is a LLaVA, but 7B learning rates do not move its weights.
        declared = getattr(getattr(model, "config", None), FAMILY_CONFIG_KEY, None)
        if declared:
            self.family = str(declared)

    @classmethod
    @abstractmethod
    def from_lmms(cls, lmms_model: Any, **options: Any) -> "ModelAdapter":
        """Build the adapter from an lmms-eval backend instance (shares its model, no copy)."""

    @classmethod
    def check_backend(cls, base: str) -> None:
        """Raise, before any weights load, when lmms-eval backend ``base`` cannot be served."""

    @abstractmethod
    def teacher_forced(self, queries: list[Query], k: int = 10) -> list[ForwardResult]:
        """One batched forward pass (no grad) per group of queries; see ForwardResult."""

    @abstractmethod
    def target_loss(self, query: Query) -> torch.Tensor:
        """Mean NLL of the target tokens given image + prefix + prompt, differentiable."""

    def sequence_logits(self, query: Query) -> torch.Tensor:
        """Logits [positions, vocab] at the positions ``teacher_forced`` compares (image positions
        included, prefix positions excluded), differentiable: the locality term of learned editors."""
        raise NotImplementedError(f"{type(self).__name__} cannot give differentiable logits (needed to train an editor)")

    def answer_ids(self, query: Query) -> list[int]:
        """The ids of the tokens ``query.target`` adds (``ForwardResult.answer_ids``), without a forward pass."""
        raise NotImplementedError(f"{type(self).__name__} cannot tokenise a target on its own")

    def answer_span(self, query: Query, start: int, end: int) -> slice:
        """The answer tokens of ``query`` (``ForwardResult.answer_ids``) that hold the characters
        ``query.target[start:end]`` (MIKE's entity name inside a caption)."""
        raise NotImplementedError(f"{type(self).__name__} cannot locate a span of the target in its tokens")

    @abstractmethod
    def generate(self, queries: list[Query], max_new_tokens: int = 32, until: list[str] | None = None) -> list[str]:
        """Greedy continuations of image + prefix + prompt, cut at the first ``until`` string."""

    @property
    @abstractmethod
    def max_length(self) -> int:
        """Longest input (in tokens, image tokens included) the model accepts."""

    @abstractmethod
    def count_tokens(self, query: Query) -> int:
        """Length of the model input for ``query`` (image tokens, prefix, prompt and target)."""

    @contextmanager
    def reusing_prefixes(self):
        """Inside this block, queries that share a prefix and an image may reuse one computation of
        that part of the input (IKE's demonstrations; mmke_eval/adapters/prefix_cache.py). The
        caller promises that no weight changes inside it. Default: nothing is reused."""
        yield

    @abstractmethod
    def parameter_group(self, group: str, last_k: int | tuple[int, ...] = 1) -> dict[str, torch.nn.Parameter]:
        """Named parameters of a group: "llm_last_mlp" (of the last ``last_k`` layers), "llm_mlp_out"
        (the MLP output projections, down_proj; ``last_k`` a tuple: of those layers), "alignment" or "vision"."""

    def describe(self) -> dict:
        """Protocol facts about how inputs are built (written into the results)."""
        return {"adapter": type(self).__name__, "family": self.family}
