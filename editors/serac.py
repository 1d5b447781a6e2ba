"""SERAC: Semi-parametric Editing with a Retrieval-Augmented Counterfactual model (Mitchell et al.,
ICML 2022, "Memory-Based Model Editing at Scale").

No weight of the base model ever changes. An edit is written into a **memory**; a learned **scope
classifier** scores (memory entry, input) pairs; an input that some entry claims (probability above
``threshold``) is answered by a learned **counterfactual model** given that entry, every other input
by the base model, unchanged.

* **Memory**: ``apply`` appends the edit (its prompt, target and image); ``restore`` removes exactly
  that entry. Independent cases therefore see an empty memory before each edit; in sequential
  editing (restores only at the end) the memory holds every edit so far.
* **Scope classifier**: an embedding table initialised as a copy of the base language model's input
  embeddings (the adapter's tokenizer), mean-pooled, then a trainable projection; the probability is
  ``sigmoid(scale * cos(key, query) + bias)`` with a learned scale and bias. No pretrained text
  encoder is available offline, so the base model's own embeddings stand in for the reference's
  distilbert. The key is the entry's edit prompt (``cls_key=prompt``) or the edit prompt with its
  new target (``cls_key=prompt_target``: the paper's edit descriptor); the query is the probe's
  prompt alone. **The classifier never sees a probe's answer** (reference pitfall 4: its test input
  was question + answer, and its cache keys dropped only the last word of the target). With
  ``cls_image`` it also compares the probe's image with the entry's edit image: the base model's
  own features of each image (the mean inputs, over the image asked with an empty prompt, of the
  modules holding the counterfactual group), projected, a second scaled cosine + bias added for
  pairs that both have an image. Text alone cannot tell two edits with the same prompt apart
  ("What is in the image?"), nor "the thing in the image" on the edited picture from the same
  question on another picture; in a sequential memory that sends a probe to the wrong entry.
* **Counterfactual model**: the base model with a trained copy of one parameter group (``cf_target``
  in the last ``cf_layers`` layers; the reference trains the last layer of a same-size LM for
  LLaVA and MiniGPT-4), asked ``cf_prefix`` (the reference's cached ``"src alt "``) before the
  probe's own prompt, on the probe's own image. Its image path is the base model's own, so nothing in
  it is untrained (reference pitfall 5: BLIP-2's projection into its counterfactual OPT was never
  trained). The copies are substituted for the base tensors during its forward passes
  (editors/learned.py: ``substituted``), never written into the model.
* **Routing** (the paper's test-time rule, hard): each input goes to the counterfactual model with
  the classifier's best entry if that entry's probability exceeds ``threshold``, else to the base
  model. The reference (``SERAC_MULTI``) instead returns the soft mixture ``(1-s) p_base + s p_cf``;
  hard routing keeps every unclaimed input bit-identical to the base model (locality 100 when
  nothing is routed).
* **Training** (``meta_loss``, the paper's two losses): binary cross-entropy of the classifier on
  (entry, input) pairs, plus the counterfactual model's NLL of the new targets of the case's
  in-scope inputs given the prefix. The pairs: the case's own edit with its in-scope inputs
  (positives) and its locality inputs (negatives), and the same for the last ``negatives`` training
  cases seen, each case's inputs being negatives for every other case's entry (a contrastive batch
  that also teaches which entry of a full memory an input belongs to). A negative whose classifier
  input is identical to a positive's (same key text and prompt, and with ``cls_image`` the same
  images) is dropped: the classifier cannot tell them apart. Positives and negatives weigh half
  each. The recent cases live in the editor, not in the checkpoint: a resumed run starts without
  them.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from editors.base import ConfigError, EditHandle, EditRequest
from editors.learned import LearnedConfig, LearnedEditor, TrainingExample, substituted
from mmke_eval.adapters.base import ForwardResult, Query

CLS_KEYS = ("prompt", "prompt_target")


@dataclass
class SERACConfig(LearnedConfig):
    cf_target: str = field(default="llm_last_mlp", metadata={"help": "parameter group the counterfactual model trains a copy of"})
    cf_layers: int = field(default=1, metadata={"help": "the group in the last N layers (reference: the last layer's parameters)"})
    cf_prefix: str = field(default="{prompt} {target} ", metadata={
        "help": "what the counterfactual model reads before the probe's prompt; {prompt} and {target} are the edit's "
                "(reference: the cached 'src alt ')"})
    cls_key: str = field(default="prompt", metadata={
        "help": "what of a memory entry the scope classifier sees: 'prompt' (the edit prompt) or 'prompt_target' "
                "(edit prompt and new target, the paper's edit descriptor); never a probe's answer"})
    cls_dim: int = field(default=256, metadata={"help": "size of the scope classifier's projection"})
    cls_image: bool = field(default=False, metadata={
        "help": "the scope classifier also compares a probe's image with the entry's edit image (the base model's own "
                "features of each, projected); text-only probes are scored on text alone"})
    threshold: float = field(default=0.5, metadata={"help": "route to the counterfactual model above this scope probability (the paper: 0.5)"})
    cls_coef: float = field(default=1.0, metadata={"help": "training: weight of the classifier's binary cross-entropy"})
    cf_coef: float = field(default=1.0, metadata={"help": "training: weight of the counterfactual model's NLL on in-scope inputs"})
    negatives: int = field(default=16, metadata={"help": "training: recent train cases whose edits and inputs join each step's classifier pairs"})
    meta_lr: float = field(default=1e-5, metadata={"help": "training: Adam learning rate (reference 1e-5)"})

    RUNTIME_FIELDS = LearnedConfig.RUNTIME_FIELDS + ("threshold", "cls_coef", "cf_coef", "negatives")

    def __post_init__(self):
        super().__post_init__()
        if self.cf_layers < 1 or self.cls_dim < 1:
            raise ConfigError("editor 'serac': cf_layers and cls_dim must be >= 1")
        if self.cls_key not in CLS_KEYS:
            raise ConfigError(f"editor 'serac': cls_key must be one of {CLS_KEYS}, not {self.cls_key!r}")
        if self.negatives < 0:
            raise ConfigError(f"editor 'serac': negatives must be >= 0, not {self.negatives}")
        if self.cls_coef < 0 or self.cf_coef < 0:
            raise ConfigError("editor 'serac': cls_coef and cf_coef must be >= 0")
        try:
            self.cf_prefix.format(prompt="", target="")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"editor 'serac': cf_prefix {self.cf_prefix!r} may use only {{prompt}} and {{target}} ({err})") from None


class ScopeClassifier(nn.Module):
    """Mean-pooled token embeddings (a copy of the base model's), projected; scaled cosine + bias.

    With ``image_dim`` (``cls_image``), pairs whose query and key both hold an image add a second
    scaled cosine + bias between projections of the base model's image features."""

    def __init__(self, embeddings: torch.Tensor, dim: int, image_dim: int = 0):
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(embeddings.detach().float().clone(), freeze=False)
        self.proj = nn.Linear(embeddings.shape[1], dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-5.0))  # scale 10, bias -5: p = 0.5 at cosine 0.5
        if image_dim:
            self.image_proj = nn.Linear(image_dim, dim)
            self.image_log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.image_bias = nn.Parameter(torch.tensor(-5.0))

    def encode(self, ids: list[list[int]]) -> torch.Tensor:
        """Unit vectors [len(ids), dim] of token-id lists."""
        device = self.embed.weight.device
        width = max([len(x) for x in ids] + [1])
        padded = torch.zeros((len(ids), width), dtype=torch.long, device=device)
        mask = torch.zeros((len(ids), width), device=device)
        for row, x in enumerate(ids):
            if x:
                padded[row, : len(x)] = torch.tensor(x, dtype=torch.long, device=device)
                mask[row, : len(x)] = 1.0
        pooled = (self.embed(padded) * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return F.normalize(self.proj(pooled), dim=-1)

    def logits(self, keys: torch.Tensor, queries: torch.Tensor, key_images: torch.Tensor | None = None,
               query_images: torch.Tensor | None = None) -> torch.Tensor:
        """Scope logits [queries, keys]. Images: raw features [n, image_dim], rows of zeros where none."""
        out = self.log_scale.exp() * (queries @ keys.t()) + self.bias
        if key_images is None or query_images is None or not hasattr(self, "image_proj"):
            return out
        both = (query_images.abs().sum(1, keepdim=True) > 0) & (key_images.abs().sum(1) > 0).unsqueeze(0)
        k = F.normalize(self.image_proj(key_images), dim=-1)
        q = F.normalize(self.image_proj(query_images), dim=-1)
        return out + both * (self.image_log_scale.exp() * (q @ k.t()) + self.image_bias)


class SERACNetworks(nn.Module):
    """The scope classifier and the counterfactual model's copy of the ``cf_target`` tensors."""

    def __init__(self, embeddings: torch.Tensor, dim: int, cf_tensors: dict[str, torch.Tensor], image_dim: int = 0):
        super().__init__()
        self.classifier = ScopeClassifier(embeddings, dim, image_dim)
        self.names = sorted(cf_tensors)
        self.cf = nn.ParameterDict({_key(n): nn.Parameter(cf_tensors[n].detach().float().clone()) for n in self.names})

    def cf_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The counterfactual tensors in the model's dtypes (differentiable), by model parameter name."""
        params = dict(model.named_parameters())
        return {n: self.cf[_key(n)].to(params[n].dtype) for n in self.names}


def _key(name: str) -> str:
    return name.replace(".", "__")  # module names may not hold dots


@dataclass(eq=False)
class MemoryEntry:
    """One edit in SERAC's memory."""

    request: EditRequest
    key_text: str  # what the scope classifier sees of it
    prefix: str  # what the counterfactual model reads before a routed probe's prompt


class SERACEditor(LearnedEditor):
    """SERAC: edit memory + scope classifier + counterfactual model; see the module docstring."""

    name = "serac"
    config_class = SERACConfig
    reference_locality_span = "sequence"
    multi_image = ("K memory entries, one per edit image (the same prompt and target); the scope classifier tells them "
                   "apart only with cls_image=true (text-only, they route as one entry)")
    # The reference's SERAC files (mmke-eval convert-checkpoint --editor serac) are another design than
    # this one: they become checkpoints of serac_ref (editors/serac_reference.py), which runs it.
    reference_runs_as = "serac_ref"

    def __init__(self, config: SERACConfig | None = None):
        super().__init__(config)
        self.memory: list[MemoryEntry] = []
        self._recent: deque = deque(maxlen=max(self.config.negatives, 1))  # recent training cases
        self._token_cache: dict[str, list[int]] = {}
        self._image_cache: dict[tuple, torch.Tensor] = {}

    # -- what the base class needs ----------------------------------------------------------------
    def edited_group(self) -> None:
        return None  # no weight of the model is ever changed

    def edited_modules(self, adapter) -> dict[str, tuple[int, ...]]:
        """The counterfactual model's group: the checkpoint's fingerprint covers these weights."""
        group = adapter.parameter_group(self.config.cf_target, last_k=self.config.cf_layers)
        return {name: tuple(p.shape) for name, p in group.items()}

    def edited_layers(self) -> int:
        return self.config.cf_layers

    def build(self, adapter) -> nn.Module:
        self._image_cache.clear()  # features of another model's
        embeddings = adapter.model.get_input_embeddings().weight
        group = adapter.parameter_group(self.config.cf_target, last_k=self.config.cf_layers)
        image_dim = sum(self._feature_sizes(adapter)) if self.config.cls_image else 0
        return SERACNetworks(embeddings, self.config.cls_dim, dict(group), image_dim)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "routing": "hard (the paper): the classifier's best memory entry above threshold -> counterfactual model "
                       "with that entry as prefix, else the base model unchanged; the reference trains and answers with "
                       "the soft mixture (1-s) p_base + s p_cf",
            "classifier_input": f"memory entry: {'edit prompt + new target' if self.config.cls_key == 'prompt_target' else 'edit prompt'}"
                                f"{' and edit image' if self.config.cls_image else ''}; probe: its prompt"
                                f"{' and image' if self.config.cls_image else ''}, never its answer",
        }

    # -- text ------------------------------------------------------------------------------------------
    def _ids(self, adapter, text: str) -> list[int]:
        ids = self._token_cache.get(text)
        if ids is None:
            tokenizer = getattr(adapter, "tokenizer", None)
            if tokenizer is None:
                raise ConfigError(f"editor 'serac': the {type(adapter).__name__} adapter has no tokenizer for the scope classifier")
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            if len(self._token_cache) > 50_000:
                self._token_cache.clear()
            self._token_cache[text] = ids
        return ids

    def _feature_modules(self, adapter) -> list[nn.Module]:
        """The modules owning the counterfactual group's tensors: their inputs are the image features."""
        names = sorted(adapter.parameter_group(self.config.cf_target, last_k=self.config.cf_layers))
        modules = []
        for name in names:
            module = adapter.model.get_submodule(name.rpartition(".")[0])
            if all(module is not m for m in modules):
                modules.append(module)
        return modules

    def _feature_sizes(self, adapter) -> list[int]:
        """Input sizes of the feature modules (found by one forward pass on a blank image)."""
        from PIL import Image

        return [int(f.shape[-1]) for f in self._module_inputs(adapter, Image.new("RGB", (32, 32)))]

    def _module_inputs(self, adapter, image) -> list[torch.Tensor]:
        """Mean input of every feature module over the positions of ``image`` asked with an empty prompt."""
        captured: dict[int, torch.Tensor] = {}

        def hook_for(i):
            def hook(module, args, output):  # returns None: the output is left alone
                captured.setdefault(i, args[0].detach())
            return hook

        hooks = [m.register_forward_hook(hook_for(i)) for i, m in enumerate(self._feature_modules(adapter))]
        try:
            with torch.no_grad():
                adapter.teacher_forced([Query("", image)], k=1)
        finally:
            for h in hooks:
                h.remove()
        return [captured[i].float().reshape(-1, captured[i].shape[-1]).mean(0) for i in sorted(captured)]

    def _image_feature(self, adapter, image) -> torch.Tensor:
        """The base model's feature of an image (cached by content): the mean inputs of the counterfactual
        group's modules, concatenated. Never through the counterfactual tensors, never trained."""
        key = (image.mode, image.size, hashlib.sha1(image.tobytes()).hexdigest())
        feature = self._image_cache.get(key)
        if feature is None:
            feature = torch.cat(self._module_inputs(adapter, image)).to(adapter.device)
            if len(self._image_cache) > 20_000:
                self._image_cache.clear()
            self._image_cache[key] = feature
        return feature

    def scope_logits(self, adapter, keys: list[tuple[str, Any]], queries: list[tuple[str, Any]]) -> torch.Tensor:
        """Logits [queries, keys] of the scope classifier: keys are (key text, edit image), queries
        (prompt, image); the images count only with ``cls_image``."""
        cls = self.learned.classifier
        key_text = cls.encode([self._ids(adapter, t) for t, _ in keys])
        query_text = cls.encode([self._ids(adapter, t) for t, _ in queries])
        if not self.config.cls_image:
            return cls.logits(key_text, query_text)
        return cls.logits(key_text, query_text, self._images(adapter, [i for _, i in keys]), self._images(adapter, [i for _, i in queries]))

    def _images(self, adapter, images: list) -> torch.Tensor:
        size = self.learned.classifier.image_proj.in_features
        zero = torch.zeros(size, device=adapter.device)
        return torch.stack([zero if image is None else self._image_feature(adapter, image) for image in images])

    def _identity(self, text: str, image) -> tuple:
        """What the classifier sees of a key or a query (pairs identical in it cannot be told apart)."""
        if not self.config.cls_image or image is None:
            return (text, None)
        return (text, hashlib.sha1(image.tobytes()).hexdigest())

    def key_text(self, request: EditRequest) -> str:
        return f"{request.prompt} {request.target}" if self.config.cls_key == "prompt_target" else request.prompt

    def prefix_for(self, request: EditRequest) -> str:
        return self.config.cf_prefix.format(prompt=request.prompt, target=request.target)

    # -- editing ---------------------------------------------------------------------------------------
    def apply(self, adapter, request: EditRequest) -> EditHandle:
        self.ensure_ready(adapter)
        started = time.perf_counter()
        # edit_images=K: K memory entries, one per edit image (the same prompt and target).
        requests = [replace(request, image=image, extra_images=()) for image in (request.image, *request.extra_images)]
        entries = [MemoryEntry(r, self.key_text(r), self.prefix_for(r)) for r in requests]
        if self.config.cls_image:
            for r in requests:
                if r.image is not None:
                    self._image_feature(adapter, r.image)  # computed once, while the edit is applied
        self.memory.extend(entries)
        return EditHandle(
            editor=self.name,
            stats={"memory": len(self.memory), "edit_images": len(entries), "memory_entries_added": len(entries),
                   "seconds": round(time.perf_counter() - started, 4)},
            responder=SERACResponder(self, adapter, entries),
        )

    def restore(self, adapter, handle: EditHandle) -> None:
        """Remove exactly the handle's memory entries (no weight was changed)."""
        mine = getattr(handle.responder, "entries", [])
        self.memory = [e for e in self.memory if all(e is not m for m in mine)]

    @torch.no_grad()
    def route(self, adapter, queries: list[Query]) -> list[tuple[MemoryEntry | None, float]]:
        """Per query: the memory entry it is routed to (None: the base model) and its best probability."""
        if not self.memory or not queries:
            return [(None, 0.0)] * len(queries)
        keys = [(e.key_text, e.request.image) for e in self.memory]
        probs = torch.sigmoid(self.scope_logits(adapter, keys, [(q.prompt, q.image) for q in queries]))
        best_p, best = probs.max(dim=1)
        return [(self.memory[int(i)] if float(p) > self.config.threshold else None, float(p)) for p, i in zip(best_p, best)]

    # -- training --------------------------------------------------------------------------------------
    def meta_loss(self, adapter, example: TrainingExample):
        cfg, net = self.config, self.learned
        # Classifier: this case and the recent ones; each case's in-scope inputs are positives for its
        # own entry and negatives for every other entry; locality inputs are negatives for all.
        current = (example.case_id, (self.key_text(example.edit), example.edit.image),
                   [(q.prompt, q.image) for q in example.in_scope], [(q.prompt, q.image) for q in example.locality])
        cases = [current] + [c for c in self._recent if c[0] != example.case_id][: cfg.negatives]
        keys = [c[1] for c in cases]
        queries, owner = [], []  # owner: index of the case whose in-scope input it is, or -1 (locality)
        for index, (_, _, in_scope, locality) in enumerate(cases):
            queries += in_scope + locality
            owner += [index] * len(in_scope) + [-1] * len(locality)
        labels = torch.tensor([[1.0 if o == j else 0.0 for j in range(len(keys))] for o in owner], device=adapter.device)
        key_ids, query_ids = [self._identity(*k) for k in keys], [self._identity(*q) for q in queries]
        positive_inputs = {(key_ids[o], q) for q, o in zip(query_ids, owner) if o >= 0}
        usable = torch.tensor([[o == j or (key_ids[j], q) not in positive_inputs for j in range(len(keys))]
                               for q, o in zip(query_ids, owner)], device=adapter.device)
        logits = self.scope_logits(adapter, keys, queries)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        pos, neg = (labels == 1) & usable, (labels == 0) & usable
        zero = logits.sum() * 0
        cls_loss = 0.5 * ((bce[pos].mean() if pos.any() else zero) + (bce[neg].mean() if neg.any() else zero))
        routed = torch.sigmoid(logits) > cfg.threshold
        acc = 0.5 * ((routed[pos].float().mean() if pos.any() else 1.0) + ((~routed[neg]).float().mean() if neg.any() else 1.0))
        # Counterfactual model: the new targets of the in-scope inputs, with the edit as prefix.
        prefix = self.prefix_for(example.edit)
        in_scope = [replace(q, prefix=prefix + q.prefix) for q in example.in_scope]
        cf_nll = zero
        if in_scope and cfg.cf_coef > 0:  # cf_coef=0 trains the classifier alone (no model pass)
            with substituted(adapter.model, net.cf_tensors(adapter.model)):
                cf_nll = sum(adapter.target_loss(q) for q in in_scope) / len(in_scope)
        if net.training:
            self._recent.appendleft(current)
        loss = cfg.cls_coef * cls_loss + cfg.cf_coef * cf_nll
        return loss, {"cls_bce": float(cls_loss.detach()), "cf_nll": float(cf_nll.detach()), "cls_acc": float(acc)}


class SERACResponder:
    """Answers post-edit queries in the adapter's place: routed ones through the counterfactual model
    (its tensors substituted, the entry's prefix before the prompt), the others through the base model.
    The same signatures and semantics as the adapter's ``teacher_forced`` and ``generate``."""

    def __init__(self, editor: SERACEditor, adapter, entries: list[MemoryEntry]):
        self.editor, self.adapter, self.entries = editor, adapter, entries  # this edit's (restore removes them)
        self.last_routing: list[float] = []  # scope probabilities of the last call's queries (diagnostics)

    def _split(self, queries: list[Query]) -> tuple[list[int], dict[int, tuple[MemoryEntry, list[int]]]]:
        routes = self.editor.route(self.adapter, queries)
        self.last_routing = [p for _, p in routes]
        base, cf = [], {}
        for i, (entry, _) in enumerate(routes):
            if entry is None:
                base.append(i)
            else:
                cf.setdefault(id(entry), (entry, []))[1].append(i)
        return base, cf

    def _answer(self, queries: list[Query], call) -> list:
        base, cf = self._split(queries)
        if not cf:  # nothing routed: the base model on exactly the same batches as before the edit
            return call(queries)
        out: list = [None] * len(queries)
        if base:
            for i, result in zip(base, call([queries[i] for i in base])):
                out[i] = result
        model = self.adapter.model
        with torch.no_grad(), substituted(model, self.editor.learned.cf_tensors(model)):
            for entry, members in cf.values():
                routed = [replace(queries[i], prefix=entry.prefix + queries[i].prefix) for i in members]
                for i, result in zip(members, call(routed)):
                    out[i] = result
        return out

    def teacher_forced(self, queries: list[Query], k: int = 10) -> list[ForwardResult]:
        return self._answer(queries, lambda qs: self.adapter.teacher_forced(qs, k=k))

    def generate(self, queries: list[Query], max_new_tokens: int = 32, until: list[str] | None = None) -> list[str]:
        return self._answer(queries, lambda qs: self.adapter.generate(qs, max_new_tokens=max_new_tokens, until=until))
