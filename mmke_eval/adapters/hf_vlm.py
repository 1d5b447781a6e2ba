"""The generic Hugging Face vision-language adapter: what every transformers VLM shares.

A model adapter subclasses ``HFVisionLanguageAdapter`` and declares only what differs:

* ``family``: the key of its editor defaults in registry.yaml;
* the raw (reference) input layout: ``raw_special_tokens`` (does the tokenizer's BOS lead the
  text), ``raw_image_first`` (the image block before the BOS instead of after it),
  ``raw_image_before`` / ``raw_image_after`` (text wrapped around the image, MiniGPT-4), and
  ``_image_block`` (the unexpanded image tokens: one placeholder, or Qwen's vision wrapper);
* ``prompt_formats``: ``raw`` always, ``chat`` where the processor has a chat template, and
  ``default_prompt_format``, the reference's;
* ``parameter_groups``: per group, the parameter-name patterns (regular expressions searched in
  ``named_parameters()`` names) that make it up, as peft's per-architecture target maps do.
  ``{last}`` in a pattern stands for the index of the language model's last layer. Every pattern
  must match at least one parameter: a missing name is an error naming the model class and the
  pattern, never a fallback to other weights;
* where the model's forward or generate needs more than ``input_ids``, ``attention_mask`` and
  the processor's image tensors (``_extra_inputs``, ``_forward``, ``_generate_ids``), and how
  images become tensors (``_image_inputs``).

Everything else lives here: the text is ``prefix + prompt``; teacher forcing appends ``" " +
target``. Answer tokens are the tokens the target adds at the end (tokenize with and without
it), so a tokenizer's leading-space handling (OPT's ``ĠParis``) never shifts the span. Query
positions (for locality) are every position except the prefix tokens, found the same way
(tokenize with and without the prefix). Batches are right-padded for teacher forcing (real
positions unchanged) and left-padded for generation; image and text-only queries go in separate
batches. Inside ``reusing_prefixes()``, queries with a prefix reuse its key/value cache instead
(mmke_eval/adapters/prefix_cache.py) where the adapter declares ``reuses_prefixes``: the model
continues from a cache given only the new token ids (the cached part holds the image).
"""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from mmke_eval import metrics
from mmke_eval.adapters.base import ForwardResult, ModelAdapter, Query
from mmke_eval.options import parse_bool
from mmke_eval.adapters.prefix_cache import (BOUNDARY_MARGIN, MIN_BUDGET_BYTES, MIN_SHARED_TOKENS, PrefixCache,
                                             PrefixEntry, crop_to, image_digest)

PROMPT_FORMATS = ("raw", "chat")
# Keys of a processor's output that describe the text, not the image.
TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"})
LAST = "{last}"


class ParameterGroupError(ValueError):
    """A parameter group is unknown, or one of its patterns matches no parameter of the model."""


@dataclass
class Encoded:
    """A query as model input: token ids plus where the prefix and the answer sit in them."""

    ids: list[int]
    prefix_start: int  # prefix tokens occupy [prefix_start, prefix_start + prefix_len)
    prefix_len: int
    answer_start: int  # answer tokens occupy [answer_start, len(ids))

    @property
    def kept(self) -> list[int]:
        """Sequence indices of the query positions (all but the prefix)."""
        end = self.prefix_start + self.prefix_len
        return list(range(self.prefix_start)) + list(range(end, len(self.ids)))

    def row_of(self, index: int) -> int:
        """Row of sequence position ``index`` among the kept positions."""
        end = self.prefix_start + self.prefix_len
        if self.prefix_start <= index < end:
            raise ValueError("the answer must not directly follow the prefix: the prompt is empty")
        return index if index < self.prefix_start else index - self.prefix_len


def common_prefix_len(*seqs: list[int]) -> int:
    n = 0
    for column in zip(*seqs):
        if any(tok != column[0] for tok in column[1:]):
            break
        n += 1
    return n


def cut(text: str, until: list[str]) -> str:
    """Cut at the earliest stop string, then strip."""
    cuts = [text.find(stop) for stop in until if stop and stop in text]
    return (text[: min(cuts)] if cuts else text).strip()


def resolve_parameter_group(model: torch.nn.Module, group: str, patterns: tuple[str, ...],
                            last_k: int | tuple[int, ...] = 1) -> dict[str, torch.nn.Parameter]:
    """The named parameters of ``model`` matched by ``patterns`` (see the module docstring).

    ``{last}`` matches the ``last_k`` highest layer indices that the pattern finds, or, where
    ``last_k`` is a tuple of layer indices (MEMIT's and AlphaEdit's layers 4-8), exactly those
    layers, each of which must exist. Raises ParameterGroupError naming the model class and the
    first pattern that matches nothing.
    """
    explicit = isinstance(last_k, tuple)
    if explicit and (not last_k or any(not isinstance(i, int) or i < 0 for i in last_k)):
        raise ParameterGroupError(f"parameter group {group!r}: layer indices must be integers >= 0, not {last_k}")
    if not explicit and last_k < 1:
        raise ParameterGroupError(f"parameter group {group!r}: last_k must be >= 1, not {last_k}")
    named = dict(model.named_parameters())
    chosen: dict[str, torch.nn.Parameter] = {}
    for pattern in patterns:
        if LAST in pattern:
            finder = re.compile(pattern.replace(LAST, r"(?P<layer>\d+)"))
            found = {name: int(m.group("layer")) for name in named if (m := finder.search(name))}
            if explicit:
                missing = sorted(set(last_k) - set(found.values()))
                if found and missing:
                    raise ParameterGroupError(
                        f"parameter group {group!r} of {type(model).__name__}: no layer {missing} for pattern {pattern!r} "
                        f"(the model has layers 0-{max(found.values())})")
                wanted = set(last_k)
            else:
                wanted = set(sorted(set(found.values()))[-last_k:])
            hits = [name for name, layer in found.items() if layer in wanted]
        else:
            finder = re.compile(pattern)
            hits = [name for name in named if finder.search(name)]
        if not hits:
            raise ParameterGroupError(
                f"parameter group {group!r} of {type(model).__name__}: pattern {pattern!r} matches no parameter"
            )
        chosen.update((name, named[name]) for name in hits)
    return chosen


class HFVisionLanguageAdapter(ModelAdapter):
    """Teacher forcing, target loss and generation for a transformers vision-language model."""

    # -- what a model adapter declares ------------------------------------------------------
    family: str = ""
    prompt_formats: ClassVar[tuple[str, ...]] = PROMPT_FORMATS
    default_prompt_format: ClassVar[str] = "raw"
    raw_special_tokens: ClassVar[bool] = True
    raw_image_first: ClassVar[bool] = False
    raw_image_before: ClassVar[str] = ""
    raw_image_after: ClassVar[str] = ""
    raw_layout: ClassVar[str] = "BOS, image tokens (if any), prefix + prompt [+ ' ' + target]; no conversation template"
    parameter_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Where an lmms-eval backend instance keeps the model and the processor.
    lmms_processor_attribute: ClassVar[str] = "processor"
    # The model continues from a key/value cache given only the new token ids, the image inside
    # the cached part (no image inputs again): prefix reuse works (see the module docstring).
    reuses_prefixes: ClassVar[bool] = False

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        device: torch.device | str | None = None,
        prompt_format: str | None = None,
        batch_size: int = 4,
        prefix_reuse: bool | str = True,
    ):
        super().__init__(model, processor, device)
        prompt_format = self.default_prompt_format if prompt_format is None else prompt_format
        if prompt_format not in self.prompt_formats:
            raise ValueError(f"{self.label}: prompt_format must be one of {self.prompt_formats}, not {prompt_format!r}")
        if int(batch_size) < 1:
            raise ValueError(f"{self.label}: batch_size must be >= 1")
        self.prompt_format = prompt_format
        self.batch_size = int(batch_size)
        # Off: every query takes the batched path, prefix and all (the results record which).
        self.prefix_reuse = parse_bool("adapter.prefix_reuse", prefix_reuse)
        self.tokenizer = processor.tokenizer
        self.image_token_id = self._find_image_token_id()
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        self.prefix_cache: PrefixCache | None = None  # set inside reusing_prefixes()
        # The model's keyword for a key/value cache: ``cache`` from transformers 5.24, ``past_key_values`` before.
        forward_parameters = inspect.signature(type(model).forward).parameters
        self._cache_keyword = "cache" if "cache" in forward_parameters else "past_key_values"

    @property
    def label(self) -> str:
        return f"{self.family or type(self).__name__} adapter"

    @classmethod
    def from_lmms(cls, lmms_model: Any, **options: Any) -> "HFVisionLanguageAdapter":
        """Share the model and processor of an lmms-eval backend instance (no copy)."""
        known = {"prompt_format", "batch_size", "prefix_reuse"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(known)}")
        processor = getattr(lmms_model, cls.lmms_processor_attribute)
        return cls(lmms_model.model, processor, device=lmms_model.device, **options)

    def _find_image_token_id(self) -> int:
        config = self.model.config
        for key in ("image_token_id", "image_token_index"):  # transformers 5 / 4 spellings
            if getattr(config, key, None) is not None:
                config_id = int(getattr(config, key))
                break
        else:
            config_id = None
        processor_id = getattr(self.processor, "image_token_id", None)
        token_id = processor_id if processor_id is not None else config_id
        if token_id is None:
            raise ValueError(f"{self.label}: cannot find the image token id in the processor or the model config")
        return int(token_id)

    # -- protocol facts ---------------------------------------------------------------------
    def describe(self) -> dict:
        layout = {
            "raw": self.raw_layout,
            "chat": "processor chat template, image then prefix + prompt in the user turn, "
            "generation prompt, then [' ' + target] (no space when the template ends in whitespace)",
        }[self.prompt_format]
        return {
            **super().describe(),
            "model_class": type(self.model).__name__,
            "dtype": str(self.model.dtype),
            "prompt_format": self.prompt_format,
            "input_layout": layout,
            "answer_tokens": "tokens added at the end by the target (tokenize with and without it)",
            "query_positions": "all positions except the prefix tokens; image positions included",
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "prefix_reuse": ("an in-context edit's prefix computed once per image of a case (prefix_cache.py)"
                             if self.reuses_prefixes and self.prefix_reuse else "off"),
        }

    @property
    def max_length(self) -> int:
        """Longest input the model takes (positions)."""
        config = self.model.config
        text_config = getattr(config, "text_config", None) or config
        limits = [getattr(text_config, "max_position_embeddings", None), getattr(self.tokenizer, "model_max_length", None)]
        limits = [int(x) for x in limits if x is not None and x < 10**7]  # tokenizers use 1e30 for "unset"
        return min(limits) if limits else 2048

    def count_tokens(self, query: Query) -> int:
        """Positions the model sees for ``query`` (special, image, prefix, prompt and target tokens)."""
        return len(self.encoded(query).ids)

    def answer_ids(self, query: Query) -> list[int]:
        """The ids of the tokens ``query.target`` adds at the end (``ForwardResult.answer_ids``)."""
        if not query.target:
            return []
        enc = self.encoded(query)
        return enc.ids[enc.answer_start :]

    def answer_span(self, query: Query, start: int, end: int) -> slice:
        """Tokenise the target cut before ``start`` and after ``end``: the tokens the full target
        shares with the first precede the span, and the span ends where the second's tokens are
        covered. Where the target's tokens do not split at ``end`` (a name inside a longer word),
        the span takes the tokens up to the one holding its last character."""
        if not 0 <= start < end <= len(query.target):
            raise ValueError(f"{self.label}: span [{start}, {end}) outside the target {query.target!r}")
        full = self.answer_ids(query)
        before = query.target[:start].rstrip()
        first = common_prefix_len(full, self.answer_ids(replace(query, target=before))) if before else 0
        through = self.answer_ids(replace(query, target=query.target[:end]))
        last = common_prefix_len(full, through)
        if last < len(through):  # the tokens differ at the boundary: cover the span's characters
            wanted = len(self.tokenizer.decode(through, skip_special_tokens=True))
            while last < len(full) and len(self.tokenizer.decode(full[:last], skip_special_tokens=True)) < wanted:
                last += 1
        return slice(first, max(last, first + 1))

    def encoded(self, query: Query) -> Encoded:
        """``query`` as this model's token ids (image tokens expanded), with its prefix and answer spans."""
        counts = self._image_inputs([query])[1] if query.image is not None else [0]
        return self._encode(query, counts[0])

    # -- input building ---------------------------------------------------------------------
    def _image_block(self) -> list[int]:
        """Unexpanded ids of one image: one placeholder, expanded to the image's token count."""
        return [self.image_token_id]

    def _plain_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _text_ids(self, body: str, target: str, has_image: bool) -> list[int]:
        """Unexpanded token ids (one image placeholder) of ``body`` [+ target]."""
        if self.prompt_format == "raw":
            text = f"{body} {target}" if target else body
            ids = self.tokenizer(text, add_special_tokens=self.raw_special_tokens)["input_ids"]
            if has_image:
                bos = self.tokenizer.bos_token_id
                at = 1 if not self.raw_image_first and ids and bos is not None and ids[0] == bos else 0
                block = self._plain_ids(self.raw_image_before) + self._image_block() + self._plain_ids(self.raw_image_after)
                ids = ids[:at] + block + ids[at:]
            return ids
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": body}]
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        if target:
            text += target if text[-1:].isspace() else " " + target
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))  # templates that write BOS themselves
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def _expanded_ids(self, body: str, target: str, has_image: bool, n_image_tokens: int) -> list[int]:
        ids = self._text_ids(body, target, has_image)
        if not has_image:
            return ids
        if ids.count(self.image_token_id) != 1:
            raise ValueError(f"{self.label}: expected one image placeholder in the input, found {ids.count(self.image_token_id)}")
        at = ids.index(self.image_token_id)
        return ids[:at] + [self.image_token_id] * n_image_tokens + ids[at + 1 :]

    def _encode(self, query: Query, n_image_tokens: int) -> Encoded:
        has_image = query.image is not None
        body = query.prefix + query.prompt
        full = self._expanded_ids(body, query.target, has_image, n_image_tokens)
        answer_start = len(full)
        if query.target:
            no_target = self._expanded_ids(body, "", has_image, n_image_tokens)
            is_prefix = full[: len(no_target)] == no_target
            answer_start = len(no_target) if is_prefix else common_prefix_len(full, no_target)
            if answer_start == 0:
                raise ValueError(f"{self.label}: nothing precedes the target, its first token cannot be scored")
        prefix_start, prefix_len = len(full), 0
        if query.prefix:
            no_prefix = self._expanded_ids(query.prompt, query.target, has_image, n_image_tokens)
            empty = self._expanded_ids("", "", has_image, n_image_tokens)
            # Cap at the empty-body tokens: a prefix that starts like the prompt is still prefix.
            prefix_start = common_prefix_len(full, no_prefix, empty)
            prefix_len = max(len(full) - len(no_prefix), 0)
        return Encoded(full, prefix_start, prefix_len, answer_start)

    def _to_device(self, tensors: dict[str, Any]) -> dict[str, torch.Tensor]:
        dtype = self.model.dtype
        return {
            key: value.to(self.device, dtype) if value.is_floating_point() else value.to(self.device)
            for key, value in tensors.items()
            if key not in TEXT_KEYS and isinstance(value, torch.Tensor)
        }

    def _image_inputs(self, queries: list[Query]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Model inputs for the queries' images (pixel_values, image_sizes, ...) and tokens per image.

        Default: the processor, on one image placeholder per image, expands it and says how many
        tokens each image takes.
        """
        texts = [self.processor.image_token] * len(queries)
        out = self.processor(text=texts, images=[q.image for q in queries], return_tensors="pt", padding=True)
        counts = (out["input_ids"] == self.image_token_id).sum(dim=1).tolist()
        return self._to_device(out), counts

    def _batch(self, queries: list[Query]) -> tuple[list[Encoded], dict[str, torch.Tensor]]:
        """Encode queries that all have an image, or all have none."""
        with_image = [q for q in queries if q.image is not None]
        if with_image and len(with_image) != len(queries):
            raise ValueError(f"{self.label}: a batch mixes image and text-only queries")
        image_inputs, counts = self._image_inputs(queries) if with_image else ({}, [0] * len(queries))
        return [self._encode(q, n) for q, n in zip(queries, counts)], image_inputs

    def _padded(self, encoded: list[Encoded], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(e.ids) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            span = slice(width - len(e.ids), width) if left else slice(0, len(e.ids))
            ids[row, span] = torch.tensor(e.ids, dtype=torch.long)
            mask[row, span] = 1
        return ids.to(self.device), mask.to(self.device)

    def _chunks(self, queries: list[Query], indices: list[int] | None = None) -> list[list[int]]:
        """Indices of ``queries`` (of ``indices``, default all) in batches: text-only and image
        queries apart, input order kept."""
        indices = list(range(len(queries))) if indices is None else indices
        groups = [[i for i in indices if queries[i].image is None], [i for i in indices if queries[i].image is not None]]
        return [g[s : s + self.batch_size] for g in groups for s in range(0, len(g), self.batch_size)]

    # -- model calls (overridden where a model needs more) ------------------------------------
    def _extra_inputs(self, ids: torch.Tensor, image_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inputs derived from the token ids that the model needs besides them (Qwen's mm_token_type_ids)."""
        return {}

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, image_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [batch, positions, vocab] of one padded batch."""
        extra = self._extra_inputs(ids, image_inputs)
        return self.model(input_ids=ids, attention_mask=mask, use_cache=False, **image_inputs, **extra).logits

    def _generate_ids(self, ids: torch.Tensor, mask: torch.Tensor, image_inputs: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
        """The new token ids only, [batch, new tokens], of greedy generation on a left-padded batch."""
        extra = self._extra_inputs(ids, image_inputs)
        out = self.model.generate(input_ids=ids, attention_mask=mask, **image_inputs, **extra, **kwargs)
        return out[:, ids.shape[1] :]

    # -- the three operations -----------------------------------------------------------------
    @torch.no_grad()
    def teacher_forced(self, queries: list[Query], k: int = 10) -> list[ForwardResult]:
        results: list[ForwardResult | None] = [None] * len(queries)
        plain = list(range(len(queries)))
        if self.prefix_cache is not None:
            for i in plain:
                results[i] = self._teacher_forced_reusing(queries[i], k)
            plain = [i for i in plain if results[i] is None]
        for chunk in self._chunks(queries, plain):
            encoded, image_inputs = self._batch([queries[i] for i in chunk])
            ids, mask = self._padded(encoded, left=False)  # right padding: real positions unchanged
            logits = self._forward(ids, mask, image_inputs)
            for row, (i, enc) in enumerate(zip(chunk, encoded)):
                results[i] = self._forward_result(logits[row, : len(enc.ids)], enc, k)
        return results  # type: ignore[return-value]

    def result_from_scores(self, scores: torch.Tensor, enc: Encoded, k: int) -> ForwardResult:
        """``teacher_forced``'s result for ``enc`` from scores [its positions, vocab] that rank tokens
        as logits do (log-probabilities of another distribution: the reference SERAC's mixture)."""
        return self._forward_result(scores[: len(enc.ids)], enc, k)

    def _forward_result(self, logits: torch.Tensor, enc: Encoded, k: int) -> ForwardResult:
        """Scores of one row from its logits [positions, vocab]."""
        return self._scored(logits[enc.kept], logits[enc.answer_start - 1 : len(enc.ids) - 1], enc, k)

    def _scored(self, kept_logits: torch.Tensor, answer_logits: torch.Tensor, enc: Encoded, k: int) -> ForwardResult:
        """Scores of one row from the logits at its kept positions and at the positions that
        predict its answer tokens (``answer_start - 1`` to the second last)."""
        topk = kept_logits.topk(k, dim=-1).indices.cpu()
        answer_ids = enc.ids[enc.answer_start :]
        if not answer_ids:
            n = len(enc.kept)
            return ForwardResult(float("nan"), [], [], topk, slice(n, n))
        first_row = enc.row_of(enc.answer_start - 1)  # logits[t-1] predict token t
        predicted = answer_logits.argmax(dim=-1).tolist()
        return ForwardResult(
            token_acc=metrics.token_accuracy(predicted, answer_ids),  # the one definition
            answer_ids=answer_ids,
            predicted_ids=predicted,
            topk=topk,
            answer_positions=slice(first_row, first_row + len(answer_ids)),
        )

    def target_loss(self, query: Query) -> torch.Tensor:
        if not query.target:
            raise ValueError(f"{self.label}: target_loss needs a query with a target")
        with torch.enable_grad():
            (enc,), image_inputs = self._batch([query])
            ids = torch.tensor([enc.ids], dtype=torch.long, device=self.device)
            logits = self._forward(ids, torch.ones_like(ids), image_inputs)[0]
            labels = ids[0, enc.answer_start :]
            return F.cross_entropy(logits[enc.answer_start - 1 : -1].float(), labels)

    def sequence_logits(self, query: Query) -> torch.Tensor:
        with torch.enable_grad():
            (enc,), image_inputs = self._batch([query])
            ids = torch.tensor([enc.ids], dtype=torch.long, device=self.device)
            return self._forward(ids, torch.ones_like(ids), image_inputs)[0][enc.kept]

    @torch.no_grad()
    def generate(self, queries: list[Query], max_new_tokens: int = 32, until: list[str] | None = None) -> list[str]:
        outputs: list[str | None] = [None] * len(queries)
        plain = list(range(len(queries)))
        if self.prefix_cache is not None:
            for i in plain:
                outputs[i] = self._generate_reusing(queries[i], max_new_tokens, until)
            plain = [i for i in plain if outputs[i] is None]
        for chunk in self._chunks(queries, plain):
            # The target is never part of a generation input.
            encoded, image_inputs = self._batch([Query(q.prompt, q.image, "", q.prefix) for q in (queries[i] for i in chunk)])
            ids, mask = self._padded(encoded, left=True)  # left padding: every row continues at the end
            new = self._generate_ids(ids, mask, image_inputs, **self._generation_settings(max_new_tokens, until))
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, text in zip(chunk, texts):
                outputs[i] = cut(text, until or [])
        return outputs  # type: ignore[return-value]

    def _generation_settings(self, max_new_tokens: int, until: list[str] | None) -> dict[str, Any]:
        return dict(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            # Stop decoding at the task's stop strings instead of paying for max_new_tokens.
            **({"stop_strings": list(until), "tokenizer": self.tokenizer} if until else {}),
        )

    # -- prefix reuse (prefix_cache.py) -------------------------------------------------------
    @contextmanager
    def reusing_prefixes(self):
        if not (self.reuses_prefixes and self.prefix_reuse) or self.prefix_cache is not None:
            yield
            return
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.prefix_cache = PrefixCache(max(MIN_BUDGET_BYTES, weights // 4))
        try:
            yield
        finally:
            self.prefix_cache = None

    def _reusable_entry(self, image: str, enc: Encoded, image_inputs: dict[str, torch.Tensor], limit: int) -> PrefixEntry | None:
        """The entry ``enc`` (showing the image with digest ``image``) runs on, found or made, or
        None for the plain path. ``limit``: the first position the row must compute itself."""
        needed = enc.kept
        entry = self.prefix_cache.find(image, enc.ids, needed, limit)
        if entry is not None:
            return entry
        n = min(enc.prefix_start + enc.prefix_len - BOUNDARY_MARGIN, limit)
        image_end = max((i + 1 for i, t in enumerate(enc.ids) if t == self.image_token_id), default=0)
        if n < max(image_end, MIN_SHARED_TOKENS, enc.prefix_start):
            return None
        positions = [p for p in needed if p < n] or [n - 1]
        ids = torch.tensor([enc.ids[:n]], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                         logits_to_keep=torch.tensor(positions, device=self.device), **image_inputs)
        cache = getattr(out, "cache", None)
        if cache is None:  # transformers before 5.24
            cache = out.past_key_values
        entry = PrefixEntry(image, tuple(enc.ids[:n]), cache,
                            {p: row for p, row in zip(positions, out.logits[0])})
        self.prefix_cache.add(entry)
        return entry

    def _encoded_once(self, query: Query) -> tuple[Encoded, dict[str, torch.Tensor], str]:
        """``_batch([query])`` plus the image's digest; each image is processed once per block."""
        digest = image_digest(query.image)
        if query.image is None:
            return self._encode(query, 0), {}, digest
        if digest not in self.prefix_cache.images:
            image_inputs, (count,) = self._image_inputs([query])
            self.prefix_cache.images[digest] = (image_inputs, count)
        image_inputs, count = self.prefix_cache.images[digest]
        return self._encode(query, count), image_inputs, digest

    def _teacher_forced_reusing(self, query: Query, k: int) -> ForwardResult | None:
        if not query.prefix:
            return None
        enc, image_inputs, image = self._encoded_once(query)
        limit = enc.answer_start - 1 if query.target else len(enc.ids) - 1
        entry = self._reusable_entry(image, enc, image_inputs, limit)
        if entry is None:
            return None
        n = len(entry.ids)
        ids = torch.tensor([enc.ids], dtype=torch.long, device=self.device)
        try:
            suffix = self.model(input_ids=ids[:, n:], attention_mask=torch.ones_like(ids), use_cache=True,
                                **{self._cache_keyword: entry.cache}).logits[0]
        finally:
            crop_to(entry.cache, n)
        kept = torch.stack([entry.logits[p] if p < n else suffix[p - n] for p in enc.kept])
        return self._scored(kept, suffix[enc.answer_start - 1 - n : len(enc.ids) - 1 - n], enc, k)

    def _generate_reusing(self, query: Query, max_new_tokens: int, until: list[str] | None) -> str | None:
        if not query.prefix:
            return None
        enc, image_inputs, image = self._encoded_once(Query(query.prompt, query.image, "", query.prefix))
        entry = self._reusable_entry(image, enc, image_inputs, len(enc.ids) - 1)
        if entry is None:
            return None
        ids = torch.tensor([enc.ids], dtype=torch.long, device=self.device)
        try:
            # The full ids with the cache of their start: generate runs only the uncached ones.
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **{self._cache_keyword: entry.cache},
                                      **self._generation_settings(max_new_tokens, until))
        finally:
            crop_to(entry.cache, len(entry.ids))
        text = self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        return cut(text, until or [])

    # -- parameter groups ---------------------------------------------------------------------
    def parameter_group(self, group: str, last_k: int | tuple[int, ...] = 1) -> dict[str, torch.nn.Parameter]:
        """The live parameters of ``group`` (see the module docstring); ``last_k`` layers for ``{last}``
        (a tuple: those layer indices)."""
        if group not in self.parameter_groups:
            raise ParameterGroupError(f"{self.label}: unknown parameter group {group!r}; known: {sorted(self.parameter_groups)}")
        return resolve_parameter_group(self.model, group, self.parameter_groups[group], last_k)
