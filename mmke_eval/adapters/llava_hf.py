"""Adapter for LLaVA models loaded with transformers (lmms-eval's ``llava_hf`` backend).

Input formats (``prompt_format``):

* ``raw`` (default, the VLKEB/MMKE-Bench LLaVA protocol): the text is tokenized on its own with
  the tokenizer's special tokens (BOS for LLaMA), and the image placeholder is inserted right
  after BOS, then expanded to the image's patch tokens. No conversation template.
* ``chat``: the processor's chat template, the image in the user turn before the text, the
  generation prompt added; the target follows the generation prompt.

The text is ``prefix + prompt``; teacher forcing appends ``" " + target``. Answer tokens are the
tokens the target adds at the end (tokenize with and without it), so a tokenizer's leading-space
handling never shifts the span. Query positions (for locality) are every position except the
prefix tokens, found the same way (tokenize with and without the prefix).

LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``) goes through the same code: the
processor expands the image into a size-dependent number of tokens and returns ``image_sizes``,
which are passed on. Its processor cannot be built without torchvision in transformers 5.x
(``LlavaOnevisionProcessor`` insists on a video processor), so that path is untested here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mmke_eval.adapters.base import ForwardResult, ModelAdapter, Query

PROMPT_FORMATS = ("raw", "chat")
# Keys of a processor's output that describe text, not the image.
_TEXT_KEYS = {"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"}
# Reference FT-LLM edits these two of the LLaMA MLP's three matrices (layers.31 in LLaVA-1.5-7B).
_MLP_EDIT_WEIGHTS = ("up_proj", "down_proj")


@dataclass
class _Encoded:
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


def _common_prefix_len(*seqs: list[int]) -> int:
    n = 0
    for column in zip(*seqs):
        if any(tok != column[0] for tok in column[1:]):
            break
        n += 1
    return n


class LlavaHFAdapter(ModelAdapter):
    """LLaVA-1.5 / LLaVA-OneVision through transformers; see the module docstring for the format."""

    family = "llava"

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        device: torch.device | str | None = None,
        prompt_format: str = "raw",
        batch_size: int = 4,
    ):
        super().__init__(model, processor, device)
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"llava adapter: prompt_format must be one of {PROMPT_FORMATS}, not {prompt_format!r}")
        if int(batch_size) < 1:
            raise ValueError("llava adapter: batch_size must be >= 1")
        self.prompt_format = prompt_format
        self.batch_size = int(batch_size)
        self.tokenizer = processor.tokenizer
        self.image_token_id = self._find_image_token_id()
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        self._empty_body_ids: dict[bool, list[int]] = {}

    @classmethod
    def from_lmms(cls, lmms_model: Any, **options: Any) -> "LlavaHFAdapter":
        """Share the model of an lmms-eval ``llava_hf`` instance (its ``_image_processor`` is the processor)."""
        known = {"prompt_format", "batch_size"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"llava adapter: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(lmms_model.model, lmms_model._image_processor, device=lmms_model.device, **options)

    def _find_image_token_id(self) -> int:
        config_id = getattr(self.model.config, "image_token_id", None)
        if config_id is None:  # transformers 4.x spelling
            config_id = getattr(self.model.config, "image_token_index", None)
        processor_id = getattr(self.processor, "image_token_id", None)
        token_id = processor_id if processor_id is not None else config_id
        if token_id is None:
            raise ValueError("llava adapter: cannot find the image token id in the processor or the model config")
        return int(token_id)

    # -- protocol facts ---------------------------------------------------------------------
    def describe(self) -> dict:
        layout = {
            "raw": "BOS, image tokens (if any), prefix + prompt [+ ' ' + target]; no conversation template",
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
        }

    @property
    def max_length(self) -> int:
        """Longest input the model takes (positions)."""
        text_config = getattr(self.model.config, "text_config", self.model.config)
        limits = [getattr(text_config, "max_position_embeddings", None), getattr(self.tokenizer, "model_max_length", None)]
        limits = [int(x) for x in limits if x is not None and x < 10**7]  # tokenizers use 1e30 for "unset"
        return min(limits) if limits else 2048

    def count_tokens(self, query: Query) -> int:
        """Positions the model sees for ``query`` (special, image, prefix, prompt and target tokens)."""
        counts = self._image_inputs([query.image])[1] if query.image is not None else [0]
        return len(self._encode(query, counts[0]).ids)

    # -- input building ---------------------------------------------------------------------
    def _text_ids(self, body: str, target: str, has_image: bool) -> list[int]:
        """Unexpanded token ids (one image placeholder) of ``body`` [+ target]."""
        if self.prompt_format == "raw":
            text = f"{body} {target}" if target else body
            ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
            if has_image:
                at = 1 if ids and ids[0] == self.tokenizer.bos_token_id else 0
                ids = ids[:at] + [self.image_token_id] + ids[at:]
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
        at = ids.index(self.image_token_id)
        return ids[:at] + [self.image_token_id] * n_image_tokens + ids[at + 1 :]

    def _encode(self, query: Query, n_image_tokens: int) -> _Encoded:
        has_image = query.image is not None
        body = query.prefix + query.prompt
        full = self._expanded_ids(body, query.target, has_image, n_image_tokens)
        answer_start = len(full)
        if query.target:
            no_target = self._expanded_ids(body, "", has_image, n_image_tokens)
            is_prefix = full[: len(no_target)] == no_target
            answer_start = len(no_target) if is_prefix else _common_prefix_len(full, no_target)
            if answer_start == 0:
                raise ValueError("llava adapter: nothing precedes the target, its first token cannot be scored")
        prefix_start, prefix_len = len(full), 0
        if query.prefix:
            no_prefix = self._expanded_ids(query.prompt, query.target, has_image, n_image_tokens)
            empty = self._expanded_ids("", "", has_image, n_image_tokens)
            # Cap at the empty-body tokens: a prefix that starts like the prompt is still prefix.
            prefix_start = _common_prefix_len(full, no_prefix, empty)
            prefix_len = max(len(full) - len(no_prefix), 0)
        return _Encoded(full, prefix_start, prefix_len, answer_start)

    def _image_inputs(self, images: list[Any]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """Processor outputs for the images (pixel_values, image_sizes, ...) and tokens per image."""
        texts = [self.processor.image_token] * len(images)
        out = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        counts = (out["input_ids"] == self.image_token_id).sum(dim=1).tolist()
        dtype = self.model.dtype
        inputs = {
            key: value.to(self.device, dtype) if value.is_floating_point() else value.to(self.device)
            for key, value in out.items()
            if key not in _TEXT_KEYS and isinstance(value, torch.Tensor)
        }
        return inputs, counts

    def _batch(self, queries: list[Query]) -> tuple[list[_Encoded], dict[str, torch.Tensor]]:
        """Encode queries that all have an image, or all have none."""
        images = [q.image for q in queries if q.image is not None]
        if images and len(images) != len(queries):
            raise ValueError("llava adapter: a batch mixes image and text-only queries")
        image_inputs, counts = self._image_inputs(images) if images else ({}, [0] * len(queries))
        return [self._encode(q, n) for q, n in zip(queries, counts)], image_inputs

    def _padded(self, encoded: list[_Encoded], left: bool) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(e.ids) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            span = slice(width - len(e.ids), width) if left else slice(0, len(e.ids))
            ids[row, span] = torch.tensor(e.ids, dtype=torch.long)
            mask[row, span] = 1
        return ids.to(self.device), mask.to(self.device)

    def _chunks(self, queries: list[Query]) -> list[list[int]]:
        """Indices of ``queries`` in batches: text-only and image queries apart, input order kept."""
        groups = [[i for i, q in enumerate(queries) if q.image is None], [i for i, q in enumerate(queries) if q.image is not None]]
        return [g[s : s + self.batch_size] for g in groups for s in range(0, len(g), self.batch_size)]

    # -- the three operations -----------------------------------------------------------------
    @torch.no_grad()
    def teacher_forced(self, queries: list[Query], k: int = 10) -> list[ForwardResult]:
        results: list[ForwardResult | None] = [None] * len(queries)
        for chunk in self._chunks(queries):
            encoded, image_inputs = self._batch([queries[i] for i in chunk])
            ids, mask = self._padded(encoded, left=False)  # right padding: real positions unchanged
            logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False, **image_inputs).logits
            for row, (i, enc) in enumerate(zip(chunk, encoded)):
                results[i] = self._forward_result(logits[row, : len(enc.ids)], enc, k)
        return results  # type: ignore[return-value]

    def _forward_result(self, logits: torch.Tensor, enc: _Encoded, k: int) -> ForwardResult:
        topk = logits[enc.kept].topk(k, dim=-1).indices.cpu()
        answer_ids = enc.ids[enc.answer_start :]
        if not answer_ids:
            n = len(enc.kept)
            return ForwardResult(float("nan"), [], [], topk, slice(n, n))
        first_row = enc.row_of(enc.answer_start - 1)  # logits[t-1] predict token t
        predicted = logits[enc.answer_start - 1 : len(enc.ids) - 1].argmax(dim=-1).tolist()
        correct = sum(p == a for p, a in zip(predicted, answer_ids))
        return ForwardResult(
            token_acc=correct / len(answer_ids),
            answer_ids=answer_ids,
            predicted_ids=predicted,
            topk=topk,
            answer_positions=slice(first_row, first_row + len(answer_ids)),
        )

    def target_loss(self, query: Query) -> torch.Tensor:
        if not query.target:
            raise ValueError("llava adapter: target_loss needs a query with a target")
        with torch.enable_grad():
            (enc,), image_inputs = self._batch([query])
            ids = torch.tensor([enc.ids], dtype=torch.long, device=self.device)
            logits = self.model(input_ids=ids, use_cache=False, **image_inputs).logits[0]
            labels = ids[0, enc.answer_start :]
            return F.cross_entropy(logits[enc.answer_start - 1 : -1].float(), labels)

    @torch.no_grad()
    def generate(self, queries: list[Query], max_new_tokens: int = 32, until: list[str] | None = None) -> list[str]:
        outputs = [""] * len(queries)
        for chunk in self._chunks(queries):
            # The target is never part of a generation input.
            encoded, image_inputs = self._batch([Query(q.prompt, q.image, "", q.prefix) for q in (queries[i] for i in chunk)])
            ids, mask = self._padded(encoded, left=True)  # left padding: every row continues at the end
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                **image_inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=self.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                # Stop decoding at the task's stop strings instead of paying for max_new_tokens.
                **({"stop_strings": list(until), "tokenizer": self.tokenizer} if until else {}),
            )
            texts = self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
            for i, text in zip(chunk, texts):
                outputs[i] = _cut(text, until or [])
        return outputs

    # -- parameter groups ---------------------------------------------------------------------
    def parameter_group(self, group: str) -> dict[str, torch.nn.Parameter]:
        finders = {"llm_last_mlp": self._last_mlp_params, "alignment": self._projector_params, "vision": self._vision_params}
        if group not in finders:
            raise ValueError(f"llava adapter: unknown parameter group {group!r}; known: {sorted(finders)}")
        wanted = {id(p) for p in finders[group]()}
        named = {name: p for name, p in self.model.named_parameters() if id(p) in wanted}
        if not named:
            raise ValueError(f"llava adapter: parameter group {group!r} is empty for {type(self.model).__name__}")
        return named

    def _last_mlp_params(self) -> list[torch.nn.Parameter]:
        layers = getattr(self.model.get_decoder(), "layers", None)
        if not layers:
            raise ValueError(f"llava adapter: the language model of {type(self.model).__name__} has no .layers")
        mlp = layers[-1].mlp
        chosen = [getattr(mlp, name).weight for name in _MLP_EDIT_WEIGHTS if hasattr(mlp, name)]
        return chosen or [p for name, p in mlp.named_parameters() if name.endswith("weight")]

    def _projector_params(self) -> list[torch.nn.Parameter]:
        return list(self._submodule("multi_modal_projector").parameters())

    def _vision_params(self) -> list[torch.nn.Parameter]:
        return list(self._submodule("vision_tower").parameters())

    def _submodule(self, name: str) -> torch.nn.Module:
        # transformers 5 nests it under .model, 4.x had it on the top module; take the shallowest.
        found = [(full.count("."), module) for full, module in self.model.named_modules() if full.split(".")[-1] == name]
        if not found:
            raise ValueError(f"llava adapter: {type(self.model).__name__} has no {name} module")
        return min(found, key=lambda item: item[0])[1]


def _cut(text: str, until: list[str]) -> str:
    """Cut at the earliest stop string, then strip."""
    cuts = [text.find(stop) for stop in until if stop and stop in text]
    return (text[: min(cuts)] if cuts else text).strip()
