"""The reference's SERAC (MMKE-Bench / VLKEB ``SERAC_MULTI``), run from its published checkpoints.

    mmke-eval convert-checkpoint --editor serac --reference SERAC/llava_...pt --model llava_hf \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cuda,device_map=cuda,dtype=float16 --output_path ckpt/serac_mmke
    mmke-eval --editor serac_ref --editor_args checkpoint=ckpt/serac_mmke --model llava_hf ...

mmke-eval's own SERAC (editors/serac.py) is another design, trained here. This editor computes what
the reference's does with the tensors it learned (docs/editors.md, "What the SERAC files hold"):

* **Memory**: an edit appends (key text, counterfactual prefix); ``restore`` removes exactly that
  entry, so independent cases see an empty memory and sequential editing keeps every edit so far.
* **Scope classifier**: a DistilBERT (``cls_name``'s config and WordPiece tokenizer, the
  checkpoint's weights); a text's embedding is its CLS position's last hidden state. The scope score
  of a query is ``max over entries of exp(-scale * ||e_query - e_key||^2)`` (``scale`` a buffer of
  the checkpoint, 1 in the reference); the entry reaching it is the one used.
* **What it compares** (``cls_input``): ``prompt`` (default, our fix) the edit prompt with the
  probe's prompt, never the probe's answer; ``reference`` the paper's: the edit text ``"src alt"``
  without its last whitespace word, then ``[SEP]`` appended as text (the classifier reads ``[CLS] ...
  [SEP] [SEP]``, as the reference tokenises its cache keys), with the probe's prompt and answer (reference pitfall 4: the
  classifier sees the answer being scored). Generation has no answer: both compare the prompt.
* **Counterfactual model**: a separate causal LM (``small_name``) whose trained tensors come from
  the checkpoint. It reads the entry's prefix ``"{src} {alt} "`` before the probe's text, in the
  base model's input layout (the adapter's token ids: image tokens, then the text). At the
  image-token positions it receives, for LLaVA-1.5 (Vicuna-7B-v1.5, layer 31 trained), the base
  model's own image features (vision tower, projector: ``adapter.image_token_features``), as the
  reference's ``prepare_inputs_labels_for_multimodal`` gives them; for BLIP-2 (all of OPT-125m
  trained), the base model's Q-Former outputs through the checkpoint's own ``language_projection``
  (never trained by the reference: reference pitfall 5; its saved values are the ones it used).
* **Output**: per position ``p = (1 - s) softmax(base) + s softmax(counterfactual)``, ``s`` the
  query's scope score; the counterfactual positions are right-aligned to the base model's (the
  prefix comes first, so the last positions correspond). Teacher-forced results (argmax, top-k,
  token accuracy) come from ``log p`` through the adapter's own scoring; generation is greedy on
  ``p``, both models continuing from their key/value caches. A query whose score is exactly 0 (an
  empty memory, or a distance so large that the exponential underflows) is answered by the adapter
  itself, bit-identical to the unedited model.

LLaVA-1.5 (``llava_hf``) and BLIP-2 (``blip2_hf``) are supported; MiniGPT-4's SERAC (a Vicuna fed
by MiniGPT-4's own image path) and every other model are refused, naming the model.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from editors.base import ConfigError, EditHandle, Editor, EditorConfig, EditRequest
from editors.learned import WEIGHTS_FILE, CheckpointError, model_fingerprint
from editors.serac_reference_checkpoint import (REFERENCE_FORMAT, check_serac_file, convert_reference_file, image_path_modules,
                                                own_projection, pretrained, read_checkpoint)
from mmke_eval.adapters.base import ForwardResult, Query
from mmke_eval.reference.safe_pickle import ConversionError

CLS_INPUTS = ("prompt", "reference")
DEFAULT_CLS_NAME = "distilbert-base-uncased"  # the reference's hparams/TRAINING/SERAC cls_name
# The reference's counterfactual model per model family (hparams/TRAINING/SERAC small_name).
DEFAULT_SMALL_NAMES = {"llava": "lmsys/vicuna-7b-v1.5", "blip2": "facebook/opt-125m"}
CF_PREFIX = "{prompt} {target} "  # the reference's cached "src alt "


@dataclass
class SERACReferenceConfig(EditorConfig):
    checkpoint: str = field(default="", metadata={
        "help": "folder written by `mmke-eval convert-checkpoint --editor serac` from a reference SERAC file"})
    cls_name: str = field(default="", metadata={
        "help": "the scope classifier's DistilBERT (folder or hub name): its config and WordPiece tokenizer, the "
                "weights come from the checkpoint; default: the checkpoint's (distilbert-base-uncased)"})
    small_name: str = field(default="", metadata={
        "help": "the counterfactual language model (folder or hub name) whose tensors the checkpoint's trained ones "
                "replace; default: the checkpoint's (lmsys/vicuna-7b-v1.5 for LLaVA, facebook/opt-125m for BLIP-2)"})
    cls_input: str = field(default="prompt", metadata={
        "help": "what the scope classifier compares: 'prompt' (the edit prompt with the probe's prompt, never its "
                "answer) or 'reference' (the paper's: the edit text minus its last word + '[SEP]' with the probe's "
                "prompt and answer, reference pitfall 4)"})

    def __post_init__(self):
        if self.cls_input not in CLS_INPUTS:
            raise ConfigError(f"editor 'serac_ref': cls_input must be one of {CLS_INPUTS}, not {self.cls_input!r}")


# -- the scores ----------------------------------------------------------------------------------------
def mixture_log_probs(base_logits: torch.Tensor, cf_logits: torch.Tensor, s: float) -> torch.Tensor:
    """``log((1 - s) softmax(base) + s softmax(cf))`` per position, float32. The counterfactual
    model's vocabulary may be shorter than the base model's (llava-hf adds ``<image>`` and
    ``<pad>`` to Vicuna's 32000): it gives the extra ids probability 0."""
    base = torch.log_softmax(base_logits.float(), dim=-1)
    cf = torch.log_softmax(cf_logits.float(), dim=-1)
    if cf.shape[-1] > base.shape[-1]:
        raise ValueError(f"the counterfactual model's vocabulary ({cf.shape[-1]}) is larger than the base model's ({base.shape[-1]})")
    if cf.shape[-1] < base.shape[-1]:
        cf = torch.cat([cf, cf.new_full((*cf.shape[:-1], base.shape[-1] - cf.shape[-1]), float("-inf"))], dim=-1)
    s_t = torch.tensor(float(s), dtype=torch.float32, device=base.device)
    return torch.logaddexp(base + torch.log1p(-s_t), cf + torch.log(s_t))


def input_embeddings(model, ids: list[int], image_token_id: int, features: torch.Tensor | None) -> torch.Tensor:
    """[1, positions, hidden] input embeddings of a causal LM for ``ids``, the image features at the
    image tokens' positions (LLaVA's own merge, done for any LM of its width)."""
    table = model.get_input_embeddings()
    ids_t = torch.tensor([ids], dtype=torch.long, device=table.weight.device)
    image = ids_t == image_token_id
    outside = (~image) & (ids_t >= table.num_embeddings)
    if outside.any():
        raise ConfigError(f"editor 'serac_ref': token id {int(ids_t[outside][0])} is outside the vocabulary of "
                          f"{type(model).__name__} ({table.num_embeddings} ids): the counterfactual model must read the base "
                          "model's token ids")
    embeds = table(ids_t.masked_fill(image, 0))
    n_image = int(image.sum())
    if n_image:
        if features is None or features.shape[0] != n_image:
            raise ValueError(f"{n_image} image tokens but {0 if features is None else features.shape[0]} image features")
        embeds = embeds.masked_scatter(image.unsqueeze(-1).expand_as(embeds), features.to(embeds.device, embeds.dtype))
    return embeds


def lm_logits(model, ids: list[int], image_token_id: int, features: torch.Tensor | None) -> torch.Tensor:
    """Logits [positions, vocab] of a causal LM on ``ids`` with the image features merged."""
    embeds = input_embeddings(model, ids, image_token_id, features)
    return model(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device),
                 use_cache=False).logits[0]


class Decoder:
    """Greedy decoding state of one causal LM: the input once (image features merged), then one
    token at a time from its key/value cache. ``logits``: the next token's, [vocab]."""

    def __init__(self, model, ids: list[int], image_token_id: int, features: torch.Tensor | None):
        self.model, self.length = model, len(ids)
        # The cache's keyword: ``cache`` from transformers 5.24, ``past_key_values`` before.
        self.keyword = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
        embeds = input_embeddings(model, ids, image_token_id, features)
        self._read(model(inputs_embeds=embeds, attention_mask=self._mask(), use_cache=True, logits_to_keep=1))

    def _mask(self) -> torch.Tensor:
        return torch.ones((1, self.length), dtype=torch.long, device=self.model.get_input_embeddings().weight.device)

    def _read(self, out) -> None:
        cache = getattr(out, "cache", None)
        self.cache = out.past_key_values if cache is None else cache
        self.logits = out.logits[0, -1]

    def step(self, token: int) -> None:
        self.length += 1
        ids = torch.tensor([[token]], dtype=torch.long, device=self.model.get_input_embeddings().weight.device)
        self._read(self.model(input_ids=ids, attention_mask=self._mask(), use_cache=True, logits_to_keep=1,
                              **{self.keyword: self.cache}))


# -- the editor ------------------------------------------------------------------------------------------
@dataclass(eq=False)
class ReferenceEntry:
    """One edit in the memory."""

    request: EditRequest
    key_text: str  # what the classifier embeds of it
    prefix: str  # what the counterfactual model reads before a probe's text
    key_embedding: torch.Tensor  # [dim], the classifier's CLS embedding of key_text


class SERACReferenceEditor(Editor):
    """The reference's SERAC from a converted checkpoint; see the module docstring."""

    name = "serac_ref"
    config_class = SERACReferenceConfig
    reference_locality_span = "sequence"
    multi_image = ("K memory entries, one per edit image (the same key text and prefix: the reference's memory holds "
                   "text only, so they score as one entry)")
    # What `mmke-eval train-editor --editor serac_ref` answers (mmke_eval/cli/train.py).
    training_note = ("runs the reference's published SERAC checkpoints (convert one with `mmke-eval convert-checkpoint "
                     "--editor serac`); it is not trained here. Train mmke-eval's own SERAC with "
                     "`mmke-eval train-editor --editor serac`")

    def __init__(self, config: SERACReferenceConfig | None = None):
        super().__init__(config)
        self.memory: list[ReferenceEntry] = []
        self.classifier = self.cls_tokenizer = self.replacement = self.projection = None
        self.scale: float = 1.0
        self.cls_name = self.config.cls_name
        self.small_name = self.config.small_name
        self._meta: dict[str, Any] | None = None
        self._built_for: int | None = None

    # -- loading ---------------------------------------------------------------------------------------------
    @staticmethod
    def check_adapter(adapter) -> int:
        """Refuse a model this editor cannot serve; return the width of what the counterfactual
        model's image path starts from (the base model's image features, or BLIP-2's Q-Former outputs)."""
        from PIL import Image

        model = type(getattr(adapter, "model", None)).__name__
        if not all(callable(getattr(adapter, m, None)) for m in ("image_token_features", "text_model")):
            raise ConfigError(
                f"editor 'serac_ref': the reference's SERAC is implemented for LLaVA-1.5 (--model llava_hf) and BLIP-2 "
                f"(--model blip2_hf), not {model} (family {getattr(adapter, 'family', '?')!r}); MiniGPT-4's (a Vicuna fed "
                "by MiniGPT-4's own image path) is not. mmke-eval's own SERAC (--editor serac) runs on every model")
        blank = Image.new("RGB", (32, 32))
        try:
            start = adapter.query_outputs(blank) if own_projection(adapter) else adapter.image_token_features(blank)
        except ValueError as err:
            raise ConfigError(f"editor 'serac_ref': {err}") from None
        return int(start.shape[-1])

    def default_names(self, adapter, meta: dict[str, Any] | None = None) -> tuple[str, str]:
        """(cls_name, small_name): the options, else the checkpoint's, else the reference's for the family."""
        saved = (meta or {}).get("config", {})
        cls_name = self.config.cls_name or saved.get("cls_name") or DEFAULT_CLS_NAME
        small_name = self.config.small_name or saved.get("small_name") or DEFAULT_SMALL_NAMES.get(adapter.family, "")
        if not small_name:
            raise ConfigError(f"editor 'serac_ref': the reference names no counterfactual model for family "
                              f"{adapter.family!r}; pass --editor_args small_name=PATH")
        return cls_name, small_name

    # -- the reference's file (mmke-eval convert-checkpoint --editor serac) -------------------------------------
    reference_format = REFERENCE_FORMAT

    @staticmethod
    def check_reference(path: Path) -> None:
        """Refuse, reading no tensor, a file whose ``"model"`` is not a SERAC state dict (before a model loads)."""
        check_serac_file(path)

    def from_reference(self, adapter, reference: str | Path, output: str | Path,
                       inner_params: list[str] | None = None, command: str = "") -> dict[str, Any]:
        """A reference SERAC_MULTI file as this editor's checkpoint (editors/serac_reference_checkpoint.py)."""
        if inner_params:
            raise ConversionError("--inner_params: a SERAC file edits no weight of the base model")
        return convert_reference_file(self, adapter, reference, output, command)

    @staticmethod
    def conversion_summary(meta: dict[str, Any], path: Path) -> str:
        conv = meta["converted_from"]
        return (f"SERAC from {path.name} (step {conv['step']}): the classifier ({conv['classifier_tensors']} tensors of "
                f"{meta['config']['cls_name']}) and {len(conv['replacement_tensors'])} trained tensors of "
                f"{meta['config']['small_name']} (layers {conv['replacement_layers']})")

    def ensure_ready(self, adapter) -> None:
        if self._built_for == id(adapter):
            return
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

        if not self.config.checkpoint:
            raise ConfigError("editor 'serac_ref' needs a converted reference checkpoint: `mmke-eval convert-checkpoint "
                              "--editor serac --reference FILE.pt --model llava_hf --model_args ... --output_path CKPT`, "
                              "then --editor_args checkpoint=CKPT")
        width = self.check_adapter(adapter)
        folder = Path(self.config.checkpoint).expanduser()
        meta, tensors = read_checkpoint(folder)
        if "scale" not in tensors:
            raise CheckpointError(f"{folder}: {WEIGHTS_FILE} has no 'scale' (the scope similarity's buffer)")
        saved, now = meta.get("base_model") or {}, model_fingerprint(adapter, image_path_modules(adapter))
        if (saved.get("fingerprint"), saved.get("config_digest")) != (now["fingerprint"], now["config_digest"]):
            raise CheckpointError(
                f"{folder} was converted for another base model: checkpoint {saved.get('name_or_path')!r} ({saved.get('class')}, "
                f"config {str(saved.get('config_digest'))[:12]}, alignment module {str(saved.get('fingerprint'))[:12]}); this run "
                f"{now['name_or_path']!r} ({now['class']}, config {now['config_digest'][:12]}, alignment module {now['fingerprint'][:12]})")
        self.cls_name, self.small_name = self.default_names(adapter, meta)
        device, dtype = adapter.device, adapter.model.dtype

        config = pretrained(AutoConfig, self.cls_name, "cls_name")
        self.cls_tokenizer = pretrained(AutoTokenizer, self.cls_name, "cls_name")
        classifier = AutoModel.from_config(config)
        state = {k[len("classifier."):]: v for k, v in tensors.items() if k.startswith("classifier.")}
        try:
            classifier.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(line.strip() for line in str(err).splitlines()[:2])
            raise CheckpointError(f"{folder}: its classifier does not fit cls_name={self.cls_name}: {detail}") from None
        self.classifier = classifier.to(device).eval()
        self.scale = float(tensors["scale"])

        replacement = pretrained(AutoModelForCausalLM, self.small_name, "small_name", dtype=dtype)
        trained = {k[len("replacement."):]: v for k, v in tensors.items() if k.startswith("replacement.")}
        shapes = {k: tuple(v.shape) for k, v in replacement.state_dict().items()}
        wrong = [k for k, v in trained.items() if shapes.get(k) != tuple(v.shape)]
        if wrong:
            raise CheckpointError(f"{folder}: replacement.{wrong[0]} has shape {list(trained[wrong[0]].shape)}; small_name="
                                  f"{self.small_name} has {list(shapes[wrong[0]]) if wrong[0] in shapes else 'no such tensor'}")
        replacement.load_state_dict(trained, strict=False)  # the trained tensors; the rest stays small_name's
        embed = replacement.get_input_embeddings().embedding_dim
        self.projection = None
        if own_projection(adapter):
            weight, bias = tensors.get("language_projection.weight"), tensors.get("language_projection.bias")
            if weight is None or bias is None or tuple(weight.shape) != (embed, width) or tuple(bias.shape) != (embed,):
                raise CheckpointError(f"{folder}: needs language_projection.weight [{embed}, {width}] and .bias [{embed}] "
                                      f"(this model's Q-Former to small_name={self.small_name}); it has "
                                      f"{None if weight is None else list(weight.shape)}, {None if bias is None else list(bias.shape)}")
            self.projection = torch.nn.Linear(width, embed).to(device, dtype)
            self.projection.load_state_dict({"weight": weight, "bias": bias})
        elif embed != width:
            raise ConfigError(f"editor 'serac_ref': small_name={self.small_name} embeds tokens in {embed} dimensions; "
                              f"the base model's image features have {width}")
        self.replacement = replacement.to(device).eval()
        self._meta = meta
        self._built_for = id(adapter)

    # -- the classifier -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """The classifier's CLS embeddings [len(texts), dim] (float32)."""
        limit = int(getattr(self.classifier.config, "max_position_embeddings", 512))
        batch = self.cls_tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=limit)
        device = next(self.classifier.parameters()).device
        out = self.classifier(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        return out.last_hidden_state[:, 0].float()

    def key_text(self, request: EditRequest) -> str:
        if self.config.cls_input == "reference":
            # The reference's cache key: the edit's text input "src alt" minus its last word, then the
            # classifier tokenizer's sep_token appended as text (SERAC.py build_cls_cache_inputs), so
            # the classifier reads "[CLS] ... [SEP] [SEP]".
            sep = getattr(self.cls_tokenizer, "sep_token", None)
            if not sep:
                raise ConfigError(f"editor 'serac_ref': cls_input=reference needs the classifier tokenizer's sep_token; "
                                  f"cls_name={self.cls_name} has none")
            return f"{request.prompt} {request.target}".rsplit(" ", 1)[0] + sep
        return request.prompt

    def query_text(self, query: Query) -> str:
        if self.config.cls_input == "reference" and query.target:  # the probe's text input, answer included
            return f"{query.prompt} {query.target}"
        return query.prompt

    def scope(self, queries: list[Query]) -> list[tuple[ReferenceEntry | None, float]]:
        """Per query: the memory entry most similar to it and the similarity ``exp(-scale * d^2)``."""
        if not self.memory or not queries:
            return [(None, 0.0)] * len(queries)
        found = self.embed([self.query_text(q) for q in queries])
        keys = torch.stack([e.key_embedding for e in self.memory]).to(found.device)
        similarity = torch.exp(-self.scale * ((found[:, None, :] - keys[None, :, :]) ** 2).sum(-1))
        best_s, best = similarity.max(dim=1)
        return [(self.memory[int(i)], float(s)) for s, i in zip(best_s, best)]

    # -- editing --------------------------------------------------------------------------------------------------
    def apply(self, adapter, request: EditRequest) -> EditHandle:
        self.ensure_ready(adapter)
        started = time.perf_counter()
        # edit_images=K: K memory entries, one per edit image. The reference's memory holds text only
        # ("src alt"), so the K entries are the same to its classifier and counterfactual model.
        requests = [replace(request, image=image, extra_images=()) for image in (request.image, *request.extra_images)]
        key = self.key_text(request)
        embedding = self.embed([key])[0]
        entries = [ReferenceEntry(r, key, CF_PREFIX.format(prompt=r.prompt, target=r.target), embedding) for r in requests]
        self.memory.extend(entries)
        return EditHandle(editor=self.name, stats={"memory": len(self.memory), "edit_images": len(entries),
                                                   "memory_entries_added": len(entries),
                                                   "seconds": round(time.perf_counter() - started, 4)},
                          responder=SERACReferenceResponder(self, adapter, entries))

    def restore(self, adapter, handle: EditHandle) -> None:
        """Remove exactly the handle's memory entries (no weight was changed)."""
        mine = getattr(handle.responder, "entries", [])
        self.memory = [e for e in self.memory if all(e is not m for m in mine)]

    def describe(self) -> dict[str, Any]:
        described = {
            **super().describe(),
            "cls_name_resolved": self.cls_name, "small_name_resolved": self.small_name,
            "classifier_input": ("reference: edit text minus its last word + '[SEP]' as text vs the probe's prompt and answer (pitfall 4)"
                                 if self.config.cls_input == "reference" else "prompt: edit prompt vs the probe's prompt, never its answer"),
            "mixture": "soft (the reference): (1 - s) p_base + s p_cf, s = max over memory of exp(-scale * ||CLS_q - CLS_k||^2); "
                       "counterfactual positions right-aligned to the base model's",
        }
        if self._meta is not None:
            described["checkpoint_info"] = {"editor": "serac_ref", "base_model": (self._meta.get("base_model") or {}).get("name_or_path"),
                                            "converted_from": self._meta.get("converted_from")}
        return described


class SERACReferenceResponder:
    """Answers post-edit queries in the adapter's place with the reference's soft mixture; the
    adapter's ``teacher_forced`` and ``generate`` signatures and semantics."""

    def __init__(self, editor: SERACReferenceEditor, adapter, entries: list[ReferenceEntry]):
        self.editor, self.adapter, self.entries = editor, adapter, entries  # this edit's (restore removes them)
        self.last_scope: list[float] = []  # scope scores of the last call's queries (diagnostics)

    @torch.no_grad()
    def _features(self, query: Query) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The image features the base model and the counterfactual model read for ``query``."""
        if query.image is None:
            return None, None
        base = self.adapter.image_token_features(query.image)
        if self.editor.projection is None:
            return base, base
        return base, self.editor.projection(self.adapter.query_outputs(query.image).to(self.editor.projection.weight.dtype))

    def _ids(self, query: Query, entry: ReferenceEntry) -> tuple[Any, list[int]]:
        """The base model's encoding of ``query`` and the counterfactual model's ids (prefix first)."""
        return self.adapter.encoded(query), self.adapter.encoded(replace(query, prefix=entry.prefix + query.prefix)).ids

    @torch.no_grad()
    def mixed_log_probs(self, query: Query, entry: ReferenceEntry, s: float):
        """(the base model's encoding of ``query``, ``log p`` [its positions, vocab]) of the mixture."""
        enc, cf_ids = self._ids(query, entry)
        base_features, cf_features = self._features(query)
        base = lm_logits(self.adapter.text_model(), enc.ids, self.adapter.image_token_id, base_features)
        cf = lm_logits(self.editor.replacement, cf_ids, self.adapter.image_token_id, cf_features)
        shift = len(cf_ids) - len(enc.ids)
        answer = enc.ids[enc.answer_start:]
        if shift < 0 or (answer and cf_ids[len(cf_ids) - len(answer):] != answer):
            raise ValueError(f"serac_ref: the counterfactual input of {query.prompt!r} does not end with the base input's answer "
                             "tokens; right-alignment would compare other tokens")
        return enc, mixture_log_probs(base, cf[shift:], s)

    def _split(self, queries: list[Query]) -> tuple[list[int], list[tuple[int, ReferenceEntry, float]]]:
        routes = self.editor.scope(queries)
        self.last_scope = [s for _, s in routes]
        plain = [i for i, (_, s) in enumerate(routes) if s == 0.0]
        mixed = [(i, entry, s) for i, (entry, s) in enumerate(routes) if s != 0.0]
        return plain, mixed

    def teacher_forced(self, queries: list[Query], k: int = 10) -> list[ForwardResult]:
        plain, mixed = self._split(queries)
        if not mixed:  # exactly the adapter's call: bit-identical to the unedited model
            return self.adapter.teacher_forced(queries, k=k)
        out: list = [None] * len(queries)
        if plain:
            for i, result in zip(plain, self.adapter.teacher_forced([queries[i] for i in plain], k=k)):
                out[i] = result
        for i, entry, s in mixed:
            enc, log_p = self.mixed_log_probs(queries[i], entry, s)
            out[i] = self.adapter.result_from_scores(log_p, enc, k)
        return out

    def generate(self, queries: list[Query], max_new_tokens: int = 32, until: list[str] | None = None) -> list[str]:
        queries = [Query(q.prompt, q.image, "", q.prefix) for q in queries]  # the target is never an input
        plain, mixed = self._split(queries)
        if not mixed:
            return self.adapter.generate(queries, max_new_tokens=max_new_tokens, until=until)
        out: list = [None] * len(queries)
        if plain:
            for i, text in zip(plain, self.adapter.generate([queries[i] for i in plain], max_new_tokens=max_new_tokens, until=until)):
                out[i] = text
        for i, entry, s in mixed:
            out[i] = self._generate_mixed(queries[i], entry, s, max_new_tokens, until or [])
        return out

    @torch.no_grad()
    def _generate_mixed(self, query: Query, entry: ReferenceEntry, s: float, max_new_tokens: int, until: list[str]) -> str:
        """Greedy decoding on the mixture, both models continuing from their key/value caches. A
        token the counterfactual model's vocabulary lacks (llava-hf's ``<image>``, ``<pad>``) ends it,
        as end-of-sequence does: neither is text."""
        from mmke_eval.adapters.hf_vlm import cut

        enc, cf_ids = self._ids(query, entry)
        (base_features, cf_features), image_id = self._features(query), self.adapter.image_token_id
        base = Decoder(self.adapter.text_model(), enc.ids, image_id, base_features)
        cf = Decoder(self.editor.replacement, cf_ids, image_id, cf_features)
        tokenizer, new = self.adapter.tokenizer, []
        for _ in range(max_new_tokens):
            token = int(mixture_log_probs(base.logits[None], cf.logits[None], s)[0].argmax())
            if token == tokenizer.eos_token_id or token >= cf.logits.shape[-1]:
                break
            new.append(token)
            if len(new) == max_new_tokens or (until and any(stop in tokenizer.decode(new, skip_special_tokens=True)
                                                             for stop in until if stop)):
                break
            base.step(token)
            cf.step(token)
        return cut(tokenizer.decode(new, skip_special_tokens=True), until)
