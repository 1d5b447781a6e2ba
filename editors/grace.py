"""GRACE (Hartvigsen et al., NeurIPS 2023): a codebook of edits at one layer of the language model.

The codebook sits on the FFN down projection of one decoder layer of the language model (the
module the reference wraps: ``...layers[L].mlp.down_proj``, OPT's ``fc2``). Each entry holds a
key (that module's input at the last token of an edit input), a learned value (the module's
output to put there instead), a deferral radius ε and the edit's label (its target text).

At every forward, each input's query is the module's input at its last input token: the last
token before the answer when an answer is scored teacher-forced, the last prompt token when
generating (the tokens generated after it are not queries, as the answer tokens of a
teacher-forced input are not). The image tokens come before that token, so the query is computed
from the whole multimodal input. When the nearest key lies within its radius, the module's
output at that one position is replaced by the key's value ("replace_last", the reference's
multimodal setting); otherwise the input passes through the layer unchanged.

An edit computes its key from the edit input, then updates the codebook as GRACE does: no key
within ε0 + ε_i of it: a new entry (radius ε0); the nearest key i is that close and has the same
label: its radius grows to cover the new key ("coverage"), and its value is trained further; it
has another label: a new entry, and the two radii become half their distance ("split"). The
value is trained for ``steps`` Adam steps on the target NLL of the edit input (the model's
weights are frozen). Every edit uses its own label (the reference applied the first sample's
label to the whole batch, EasyEdit issue 697; docs/protocol.md).

The reference finds the query position of a teacher-forced input from the edit's labels and
keeps using that index for every later input (a rephrase or a locality probe of another length
is queried at the edit's position); here each input is queried at its own last input token,
which the adapter's encoding of that input gives.

Nothing of the model changes: the codebook is a child module of the wrapped projection (its
tensors appear in the state_dict beside the model's while edits are live), run by a forward hook.
Edits pile up (lifelong editing) and are restored in reverse order, each restore giving back
exactly the codebook before its edit; restoring the last live edit removes the codebook, the
hook and the adapter hooks, so the model's state_dict is as before, key for key and bit for bit.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from editors.base import ConfigError, EditHandle, Editor, EditorConfig, EditRequest
from editors.ft import _only_these_require_grad, vision_tower_cached
from mmke_eval.adapters.base import Query

VALUE_INITS = ("cold", "warm")
CODEBOOK_NAME = "grace_codebook"  # the child module of the wrapped projection while edits are live
_LAYER = re.compile(r"^(.*\.layers)\.(\d+)\.")
WATCHED = ("_batch", "_padded", "_generate_ids")  # the adapter's steps that say where each input ends


@dataclass
class GraceConfig(EditorConfig):
    layer: int = field(default=18, metadata={"help": "decoder layer of the language model whose FFN down projection holds the codebook, "
                                                     "counted from 0 in a model of reference_layers layers (EasyEdit: 18 of 28 for LLaVA-OneVision-7B and Qwen2-VL-7B)"})
    reference_layers: int = field(default=28, metadata={"help": "depth of the model `layer` is counted in; another model gets the layer at the same "
                                                                "relative depth, round(layer * its layers / reference_layers); 0: `layer` is this model's own index"})
    steps: int = field(default=20, metadata={"help": "Adam steps training the value of the edit's entry (EasyEdit n_iter)"})
    lr: float = field(default=1.0, metadata={"help": "Adam learning rate of the value (EasyEdit edit_lr)"})
    eps: float = field(default=1.0, metadata={"help": "initial deferral radius of a new key (Euclidean distance between keys)"})
    val_init: str = field(default="cold", metadata={"help": "cold: a new value starts uniform in [0, 1) (EasyEdit's multimodal hparams) | "
                                                            "warm: the layer's own output at the key position"})
    seed: int = field(default=0, metadata={"help": "seed of the cold values (with the case id: the same edit gets the same start in every run)"})

    def __post_init__(self):
        if self.layer < 0 or self.reference_layers < 0:
            raise ConfigError("editor 'grace': layer and reference_layers must be >= 0")
        if self.reference_layers and self.layer >= self.reference_layers:
            raise ConfigError(f"editor 'grace': layer {self.layer} is not a layer of a {self.reference_layers}-layer model (reference_layers)")
        if self.steps < 0:
            raise ConfigError("editor 'grace': steps must be >= 0")
        if self.lr <= 0 or self.eps <= 0:
            raise ConfigError("editor 'grace': lr and eps must be > 0")
        if self.val_init not in VALUE_INITS:
            raise ConfigError(f"editor 'grace': val_init must be one of {VALUE_INITS}, not {self.val_init!r}")


class Codebook(torch.nn.Module):
    """GRACE's entries: keys [N, key dim], values [N, value dim], radii [N] (float32), labels.

    ``positions`` says, for each forward through the wrapped module, where each input's query is
    in the module's input (``_InputEnds``), or None when the forward holds no query.
    """

    def __init__(self, key_dim: int, value_dim: int, positions: Callable[[tuple[int, ...]], list | None]):
        super().__init__()
        self.register_buffer("keys", torch.zeros(0, key_dim))
        self.register_buffer("radii", torch.zeros(0))
        self.values = torch.nn.Parameter(torch.zeros(0, value_dim), requires_grad=False)
        self.labels: list[str] = []
        self.positions = positions
        self.training_value: torch.Tensor | None = None  # the value being trained (used for the edit row)
        self.captured: tuple | None = None  # (queries, outputs there) of the last forward, when asked for

    def __len__(self) -> int:
        return len(self.labels)

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance to the nearest key and its index, per query [B, key dim]; ties go to the newest entry."""
        keys = self.keys.flip(0)  # argmin takes the first of equal distances: the newest, as a split intends
        dist = torch.cdist(queries.float(), keys, compute_mode="donot_use_mm_for_euclid_dist")
        smallest, index = dist.min(dim=1)
        return smallest, len(self) - 1 - index

    def hook(self, module, args, output):
        """Forward hook of the wrapped module: replace the output at each query position whose
        nearest key lies within its radius by that key's value."""
        x = args[0]
        # [batch, positions, dim], or [batch * positions, dim] where the model flattens them (OPT's FFN)
        positions = self.positions(tuple(x.shape[:-1]))
        if positions is None:
            return output
        where = [i for i in positions if i is not None]
        if not where:
            return output
        index = tuple(zip(*where)) if x.dim() == 3 else (list(where),)
        queries = x[index].detach().float()
        if self.captured is not None:  # asked for (an edit's key): the queries and the module's own outputs there
            self.captured = (queries, output[index].detach().float())
        if self.training_value is not None:  # training an edit: the one row is the edit input, its entry the trained one
            replaced = torch.ones(len(where), dtype=torch.bool, device=x.device)
            chosen = self.training_value.expand(len(where), -1)
        else:
            if len(self) == 0:
                return output
            dist, nearest = self.nearest(queries)
            replaced = dist <= self.radii[nearest]
            if not bool(replaced.any()):
                return output
            chosen = self.values[nearest]
        out = output.clone()
        hit = replaced.nonzero().flatten().tolist()
        out[tuple([part[i] for i in hit] for part in index)] = chosen[hit].to(out.dtype)
        return out


class _InputEnds:
    """Where each input of a forward ends, from the adapter's own encoding of it.

    The adapter encodes a batch (``_batch``: token ids and where the answer starts) and pads it
    (``_padded``: left for generation, right for teacher forcing) before every model call; both are
    watched here. The first forward through the layer after an encoding consumes it; inside the
    adapter's generation call (``_generate_ids``) the forwards after it with fewer positions are
    generation steps (no query); any other forward is an error, never a silent pass-through."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.pending: list | None = None
        self.left: bool | None = None
        self.consumed_width: dict | None = None
        self.generating = False
        batch, padded, generate_ids = adapter._batch, adapter._padded, adapter._generate_ids

        def watched_batch(queries):
            encoded, image_inputs = batch(queries)
            self.pending, self.left, self.consumed_width = list(encoded), None, None
            return encoded, image_inputs

        def watched_padded(encoded, left):
            self.left = bool(left)
            return padded(encoded, left)

        def watched_generate_ids(*args, **kwargs):
            self.generating = True
            try:
                return generate_ids(*args, **kwargs)
            finally:
                self.generating = False

        adapter._batch, adapter._padded, adapter._generate_ids = watched_batch, watched_padded, watched_generate_ids

    def remove(self) -> None:
        for name in WATCHED:
            self.adapter.__dict__.pop(name, None)

    def __call__(self, shape: tuple[int, ...]) -> list | None:
        """Per input of the forward, the index of its query in the module's input of ``shape``
        ((row, position) for [batch, positions], the flat row for [batch * positions]); None: no query."""
        flat = len(shape) == 1
        if self.pending is None:
            size = shape[0] if flat else shape[1]
            if self.generating and self.consumed_width is not None and size < self.consumed_width[flat]:
                return None  # a generation step after the prompt: generated tokens are not queries
            raise RuntimeError("editor 'grace': a forward of the model that the adapter did not encode reached the codebook layer; "
                               "its key position is unknown (GRACE answers only through the adapter's teacher_forced, target_loss and generate)")
        encoded, self.pending = self.pending, None
        lengths = [len(e.ids) for e in encoded]
        batch, width = len(encoded), max(lengths)
        if tuple(shape) != ((batch * width,) if flat else (batch, width)):
            raise RuntimeError(f"editor 'grace': the codebook layer saw inputs of shape {tuple(shape)}, the adapter encoded "
                               f"{batch} inputs of up to {width} tokens; the key positions cannot be placed")
        if self.left is None and min(lengths) != width:
            raise RuntimeError("editor 'grace': an encoded batch of unequal lengths was not padded by the adapter; the key positions cannot be placed")
        self.consumed_width = {False: width, True: batch * width}
        # The last input token: the one before the answer (answer_start == len(ids) when there is none).
        ends = [(width - n if self.left else 0) + e.answer_start - 1 for e, n in zip(encoded, lengths)]
        return [b * width + p for b, p in enumerate(ends)] if flat else list(enumerate(ends))


@dataclass
class _Installed:
    adapter: Any
    module: torch.nn.Module
    codebook: Codebook
    hook: Any
    ends: _InputEnds
    layer: int
    handles: list = field(default_factory=list)  # live edits, in order


class GraceEditor(Editor):
    """GRACE: a codebook at one layer of the language model; see the module docstring."""

    name = "grace"
    config_class = GraceConfig
    side_memory = True
    multi_image = None
    multi_image_refusal = ("a GRACE key is the hidden state of one input: K edit images would be K inputs, K keys and K trained "
                           "values, that is K edits (run them as edits of their own)")

    def __init__(self, config: GraceConfig | None = None):
        super().__init__(config)
        self._live: _Installed | None = None
        self._undo: dict[int, dict] = {}  # per live handle: what its edit changed in the codebook

    # -- the codebook's place in the model ----------------------------------------------------
    def codebook_module(self, adapter) -> tuple[int, str]:
        """(the resolved layer index, the name of the down projection module that holds the codebook)."""
        found = {name: _LAYER.match(name) for name in adapter.parameter_group("llm_last_mlp")}
        if not found or not all(found.values()) or len({m.group(1) for m in found.values()}) != 1:
            raise ConfigError(f"editor 'grace': the language-model layers of {type(adapter.model).__name__} are not one stack "
                              f"'...layers.<i>.' (its llm_last_mlp group: {sorted(found)})")
        stack = next(iter(found.values())).group(1)
        n_layers = len(adapter.model.get_submodule(stack))
        cfg = self.config
        layer = round(cfg.layer * n_layers / cfg.reference_layers) if cfg.reference_layers else cfg.layer
        if not 0 <= layer < n_layers:
            raise ConfigError(f"editor 'grace': layer {cfg.layer} (reference_layers {cfg.reference_layers}) is layer {layer} of a "
                              f"{n_layers}-layer language model, which has none; choose layer < {n_layers} with reference_layers=0")
        group = adapter.parameter_group("llm_last_mlp", last_k=n_layers - layer)
        prefix = f"{stack}.{layer}."
        # The FFN's down projection: the one matrix of the layer's FFN that maps the wide activation back to the residual width.
        down = [name for name, p in group.items() if name.startswith(prefix) and p.dim() == 2 and p.shape[1] > p.shape[0]]
        if len(down) != 1:
            raise ConfigError(f"editor 'grace': cannot tell the FFN down projection of layer {layer} among {sorted(n for n in group if n.startswith(prefix))}")
        return layer, down[0].rsplit(".", 1)[0]

    def _install(self, adapter) -> _Installed:
        if self._live is not None:
            if self._live.adapter is not adapter:
                raise RuntimeError("editor 'grace': edits are live on another model; restore them first")
            return self._live
        if not all(hasattr(adapter, name) for name in WATCHED):
            raise ConfigError(f"editor 'grace' needs to know where each input ends; {type(adapter).__name__} does not say "
                              "(GRACE runs on the Hugging Face adapters)")
        layer, module_name = self.codebook_module(adapter)
        module = adapter.model.get_submodule(module_name)
        weight = module.weight
        ends = _InputEnds(adapter)
        codebook = Codebook(weight.shape[1], weight.shape[0], ends).to(weight.device)
        module.add_module(CODEBOOK_NAME, codebook)
        hook = module.register_forward_hook(codebook.hook)
        self._live = _Installed(adapter, module, codebook, hook, ends, layer)
        return self._live

    def _uninstall(self) -> None:
        live, self._live = self._live, None
        live.hook.remove()
        delattr(live.module, CODEBOOK_NAME)
        live.ends.remove()

    # -- one edit ---------------------------------------------------------------------------
    def apply(self, adapter, request: EditRequest) -> EditHandle:
        started = time.perf_counter()
        live = self._install(adapter)
        codebook = live.codebook
        query = Query(request.prompt, request.image, request.target)
        undo: dict[str, Any] = {"added": False, "radii": {}, "value": None}
        handle = EditHandle(editor=self.name)
        live.handles.append(handle)
        self._undo[id(handle)] = undo  # nothing of the model is saved: what the edit changed in the codebook
        try:
            key, warm = self._key(adapter, codebook, query)
            update, distance, entry = self._update_codebook(codebook, key, warm, request, undo)
            losses = self._train(adapter, codebook, query, entry)
        except BaseException:
            self.restore(adapter, handle)  # never leave a half-made entry behind
            raise
        handle.stats = {
            "edit_images": 1,
            "layer": live.layer,
            "steps": self.config.steps,
            "initial_loss": losses[0] if losses else None,
            "loss": losses[-1] if losses else None,  # after the last step
            "seconds": round(time.perf_counter() - started, 4),
            "codebook_size": len(codebook),
            "key_update": update,  # new | expanded | within | split
            "key_distance": distance,  # to the nearest key before this edit (None: the codebook was empty)
            "radius": float(codebook.radii[entry]),
        }
        return handle

    def _key(self, adapter, codebook: Codebook, query: Query) -> tuple[torch.Tensor, torch.Tensor]:
        """The edit input's key (the module's input at its last input token) and the module's own
        output there (a warm value's start), from one forward without gradients."""
        codebook.captured = ()
        try:
            with torch.no_grad():
                adapter.target_loss(query)
            captured = codebook.captured
        finally:
            codebook.captured = None
        if not captured or captured[0].shape[0] != 1:
            raise RuntimeError("editor 'grace': the edit input did not reach the codebook layer")
        key, output = captured
        return key[0].clone(), output[0].clone()

    def _update_codebook(self, codebook: Codebook, key: torch.Tensor, warm: torch.Tensor | None, request: EditRequest,
                         undo: dict) -> tuple[str, float | None, int]:
        """GRACE's codebook update for a new key; (what happened, distance to the nearest key, the entry to train)."""
        eps0 = self.config.eps
        label = request.target
        distance = None
        if len(codebook):
            dist, index = codebook.nearest(key[None])
            distance, nearest = float(dist[0]), int(index[0])
            if distance <= eps0 + float(codebook.radii[nearest]):
                if codebook.labels[nearest] == label:  # the same label: the nearest entry covers the new key too
                    undo["value"] = (nearest, codebook.values[nearest].detach().clone())
                    if distance > float(codebook.radii[nearest]):
                        undo["radii"][nearest] = codebook.radii[nearest].clone()
                        with torch.no_grad():
                            codebook.radii[nearest] = distance
                        return "expanded", distance, nearest
                    return "within", distance, nearest
                # Another label: a new entry, and the two radii halve the distance between them.
                undo["radii"][nearest] = codebook.radii[nearest].clone()
                new = self._add(codebook, key, warm, request, undo)
                with torch.no_grad():
                    codebook.radii[nearest] = distance / 2 - 1e-5
                    codebook.radii[new] = distance / 2
                return "split", distance, new
        return "new", distance, self._add(codebook, key, warm, request, undo)

    def _add(self, codebook: Codebook, key: torch.Tensor, warm: torch.Tensor | None, request: EditRequest, undo: dict) -> int:
        device = codebook.keys.device
        if self.config.val_init == "warm":
            value = warm.to(device)
        else:
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + zlib.crc32(request.case_id.encode()))
            value = torch.rand(codebook.values.shape[1], generator=generator).to(device)
        with torch.no_grad():
            codebook.keys = torch.cat([codebook.keys, key.to(device)[None]])
            codebook.radii = torch.cat([codebook.radii, torch.tensor([self.config.eps], device=device)])
            codebook.values = torch.nn.Parameter(torch.cat([codebook.values.detach(), value[None]]), requires_grad=False)
        codebook.labels.append(request.target)
        undo["added"] = True
        return len(codebook) - 1

    def _train(self, adapter, codebook: Codebook, query: Query, entry: int) -> list[float]:
        """Adam on the entry's value (float32), the model frozen; the loss before each step and after the last."""
        value = codebook.values[entry].detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([value], lr=self.config.lr)
        losses: list[float] = []
        codebook.training_value = value
        try:
            with _only_these_require_grad(adapter.model, []), vision_tower_cached(adapter, []):
                for _ in range(self.config.steps):
                    loss = adapter.target_loss(query)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                if losses:
                    with torch.no_grad():
                        losses.append(float(adapter.target_loss(query)))
        finally:
            codebook.training_value = None
        with torch.no_grad():
            codebook.values[entry] = value.detach()
        return losses

    # -- restore ----------------------------------------------------------------------------
    def restore(self, adapter, handle: EditHandle) -> None:
        """Undo one edit: the codebook as it was before it; the last live edit removes the codebook."""
        live = self._live
        if live is None or not live.handles or live.handles[-1] is not handle:
            raise RuntimeError("editor 'grace': edits must be restored in reverse order of their application (the codebook is a stack)")
        undo = self._undo.pop(id(handle))
        codebook = live.codebook
        with torch.no_grad():
            if undo["value"] is not None:
                index, row = undo["value"]
                codebook.values[index] = row
            for index, radius in undo["radii"].items():
                codebook.radii[index] = radius
            if undo["added"]:
                codebook.keys = codebook.keys[:-1].clone()
                codebook.radii = codebook.radii[:-1].clone()
                codebook.values = torch.nn.Parameter(codebook.values[:-1].detach().clone(), requires_grad=False)
                codebook.labels.pop()
        live.handles.pop()
        if not live.handles:
            self._uninstall()

    def summarize(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        updates: dict[str, int] = {}
        for s in stats:
            updates[s.get("key_update", "?")] = updates.get(s.get("key_update", "?"), 0) + 1
        return {"codebook_size": max((s.get("codebook_size", 0) for s in stats), default=0), "key_updates": updates}
