"""WISE: a side memory for lifelong editing (Wang et al., NeurIPS 2024, "WISE: Rethinking the
Knowledge Memory for Lifelong Model Editing of Large Language Models").

No weight of the model changes. While edits are live, one FFN projection of the language model
(the **main memory**: the down projection of layer ``layer``, or the up projection with
``projection=up``, as EasyEdit's BLIP-2 file does) is wrapped by ``WISEMemory``, which holds a
**side memory**: copies of that weight matrix that only the edits train.

* **Knowledge shards**: the edits of one shard (``merge_freq / num_shards`` edits) train one copy
  of the weight, and only a random ``mask_ratio`` of its entries (a fixed Bernoulli mask per shard,
  from ``seed`` and the shard's number). A shard is full after its edits; it waits until
  ``num_shards`` shards are full (every ``merge_freq`` edits), then the shards are merged with TIES
  (trim each shard's change to its ``density`` largest entries, elect a sign per entry, average
  the changes that agree). In WISE-Merge (``retrieve=false``) the merge joins the earlier merged
  memory (weight 0.6 against 0.4 for the new shards, as the reference); in WISE-Retrieve
  (``retrieve=true``) each merge is a memory of its own, with its own threshold.
* **Edit**: ``steps`` SGD steps (the reference's optimizer, lr ``lr``) on the shard, with the
  shard answering for every position: the target's NLL plus the activation-margin loss
  ``relu(d_out - d_in + gamma) + relu(d_out - alpha) + relu(beta - d_in)``, where ``d`` is the
  activation distance between side and main memory on the edit input (``d_in``) and on an
  unrelated text-only input (``d_out``, ``irrelevant_text``). The gradient reaches only the
  shard's masked entries; each entry is kept within ``norm_constraint`` of the original weight.
  The reference's early stop (loss change <= 1e-4 at loss <= 0.02) ends an edit early.
* **Activation distance** of an input: at each position the L2 norm of
  ``act(side(x)) - act(main(x))`` (``act``: ``distance_act``, EasyEdit applies the hparams'
  ``hidden_act``, silu), then the mean over **every position of the input, image tokens
  included** (EasyEdit's issue 697: its activation mask was built without the visual tokens), or
  the maximum (``route_stat``). Padding positions never count (the language model's attention mask).
* **Router**: an input whose distance from the main memory exceeds ``act_ratio`` times the smallest
  distance of an edit input after its edit (the threshold the edits taught) is answered by the side
  memory, every other input by the main memory, bit-identically. The decision is made per input
  (per row of a batch, on that row's own positions); in generation each decoding step routes on
  its own token, as the reference does. WISE-Merge: the merged memory answers when its distance
  is the larger, else the current shard. Once a shard has filled, the reference's forward merges
  the waiting shards (and the current one) into its merged memory before answering; here that
  merge answers without being stored, so the next edit continues from the same state.

Lifelong: ``apply`` may be called many times without a restore (shards fill, merges happen);
restores come in reverse order, each giving back exactly the side memory, threshold and shard
bookkeeping before its apply (the overwritten entries of the shard are kept, on the CPU, in the
handle: ``mask_ratio`` x the matrix per edit). Restoring the first live edit removes the wrapper:
the model's state_dict is bit-identical to before.

Where we differ from EasyEdit's code on purpose (docs/protocol.md, "Reference bugs we do not
copy"): the activation covers the visual tokens; the unrelated input is a fixed text, never the
case's own locality probe (EasyEdit trains on the evaluation's locality input, its issue 648);
weight decay touches the shard's entries only (torch's SGD decays the whole copy, so every entry
of the side memory drifts from the main memory); the threshold is measured after the last step
(EasyEdit: before it); routing is per input, not one decision for a whole batch.
"""

from __future__ import annotations

import re
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from editors.base import ConfigError, EditHandle, Editor, EditorConfig, EditRequest
from editors.ft import lower_layers_cached, vision_tower_cached
from mmke_eval.adapters.base import Query

PROJECTIONS = ("down", "up")
ROUTE_STATS = ("reference", "mean", "max")
# EasyEdit routes on the maximum over positions when an input has more than this many, else the mean.
REFERENCE_MAX_ABOVE = 100
# EasyEdit's early stop: the loss changed by at most this much, and is at most EARLY_STOP_LOSS.
EARLY_STOP_DELTA = 1e-4
EARLY_STOP_LOSS = 0.02
_LAYER = re.compile(r"^(.*)\.layers\.(\d+)\.")


@dataclass
class WISEConfig(EditorConfig):
    layer: int = field(default=-1, metadata={"help": "language-model layer whose FFN projection gets the side memory (EasyEdit inner_params); negative counts from the last"})
    reference_layers: int = field(default=0, metadata={"help": "layers of the model `layer` was chosen for: on a model of another depth the layer at the same relative depth is used (0: `layer` is the index itself)"})
    projection: str = field(default="down", metadata={"help": "down (the FFN value matrix, the paper's) | up (EasyEdit's BLIP-2 file: OPT fc1)"})
    steps: int = field(default=10, metadata={"help": "SGD steps per edit (EasyEdit n_iter; its multimodal files: 10)"})
    lr: float = field(default=1.0, metadata={"help": "SGD learning rate (EasyEdit edit_lr)"})
    weight_decay: float = field(default=1.0e-5, metadata={"help": "SGD weight decay, on the shard's entries only"})
    norm_constraint: float = field(default=1.0, metadata={"help": "each side-memory entry stays within this of the original weight"})
    mask_ratio: float = field(default=0.2, metadata={"help": "share of the weight entries a shard may change (random mask per shard)"})
    num_shards: int = field(default=2, metadata={"help": "shards merged together (EasyEdit merge_freq / save_freq)"})
    merge_freq: int = field(default=1000, metadata={"help": "edits between merges; each shard takes merge_freq / num_shards edits (EasyEdit save_freq)"})
    density: float = field(default=0.53, metadata={"help": "TIES: share of each shard's change kept (the largest entries) before the sign election"})
    merge_weight: float = field(default=1.0, metadata={"help": "TIES weight of the shards in the first merge (EasyEdit weights), shared among them"})
    retrieve: bool = field(default=False, metadata={"help": "WISE-Retrieve: each merge is a memory of its own, the most activated one answers (false: WISE-Merge, one merged memory)"})
    alpha: float = field(default=5.0, metadata={"help": "margin loss: the unrelated input's distance is pushed below alpha (EasyEdit act_margin[0])"})
    beta: float = field(default=20.0, metadata={"help": "margin loss: the edit input's distance is pushed above beta (act_margin[1])"})
    gamma: float = field(default=10.0, metadata={"help": "margin loss: the edit input's distance exceeds the unrelated one's by gamma (act_margin[2])"})
    act_ratio: float = field(default=0.4, metadata={"help": "router threshold: act_ratio x the smallest edit-input distance after its edit"})
    distance_act: str = field(default="silu", metadata={"help": "activation applied to both memories' outputs before the distance (EasyEdit: hidden_act, silu) | none (the paper's plain distance)"})
    route_stat: str = field(default="reference", metadata={"help": "an input's distance over its positions: reference (mean; the maximum above 100 positions, as EasyEdit) | mean | max"})
    irrelevant_text: str = field(default="The weather is mild today and the shops open at nine.", metadata={"help": "the unrelated text-only input of the margin loss (never a case's own locality probe)"})
    seed: int = field(default=0, metadata={"help": "seed of the shards' random masks"})
    cache_lower_layers: bool = field(default=True, metadata={"help": "compute the layers below the side memory once per edit instead of at every step (same numbers)"})
    cache_vision: bool = field(default=True, metadata={"help": "compute the frozen vision tower's features of the edit image once per edit instead of at every step (same numbers)"})

    def __post_init__(self):
        if self.projection not in PROJECTIONS:
            raise ConfigError(f"editor 'wise': projection must be one of {PROJECTIONS}, not {self.projection!r}")
        if self.route_stat not in ROUTE_STATS:
            raise ConfigError(f"editor 'wise': route_stat must be one of {ROUTE_STATS}, not {self.route_stat!r}")
        if self.reference_layers < 0 or (self.reference_layers and not 0 <= self.layer < self.reference_layers):
            raise ConfigError("editor 'wise': reference_layers must be 0, or more than layer (0 <= layer < reference_layers)")
        if self.steps < 0 or self.lr <= 0 or self.weight_decay < 0 or self.norm_constraint <= 0:
            raise ConfigError("editor 'wise': steps must be >= 0, lr and norm_constraint > 0, weight_decay >= 0")
        if not 0 < self.mask_ratio <= 1 or not 0 < self.density <= 1:
            raise ConfigError("editor 'wise': mask_ratio and density must lie in (0, 1]")
        if self.num_shards < 1 or self.merge_freq < 1 or self.merge_freq % self.num_shards:
            raise ConfigError(f"editor 'wise': merge_freq ({self.merge_freq}) must be a positive multiple of num_shards ({self.num_shards})")
        if self.act_ratio <= 0 or min(self.alpha, self.beta, self.gamma) < 0:
            raise ConfigError("editor 'wise': act_ratio must be > 0 and alpha, beta, gamma >= 0")
        if self.distance_act != "none":
            from transformers.activations import ACT2FN
            if self.distance_act not in ACT2FN:
                raise ConfigError(f"editor 'wise': distance_act must be none or an activation of transformers' ACT2FN, not {self.distance_act!r}")
        if not self.irrelevant_text.strip():
            raise ConfigError("editor 'wise': irrelevant_text must not be empty")

    @property
    def shard_edits(self) -> int:
        return self.merge_freq // self.num_shards


def ties_merge(base: torch.Tensor, tensors: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES-merging (Yadav et al., 2023) of ``tensors`` onto ``base``: each change ``t - base`` is
    trimmed to its ``density`` largest-magnitude entries and weighted; per entry the sign of the
    weighted sum is elected, and the weighted changes of that sign are averaged (divided by the sum
    of their weights); entries with no agreeing change keep ``base``."""
    deltas = []
    for tensor in tensors:
        delta = (tensor.float() - base.float()).flatten()
        if density < 1:
            keep = int(density * delta.numel())
            trimmed = torch.zeros_like(delta)
            if keep > 0:
                top = delta.abs().topk(keep).indices
                trimmed[top] = delta[top]
            delta = trimmed
        deltas.append(delta)
    stacked = torch.stack(deltas)
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device).unsqueeze(1)
    weighted = stacked * w
    elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0).to(stacked.dtype)
    agree = (weighted.sign() == elected).to(stacked.dtype)
    divisor = (w * agree).sum(0)
    divisor[divisor == 0] = 1
    merged = (weighted * agree).sum(0) / divisor
    return (base.float().flatten() + merged).view_as(base).to(torch.float32)


class WISEMemory(torch.nn.Module):
    """Stands in for the wrapped projection while edits are live: the main memory (the original
    module, untouched) and the side memory (the current shard, waiting shards, merged memories)."""

    def __init__(self, main: torch.nn.Linear, config: WISEConfig):
        super().__init__()
        self.main = main
        self.config = config
        self.original = main.weight.detach().to(torch.float32).clone()
        self.shard = torch.nn.Parameter(self.original.clone(), requires_grad=False)  # the shard being written
        self.mask: torch.Tensor | None = None  # its entries the edits may change
        self.shard_changed = False  # an edit wrote into the current shard
        self.pending: list[torch.Tensor] = []  # full shards waiting for the merge
        self.merged: torch.Tensor | None = None  # WISE-Merge: the merged side memory
        self.memories: list[tuple[torch.Tensor, float]] = []  # WISE-Retrieve: (merged memory, its smallest edit distance)
        self.pending_acts: list[float] = []  # WISE-Retrieve: smallest edit distance of each waiting shard
        self.min_act = float("inf")  # smallest edit-input distance (WISE-Retrieve: of the current shard's edits)
        self.edits = 0
        self.merges = 0
        self.editing = False  # inside an edit: the shard answers for every position
        self.recorded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []  # (main out, shard out, row mask) per forward while editing
        self.row_mask: torch.Tensor | None = None  # the language model's 2-D attention mask of the current call
        self.last_routes: list[str] = []  # per row of the last routed forward: "main" or the memory that answered
        self.last_distances: list[float] = []  # per row: the largest distance of a side memory from the main one
        self._view: tuple[int, torch.Tensor | None] | None = None  # (state version, merged view)
        self.version = 0
        self._act = None if config.distance_act == "none" else _activation(config.distance_act)

    # -- distances ------------------------------------------------------------------------------
    def positions(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch, seq] bool: the real positions of each row (padding out), image positions included."""
        batch, seq = hidden.shape[:2]
        mask = self.row_mask
        if mask is None:
            return torch.ones(batch, seq, dtype=torch.bool, device=hidden.device)
        if mask.dim() != 2 or mask.shape[0] != batch or mask.shape[1] < seq:
            raise RuntimeError(f"WISE: the language model's attention mask {tuple(mask.shape)} does not cover its input "
                               f"{(batch, seq)}; this model cannot be routed per position")
        return mask[:, -seq:].to(device=hidden.device).bool()

    def as_rows(self, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, seq, features]: a layer that flattens its rows first (OPT: [batch * seq, features])
        is split back into the rows of the language model's attention mask."""
        mask = self.row_mask if mask is None else mask
        if t.dim() == 3:
            return t
        batch = mask.shape[0] if isinstance(mask, torch.Tensor) else 1
        if t.dim() != 2 or t.shape[0] % batch:
            raise RuntimeError(f"WISE: cannot split the projection's input {tuple(t.shape)} into {batch} rows")
        return t.view(batch, -1, t.shape[-1])

    def per_position(self, main_out: torch.Tensor, side_out: torch.Tensor) -> torch.Tensor:
        a, b = main_out.float(), side_out.float()
        if self._act is not None:
            a, b = self._act(a), self._act(b)
        return torch.linalg.vector_norm(b - a, dim=-1)  # [batch, seq]

    def distance(self, main_out: torch.Tensor, side_out: torch.Tensor, real: torch.Tensor, stat: str = "mean") -> torch.Tensor:
        """[batch]: each row's distance over its real positions (``stat``: mean | max | reference)."""
        norms = self.per_position(main_out, side_out)
        counts = real.sum(1).clamp(min=1)
        mean = (norms * real).sum(1) / counts
        if stat == "mean":
            return mean
        largest = norms.masked_fill(~real, float("-inf")).amax(1)
        if stat == "max":
            return largest
        return torch.where(real.sum(1) > REFERENCE_MAX_ABOVE, largest, mean)

    # -- the answering memories -----------------------------------------------------------------
    def candidates(self) -> list[tuple[str, torch.Tensor, float]]:
        """(name, weight, threshold) of the side memories that may answer, in the reference's order."""
        cfg = self.config
        if cfg.retrieve:
            # the current shard, then the merged memories and the full shards waiting for the merge
            # (the reference keeps both in one list), each with its own threshold
            found = [("shard", self.shard, self.min_act * cfg.act_ratio)] if self.shard_changed else []
            stored = [(w, act) for w, act in self.memories] + list(zip(self.pending, self.pending_acts))
            return found + [(f"memory{i}", w, act * cfg.act_ratio) for i, (w, act) in enumerate(stored)]
        threshold = self.min_act * cfg.act_ratio
        view = self.merged_view()
        found = []
        if view is not None:
            found.append(("merged", view, threshold))
        if self.shard_changed and not self._merges_before_answering():
            found.append(("shard", self.shard, threshold))
        return found

    def _merges_before_answering(self) -> bool:
        # The reference's forward (WISE-Merge) merges the waiting shards, and the current one if
        # an edit wrote into it, once the first shard has filled.
        return self.edits >= self.config.shard_edits and bool(self.pending or self.shard_changed)

    def merged_view(self) -> torch.Tensor | None:
        """WISE-Merge: the merged memory that answers now (computed once per state)."""
        if self._view is not None and self._view[0] == self.version:
            return self._view[1]
        view = self.merged
        if self._merges_before_answering():
            view = self.merge(self.pending + ([self.shard.detach()] if self.shard_changed else []))
        self._view = (self.version, view)
        return view

    def merge(self, shards: list[torch.Tensor]) -> torch.Tensor:
        """WISE-Merge's merge of ``shards`` into the merged memory (a new tensor)."""
        cfg = self.config
        if self.merged is None:
            weights = [cfg.merge_weight / len(shards)] * len(shards)
            return ties_merge(self.original, shards, weights, cfg.density)
        weights = [0.4 / len(shards)] * len(shards) + [0.6]  # the reference's split between new shards and the merged memory
        return ties_merge(self.original, shards + [self.merged], weights, cfg.density)

    # -- forward ---------------------------------------------------------------------------------
    def _linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight.to(x.dtype), None if self.main.bias is None else self.main.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main_out = self.main(x)
        if self.editing:
            side_out = self._linear(x, self.shard)
            self.recorded.append((main_out.detach(), side_out, self.row_mask))
            return side_out
        shape = main_out.shape
        x, main_out = self.as_rows(x), self.as_rows(main_out)
        real = self.positions(x)
        out = main_out
        rows = x.shape[0]
        best = torch.full((rows,), float("-inf"), device=x.device)
        routes = ["main"] * rows
        largest = torch.zeros(rows, device=x.device)
        with torch.no_grad():
            for name, weight, threshold in self.candidates():
                side_out = self._linear(x, weight)
                dist = self.distance(main_out, side_out, real, self.config.route_stat)
                largest = torch.maximum(largest, dist)
                if self.config.retrieve and name != "shard":
                    # WISE-Retrieve: a merged memory answers above its own threshold when it is more
                    # activated than the current shard and every memory before it
                    chosen = (dist > threshold) & (dist > best)
                else:
                    # the current shard (WISE-Retrieve), or WISE-Merge: the more activated of merged
                    # memory and shard answers when either reaches the threshold
                    chosen = (dist >= threshold) & (dist >= best)
                out = torch.where(chosen.view(-1, *([1] * (out.dim() - 1))), side_out.to(out.dtype), out)
                for row in chosen.nonzero().flatten().tolist():
                    routes[row] = name
                best = dist if self.config.retrieve and name == "shard" else torch.where(chosen, dist, best)
        self.last_routes = routes
        self.last_distances = [float(largest[i]) for i in range(rows)]
        return out.reshape(shape)

    # -- state for restores ----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything an edit may replace (by reference; the shard's entries it overwrites in place
        are kept apart by the editor)."""
        return {"shard": self.shard, "mask": self.mask, "shard_changed": self.shard_changed, "pending": list(self.pending),
                "merged": self.merged, "memories": list(self.memories), "pending_acts": list(self.pending_acts),
                "min_act": self.min_act, "edits": self.edits, "merges": self.merges}

    def load(self, snapshot: dict[str, Any]) -> None:
        for key, value in snapshot.items():
            setattr(self, key, value)
        self.version += 1

    def side_memory_params(self) -> int:
        tensors = [self.shard, *self.pending, *([self.merged] if self.merged is not None else []), *(w for w, _ in self.memories)]
        return sum(t.numel() for t in tensors)


def _activation(name: str):
    from transformers.activations import ACT2FN
    return ACT2FN[name]


class WISEEditor(Editor):
    """WISE on one FFN projection of the language model (see the module docstring)."""

    name = "wise"
    config_class = WISEConfig
    side_memory = True
    multi_image = None
    multi_image_refusal = "WISE writes one edit input at a time into its side memory (the reference has no multi-image edit)"

    def describe(self) -> dict:
        return {**super().describe(), "shard_edits": self.config.shard_edits}

    # -- where the side memory lives ---------------------------------------------------------------
    def target_module(self, adapter) -> tuple[str, int]:
        """(module name, layer index) of the wrapped projection.

        The adapter's ``llm_last_mlp`` group lists the MLP's up projection first and its down
        projection second (every adapter: up_proj/down_proj, OPT fc1/fc2); its patterns find that
        projection in every language-model layer."""
        patterns = getattr(adapter, "parameter_groups", {}).get("llm_last_mlp")
        if not patterns or len(patterns) != 2:
            raise ConfigError(f"editor 'wise': {type(adapter).__name__} names no up and down projection of the language model's MLP (parameter group llm_last_mlp)")
        pattern = patterns[1 if self.config.projection == "down" else 0]
        finder = re.compile(pattern.replace("{last}", r"(?P<layer>\d+)"))
        found = {}
        for name, _ in adapter.model.named_parameters():
            match = finder.search(name)
            if match:
                found[int(match.group("layer"))] = name.removesuffix(".weight")
        for name, module in adapter.model.named_modules():  # a live side memory hides the projection one level down
            if isinstance(module, WISEMemory):
                match = _LAYER.match(name + ".")
                if match:
                    found[int(match.group(2))] = name
        layers = sorted(found)
        if not layers or layers != list(range(len(layers))):
            raise ConfigError(f"editor 'wise': the {self.config.projection} projections of {type(adapter.model).__name__} are not one per layer 0..n-1 ({layers})")
        index = self._layer_index(len(layers))
        return found[index], index

    def _layer_index(self, n: int) -> int:
        cfg = self.config
        if cfg.reference_layers:
            return round(cfg.layer * (n - 1) / max(cfg.reference_layers - 1, 1))
        index = cfg.layer + n if cfg.layer < 0 else cfg.layer
        if not 0 <= index < n:
            raise ConfigError(f"editor 'wise': layer {cfg.layer} does not exist in a language model of {n} layers; set layer (editor_args) or reference_layers")
        return index

    def _install(self, adapter, module_name: str) -> tuple[WISEMemory, bool]:
        parent_name, _, child = module_name.rpartition(".")
        parent = adapter.model.get_submodule(parent_name)
        current = getattr(parent, child)
        if isinstance(current, WISEMemory):
            return current, False
        if not isinstance(current, torch.nn.Linear):
            raise ConfigError(f"editor 'wise': {module_name} is a {type(current).__name__}, not a linear layer")
        memory = WISEMemory(current, self.config)
        language_model = adapter.model.get_submodule(_LAYER.match(module_name + ".").group(1))

        def keep_mask(module, args, kwargs):
            mask = kwargs.get("attention_mask")
            memory.row_mask = mask if isinstance(mask, torch.Tensor) else None
            if isinstance(mask, torch.Tensor) and mask.dim() != 2:
                raise RuntimeError(f"WISE: {type(module).__name__} got a {mask.dim()}-D attention mask; it needs the 2-D padding mask to route each row")

        memory._hook = language_model.register_forward_pre_hook(keep_mask, with_kwargs=True)
        setattr(parent, child, memory)
        return memory, True

    def _uninstall(self, adapter, module_name: str, memory: WISEMemory) -> None:
        parent_name, _, child = module_name.rpartition(".")
        memory._hook.remove()
        setattr(adapter.model.get_submodule(parent_name), child, memory.main)

    # -- edit ---------------------------------------------------------------------------------------
    def apply(self, adapter, request: EditRequest) -> EditHandle:
        started = time.perf_counter()
        cfg = self.config
        module_name, layer_index = self.target_module(adapter)
        memory, installed = self._install(adapter, module_name)
        before = memory.snapshot()
        if memory.edits % cfg.shard_edits == 0:  # a new shard: its own random mask
            shard_number = memory.edits // cfg.shard_edits
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + shard_number)
            memory.mask = (torch.rand(memory.shard.shape, generator=generator) < cfg.mask_ratio).to(memory.shard.device)
        trained = (memory.shard, memory.mask)
        overwritten = memory.shard.detach()[memory.mask].cpu()  # the entries this edit may change, as they were
        try:
            steps, losses, d_in = self._train(adapter, memory, request)
        except BaseException:
            self._undo(adapter, module_name, memory, before, trained, overwritten, installed)
            raise
        memory.shard_changed = True
        memory.min_act = min(memory.min_act, d_in)
        memory.edits += 1
        filled = memory.edits % cfg.shard_edits == 0
        if filled:
            self._close_shard(memory)
        merged = memory.edits % cfg.merge_freq == 0
        if merged:
            self._merge(memory)
        memory.version += 1
        handle = EditHandle(editor=self.name)
        # What restore needs: the state before (by reference) and the shard entries overwritten in place.
        handle.wise_state = (module_name, before, trained, overwritten, installed, memory.edits)  # type: ignore[attr-defined]
        handle.stats = {
            "edit_images": 1,
            "steps": steps,
            "initial_loss": losses[0] if losses else None,
            "loss": losses[-1] if losses else None,
            "seconds": round(time.perf_counter() - started, 4),
            "layer": module_name,
            "layer_index": layer_index,
            "edit_distance": round(d_in, 6),
            "threshold": round(memory.min_act * cfg.act_ratio, 6) if memory.min_act != float("inf") else None,
            "edits_live": memory.edits,
            "side_memory_params": memory.side_memory_params(),
            "merges": memory.merges,
            "shard_filled": filled,
            "merged": merged,
        }
        return handle

    def _close_shard(self, memory: WISEMemory) -> None:
        """A full shard waits for the merge; the next edit starts a fresh copy of the weight."""
        memory.pending = memory.pending + [memory.shard.detach()]
        if self.config.retrieve:
            memory.pending_acts = memory.pending_acts + [memory.min_act]
            memory.min_act = float("inf")  # WISE-Retrieve: each shard's threshold from its own edits
        memory.shard = torch.nn.Parameter(memory.original.clone().to(memory.shard.device), requires_grad=False)
        memory.shard_changed = False

    def _merge(self, memory: WISEMemory) -> None:
        cfg = self.config
        if cfg.retrieve:
            merged = ties_merge(memory.original, memory.pending, [cfg.merge_weight / len(memory.pending)] * len(memory.pending), cfg.density)
            memory.memories = memory.memories + [(merged, min(memory.pending_acts))]
            memory.pending_acts = []
        else:
            memory.merged = memory.merge(memory.pending)
        memory.pending = []
        memory.merges += 1

    def _train(self, adapter, memory: WISEMemory, request: EditRequest) -> tuple[int, list[float], float]:
        """SGD on the shard's masked entries; (steps taken, loss before each step and after the last,
        the edit input's distance after the last step)."""
        cfg = self.config
        edit_query = Query(request.prompt, request.image, request.target)
        unrelated = Query(cfg.irrelevant_text)
        shard = memory.shard
        flags = [(p, p.requires_grad) for p in adapter.model.parameters()]
        memory.editing = True
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            shard.requires_grad_(True)
            with self._cached(adapter, memory, edit_query, unrelated):
                steps, losses, d_in = self._steps(adapter, memory, edit_query, unrelated)
        finally:
            memory.editing = False
            memory.recorded = []
            shard.requires_grad_(False)
            shard.grad = None
            for p, flag in flags:
                p.requires_grad_(flag)
        return steps, losses, float(d_in)

    @contextmanager
    def _cached(self, adapter, memory: WISEMemory, edit_query: Query, unrelated: Query):
        """Inside, the frozen parts below the side memory run once per edit (editors/ft.py: the
        same numbers; each step makes two forward passes, the edit input's and the unrelated one's)."""
        names = [name for name, p in adapter.model.named_parameters() if p is memory.shard]
        with ExitStack() as stack:
            if self.config.cache_vision:
                stack.enter_context(vision_tower_cached(adapter, names))
            if self.config.cache_lower_layers:
                stack.enter_context(lower_layers_cached(adapter, names, lambda: self._loss(adapter, memory, edit_query, unrelated), 2))
            yield

    def _steps(self, adapter, memory: WISEMemory, edit_query: Query, unrelated: Query) -> tuple[int, list[float], torch.Tensor]:
        """The SGD steps (see _train)."""
        cfg = self.config
        shard, mask = memory.shard, memory.mask
        lower = memory.original - cfg.norm_constraint
        upper = memory.original + cfg.norm_constraint
        optimizer = torch.optim.SGD([shard], lr=cfg.lr)
        losses: list[float] = []
        previous = None
        steps = 0
        for _ in range(cfg.steps):
            loss, ft_loss, d_in = self._loss(adapter, memory, edit_query, unrelated)
            value = float(loss.detach())
            if previous is not None and abs(value - previous) <= EARLY_STOP_DELTA and value <= EARLY_STOP_LOSS:
                break  # the reference's early stop (its meter sees the loss of the step before)
            losses.append(value)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                grad = shard.grad + cfg.weight_decay * shard  # decay the shard's entries only (below)
                shard.grad = grad * mask
            optimizer.step()
            with torch.no_grad():
                shard.copy_(torch.maximum(torch.minimum(shard, upper), lower))
            previous = value
            steps += 1
        with torch.no_grad():
            loss, _, d_in = self._loss(adapter, memory, edit_query, unrelated)
        losses.append(float(loss))
        return steps, losses, d_in

    def _loss(self, adapter, memory: WISEMemory, edit_query: Query, unrelated: Query):
        """NLL of the target plus the activation-margin loss, with the shard answering everywhere."""
        cfg = self.config
        memory.recorded = []
        ft_loss = adapter.target_loss(edit_query)
        d_in = self._recorded_distance(memory)
        memory.recorded = []
        with torch.enable_grad():
            adapter.sequence_logits(unrelated)
        d_out = self._recorded_distance(memory)
        memory.recorded = []
        act_loss = F.relu(d_out - d_in + cfg.gamma) + F.relu(d_out - cfg.alpha) + F.relu(cfg.beta - d_in)
        return ft_loss + act_loss.to(ft_loss.device), ft_loss, d_in.detach()

    def _recorded_distance(self, memory: WISEMemory) -> torch.Tensor:
        if len(memory.recorded) != 1:
            raise RuntimeError(f"WISE: expected one forward through {type(memory.main).__name__} per input, saw {len(memory.recorded)}")
        main_out, side_out, row_mask = memory.recorded[0]
        memory.row_mask = row_mask
        main_out, side_out = memory.as_rows(main_out), memory.as_rows(side_out)
        real = memory.positions(main_out)
        return memory.distance(main_out, side_out, real, "mean")[0]  # the edit's threshold: the mean, as the reference

    # -- restore ------------------------------------------------------------------------------------
    def restore(self, adapter, handle: EditHandle) -> None:
        module_name, before, trained, overwritten, installed, edits_after = handle.wise_state  # type: ignore[attr-defined]
        memory = adapter.model.get_submodule(module_name)
        if not isinstance(memory, WISEMemory) or memory.edits != edits_after:
            raise RuntimeError(f"WISE: restores must come in reverse order of the edits (this edit left {edits_after} live edits, "
                               f"the side memory holds {getattr(memory, 'edits', 0)})")
        self._undo(adapter, module_name, memory, before, trained, overwritten, installed)

    def _undo(self, adapter, module_name, memory, before, trained, overwritten, installed) -> None:
        if trained is not None:
            shard, mask = trained
            with torch.no_grad():
                shard.data[mask] = overwritten.to(shard.device)
        memory.load(before)
        if installed:
            self._uninstall(adapter, module_name, memory)

    def summarize(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        if not stats:
            return {}
        return {"edits": len(stats), "merges": max(s.get("merges", 0) for s in stats),
                "side_memory_params": max(s.get("side_memory_params", 0) for s in stats)}

