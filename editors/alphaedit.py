"""MEMIT and AlphaEdit: closed-form edits of the language model's MLP output projections.

Both write one edit into the MLP output projection (``down_proj``; OPT's ``fc2``) of a set of
language-model layers (the adapter's ``llm_mlp_out`` group), as MEMIT (Meng et al., ICLR'23)
and AlphaEdit (Fang et al., ICLR'25) describe:

1. **Target value.** A residual vector ``delta`` is added to the output of the last edited layer
   L at the lookup token, and optimised with Adam so the model produces the new target (mean
   NLL of the target tokens, plus ``v_weight_decay * |delta| / |h|^2``; ``|delta|`` clamped to
   ``clamp_norm_factor * |h|``; stop under ``v_stop_loss``): ``z = h + delta``. The lookup token
   is the last token of the edit prompt (the references' "subject_last": our benchmarks name no
   subject), with the image tokens in the input. With K edit images (``edit_images=K``) the
   loss is the mean over the K inputs and ``h`` is the first's, as the references average over
   their context templates.
2. **Spread.** For each edited layer l, lowest first, on the model as the previous layers left
   it: the key ``k`` (the input of ``down_proj`` at the lookup token; the mean over the K
   inputs), the residual ``r = (z - h_L(now)) / (layers left)``, and the update ``dW = r v^T``:

   * MEMIT: ``v = (lambda C + k k^T)^-1 k``, C = E[k0 k0^T] of the preserved keys, lambda =
     ``mom2_update_weight``;
   * AlphaEdit: ``v = (P (k k^T + Kp Kp^T) + alpha I)^-1 P k``, P the projection onto the null
     space of the preserved keys (eigenvectors of C with eigenvalue below
     ``nullspace_threshold``), Kp the keys of the edits live before this one (taken on the model
     after each of them, as the reference's ``cache_c``), alpha = ``l2``. v lies in the range of
     P, so ``dW k0 = r v^T k0 ~ 0`` for every preserved key: the preserved outputs stay.

**Key statistics** (C, and P from it) come from a preserved set of texts, computed once on the
unedited model: every position of every text (no image), the second moment of the inputs of
each edited ``down_proj``. ``preserved`` names its sources, joined by ``+``: ``locality`` (the
locality questions and answers of the edit's train split, as the family reads them) and/or
the path of a text file (one text per line: the reference's Wikipedia sample, which a user must
supply for a real model; docs/editors.md). They are cached on disk under a name made from a
digest of every model weight and buffer, of the preserved texts and of the layers; the file
repeats those digests and is recomputed (never served) when they differ.

**Streams** (``sequential``, ``lifelong``): apply may run many times in a row; handles are
restored last first. The editor keeps one copy of the edited matrices as they were before the
first live edit and each edit's rank-1 factors (fp32), and sets a matrix to
``base + R V^T`` (computed in fp32, cast to the weight's dtype) after every change, so restoring
edit n recomputes the state before it bit-identically (checked: the current matrix must equal
the recomputed state after edit n first). Memory: one copy of the edited matrices plus
``(d_model + d_ff) * 4`` bytes per layer per live edit (AlphaEdit: twice, the keys Kp too).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from editors.base import ConfigError, EditHandle, Editor, EditorConfig, EditRequest
from editors.ft import _only_these_require_grad, vision_tower_cached
from mmke_eval.adapters.base import Query

logger = logging.getLogger(__name__)

GROUP = "llm_mlp_out"
LOOKUPS = ("prompt_last", "image_last")
STATS_FORMAT = "mmke-eval key statistics v1"  # part of every cache key: a change of definition invalidates old files
_LAYER_INDEX = re.compile(r"^(.*\.layers\.(\d+))\.")


@dataclass
class MLPEditConfig(EditorConfig):
    """What MEMIT and AlphaEdit share (names as in the references' hparams where they have one)."""

    edit_layers: str = field(default="4,5,6,7,8", metadata={"help": "language-model layers whose down_proj is edited, comma-separated (reference 'layers')"})
    v_steps: int = field(default=25, metadata={"help": "forward passes of the target-value optimisation (reference v_num_grad_steps; the last takes no step)"})
    v_lr: float = field(default=0.5, metadata={"help": "Adam learning rate of the target value (reference v_lr)"})
    v_weight_decay: float = field(default=1e-3, metadata={"help": "weight of |delta| / |h|^2 in the target-value loss (reference v_weight_decay)"})
    clamp_norm_factor: float = field(default=4.0, metadata={"help": "|delta| is kept <= this times |h| (reference clamp_norm_factor)"})
    v_stop_loss: float = field(default=5e-2, metadata={"help": "the target-value optimisation stops below this loss (the references' 5e-2)"})
    lookup: str = field(default="prompt_last", metadata={"help": "the token whose key is edited: prompt_last (the last token before the answer; the references' subject_last, our prompts naming no subject) | image_last (the last image token)"})
    preserved: str = field(default="locality", metadata={"help": "preserved-key sources joined by '+': 'locality' (the train split's locality inputs) and/or a text file, one text per line"})
    preserved_samples: int = field(default=100000, metadata={"help": "at most this many preserved texts, in order (reference mom2_n_samples)"})
    stats_cache: str = field(default="", metadata={"help": "folder of cached key statistics; '' = $MMKE_CACHE/key_stats; 'off' = compute in memory only"})

    def __post_init__(self):
        name = getattr(self, "_editor", "mlp edit")
        self.layer_indices()  # raises on a bad list
        if self.v_steps < 1:
            raise ConfigError(f"editor {name!r}: v_steps must be >= 1")
        if self.v_lr <= 0 or self.v_weight_decay < 0 or self.clamp_norm_factor <= 0 or self.v_stop_loss < 0:
            raise ConfigError(f"editor {name!r}: v_lr and clamp_norm_factor must be > 0, v_weight_decay and v_stop_loss >= 0")
        if self.lookup not in LOOKUPS:
            raise ConfigError(f"editor {name!r}: lookup must be one of {LOOKUPS}, not {self.lookup!r}")
        if self.preserved_samples < 1:
            raise ConfigError(f"editor {name!r}: preserved_samples must be >= 1")
        if not all(self.preserved_sources()):
            raise ConfigError(f"editor {name!r}: preserved={self.preserved!r} has an empty source; "
                              "name 'locality' and/or text files joined by '+'")

    def layer_indices(self) -> tuple[int, ...]:
        """``edit_layers`` as indices: comma- or space-separated, ``a-b`` a range (on the command
        line, where a comma separates options, ``edit_layers=4-8``)."""
        layers: list[int] = []
        try:
            for part in re.split(r"[,\s]+", str(self.edit_layers).strip()):
                first, dash, last = part.partition("-")
                layers += list(range(int(first), int(last) + 1)) if dash else [int(first)]
        except ValueError:
            layers = []
        if not layers or any(i < 0 for i in layers) or len(set(layers)) != len(layers) or layers != sorted(layers):
            raise ConfigError(f"editor {getattr(self, '_editor', 'mlp edit')!r}: edit_layers={self.edit_layers!r} must be "
                              "distinct layer indices >= 0 in increasing order, comma-separated or a range (4,5,6,7,8 or 4-8)")
        return tuple(layers)

    def preserved_sources(self) -> list[str]:
        return [s.strip() for s in str(self.preserved).split("+")]


@dataclass
class MEMITConfig(MLPEditConfig):
    _editor = "memit"
    mom2_update_weight: float = field(default=15000.0, metadata={"help": "lambda, the weight of the preserved keys' second moment (reference mom2_update_weight)"})

    def __post_init__(self):
        super().__post_init__()
        if self.mom2_update_weight < 0:
            raise ConfigError("editor 'memit': mom2_update_weight must be >= 0")


@dataclass
class AlphaEditConfig(MLPEditConfig):
    _editor = "alphaedit"
    v_lr: float = field(default=0.1, metadata={"help": "Adam learning rate of the target value (reference v_lr)"})
    v_weight_decay: float = field(default=0.5, metadata={"help": "weight of |delta| / |h|^2 in the target-value loss (reference v_weight_decay)"})
    clamp_norm_factor: float = field(default=0.75, metadata={"help": "|delta| is kept <= this times |h| (reference clamp_norm_factor)"})
    l2: float = field(default=10.0, metadata={"help": "alpha, the ridge term of the projected solve (reference L2)"})
    nullspace_threshold: float = field(default=2e-2, metadata={"help": "eigenvalues of E[k0 k0^T] below this span the null space (reference nullspace_threshold)"})

    def __post_init__(self):
        super().__post_init__()
        if self.l2 <= 0 or self.nullspace_threshold <= 0:
            raise ConfigError("editor 'alphaedit': l2 and nullspace_threshold must be > 0")


@dataclass
class _Layer:
    layer: int
    name: str  # the down_proj weight's parameter name
    param: torch.nn.Parameter
    down: torch.nn.Module  # the down_proj module (its input is the key)
    block: torch.nn.Module  # the decoder layer (its output is the residual stream)


@dataclass
class KeyStats:
    """E[k k^T] of the preserved keys per edited matrix, for one model and one preserved set."""

    model_digest: str
    preserved_digest: str
    second_moment: dict[str, torch.Tensor]  # parameter name -> [d_in, d_in] fp32
    positions: int
    texts: int
    source: str = ""  # computed | loaded <path> | reused (this process)
    projections: dict[str, torch.Tensor] = field(default_factory=dict)  # AlphaEdit's P, derived on first use

    def describe(self) -> dict[str, Any]:
        return {"key_stats": self.source, "preserved_texts": self.texts, "preserved_positions": self.positions}


@dataclass
class _LiveEdit:
    handle: EditHandle
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (R [d_out, m], V [d_in, m]), dW = R V^T
    keys: dict[str, torch.Tensor]  # name -> the edit's keys on the edited model [d_in, m] (AlphaEdit's Kp)


class MLPEditor(Editor):
    """The shared machinery; ``_solve`` is the method's own update direction."""

    config_class = MLPEditConfig
    multi_image = ("the target value is fitted on all K edit images (the mean of their losses) and the key is the mean "
                   "of their keys, as the references average over their context templates")

    def __init__(self, config: MLPEditConfig | None = None):
        super().__init__(config)
        self._stream: list[_LiveEdit] = []
        self._base: dict[str, torch.Tensor] = {}  # the edited matrices before the first live edit
        self._stats: KeyStats | None = None  # of the stream's base model
        self._memo: tuple[int, list[tuple[torch.Tensor, int]], KeyStats] | None = None  # (model id, versions, stats)

    def edited_group(self) -> str:
        return GROUP

    def edited_layers(self) -> tuple[int, ...]:
        return self.config.layer_indices()

    def describe(self) -> dict:
        out = super().describe()
        if self._stats is not None or self._memo is not None:
            stats = self._stats or self._memo[2]
            out["key_statistics"] = {"model_digest": stats.model_digest, "preserved_digest": stats.preserved_digest,
                                     **stats.describe()}
        return out

    # -- layers ---------------------------------------------------------------------------------
    def _layers(self, adapter) -> list[_Layer]:
        params = adapter.parameter_group(GROUP, last_k=self.config.layer_indices())
        layers = []
        for name, param in params.items():
            m = _LAYER_INDEX.match(name)
            if m is None:
                raise ValueError(f"editor {self.name!r}: cannot find the decoder layer of {name!r} (expected '...layers.<i>....')")
            layers.append(_Layer(int(m.group(2)), name, param, adapter.model.get_submodule(name.removesuffix(".weight")),
                                 adapter.model.get_submodule(m.group(1))))
        layers.sort(key=lambda x: x.layer)
        if [x.layer for x in layers] != list(self.config.layer_indices()):
            raise ValueError(f"editor {self.name!r}: expected one {GROUP} matrix per layer {self.config.layer_indices()}, "
                             f"found {[x.name for x in layers]}")
        return layers

    # -- apply / restore ----------------------------------------------------------------------------
    def apply(self, adapter, request: EditRequest) -> EditHandle:
        started = time.perf_counter()
        layers = self._layers(adapter)
        if not self._stream:
            self._stats = self._key_stats(adapter, request, layers)
            self._base = {x.name: x.param.detach().clone() for x in layers}
        elif set(self._base) != {x.name for x in layers}:
            raise RuntimeError(f"editor {self.name!r}: the live edits were made on other matrices ({sorted(self._base)})")
        handle = EditHandle(editor=self.name, touched=tuple(x.name for x in layers))
        live = _LiveEdit(handle, {}, {})
        self._stream.append(live)
        try:
            # The frozen vision tower runs once per edit image instead of at every pass (same numbers).
            with vision_tower_cached(adapter, [x.name for x in layers]):
                stats = self._edit(adapter, request, layers, live)
        except BaseException:
            self._stream.pop()
            self._set_state(layers, len(self._stream))  # never leave a half-edited model behind
            if not self._stream:
                self._end_stream(layers)
            raise
        handle.stats = {**stats, "live_edits": len(self._stream), **self._stats.describe(),
                        "seconds": round(time.perf_counter() - started, 4)}
        return handle

    def restore(self, adapter, handle: EditHandle) -> None:
        if not self._stream or self._stream[-1].handle is not handle:
            if any(live.handle is handle for live in self._stream):
                raise RuntimeError(f"editor {self.name!r}: edits must be restored last first; this one has later edits still live")
            return  # restored already (or never applied): nothing of it is live
        layers = self._layers(adapter)
        n = len(self._stream)
        for x in layers:
            if not torch.equal(x.param.detach(), self._state(x, n)):
                raise RuntimeError(f"editor {self.name!r}: {x.name} is not the matrix its {n} live edit(s) made (changed "
                                   "outside the editor, or the recomputation is not deterministic on this device); cannot restore exactly")
        self._stream.pop()
        self._set_state(layers, n - 1)
        if not self._stream:
            self._end_stream(layers)

    def _end_stream(self, layers: list[_Layer]) -> None:
        """The model is back to its base matrices: the statistics stay valid while no weight changes."""
        self._base = {}
        if self._memo is not None:
            model_id, versions, stats = self._memo
            edited = {id(x.param): x.param for x in layers}
            self._memo = (model_id, [(t, t._version) if id(t) in edited else (t, v) for t, v in versions], stats)
        self._stats = None

    def _state(self, layer: _Layer, n: int) -> torch.Tensor:
        """The matrix after the first ``n`` live edits: base + sum of their R V^T (fp32), in the weight's dtype."""
        base = self._base[layer.name]
        if n == 0:
            return base
        rs = torch.cat([self._stream[i].factors[layer.name][0] for i in range(n)], dim=1)
        vs = torch.cat([self._stream[i].factors[layer.name][1] for i in range(n)], dim=1)
        return (base.float() + rs @ vs.T).to(base.dtype)

    def _set_state(self, layers: list[_Layer], n: int) -> None:
        with torch.no_grad():
            for x in layers:
                if all(x.name in live.factors for live in self._stream[:n]):
                    x.param.copy_(self._state(x, n))

    # -- one edit ---------------------------------------------------------------------------------
    def _edit(self, adapter, request: EditRequest, layers: list[_Layer], live: _LiveEdit) -> dict[str, Any]:
        queries = [Query(request.prompt, image, request.target) for image in (request.image, *request.extra_images)]
        positions = [_lookup(self.name, adapter, q, self.config.lookup) for q in queries]
        top = layers[-1]
        _, h = self._read(adapter, queries[:1], positions[:1], layers, top)
        z, fit = self._target_value(adapter, queries, positions, top.block, h[0])
        n = len(self._stream)
        norms, start_error = [], None
        for i, x in enumerate(layers):
            keys, now = self._read(adapter, queries, positions, layers, top)
            k = torch.stack([key[x.name] for key in keys]).mean(dim=0).double()[:, None].to(x.param.device)  # [d_in, 1]
            residual = (z - now[0]).double()
            if start_error is None:
                start_error = float(residual.norm())
            r = residual[:, None] / (len(layers) - i)
            v = self._solve(x, k)
            device = x.param.device  # a model split over devices: each matrix's factors beside it
            live.factors[x.name] = (r.float().to(device), v.float().to(device))
            with torch.no_grad():
                x.param.copy_(self._state(x, n))
            norms.append(float(r.norm() * v.norm()))  # |r v^T|_F
        keys, now = self._read(adapter, queries, positions, layers, top)
        live.keys = {x.name: torch.stack([key[x.name] for key in keys]).mean(dim=0).float()[:, None] for x in layers}
        return {
            "edit_images": len(queries),
            "layers": [x.layer for x in layers],
            **fit,
            "z_error": round(start_error, 6),  # |z - h_L| before the update
            "z_error_after": round(float((z - now[0]).norm()), 6),
            "update_norm": round(float(torch.tensor(norms).norm()), 6),  # |dW|_F over the edited matrices
        }

    def _solve(self, layer: _Layer, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _read(self, adapter, queries, positions, layers, top) -> tuple[list[dict[str, torch.Tensor]], list[torch.Tensor]]:
        """Per query: the keys (input of each edited down_proj at its lookup token) and the output
        of the top edited layer there (no grad)."""
        keys, outs = [], []
        for query, (pos, length) in zip(queries, positions):
            seen: dict[str, torch.Tensor] = {}
            hooks = [x.down.register_forward_pre_hook(_grab(seen, x.name, pos)) for x in layers]
            hooks.append(top.block.register_forward_hook(_grab_output(seen, "_out", pos)))
            try:
                adapter.teacher_forced([query], k=1)
            finally:
                for hook in hooks:
                    hook.remove()
            _check_seen(self.name, adapter, seen, [x.name for x in layers] + ["_out"], length)
            outs.append(seen.pop("_out"))
            keys.append(seen)
        return keys, outs

    def _target_value(self, adapter, queries, positions, block, h) -> tuple[torch.Tensor, dict[str, Any]]:
        """z = h + delta, delta fitted so the model gives the target (module docstring, step 1)."""
        config = self.config
        delta = torch.zeros(h.shape[-1], dtype=torch.float32, device=h.device, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=config.v_lr)
        current = {"pos": positions[0][0]}

        def add_delta(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            index = torch.tensor([current["pos"]], device=hidden.device)
            hidden = hidden.index_add(1, index, delta.to(hidden.dtype).view(1, 1, -1))
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        h32 = h.float()
        max_norm = config.clamp_norm_factor * h32.norm()
        losses: list[float] = []
        hook = block.register_forward_hook(add_delta)
        try:
            with _only_these_require_grad(adapter.model, []):
                for step in range(config.v_steps):
                    nll = 0.0
                    for query, (pos, _) in zip(queries, positions):
                        current["pos"] = pos
                        nll = nll + adapter.target_loss(query)
                    nll = nll / len(queries)
                    loss = nll + config.v_weight_decay * delta.norm() / h32.norm() ** 2
                    losses.append(float(nll.detach()))
                    if float(loss.detach()) < config.v_stop_loss or step == config.v_steps - 1:
                        break
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    with torch.no_grad():
                        if delta.norm() > max_norm:
                            delta.mul_(max_norm / delta.norm())
        finally:
            hook.remove()
        return (h32 + delta.detach()), {"initial_loss": losses[0], "loss": losses[-1], "v_passes": len(losses),
                                        "delta_norm": round(float(delta.detach().norm()), 6)}

    # -- key statistics ------------------------------------------------------------------------------
    def _key_stats(self, adapter, request: EditRequest, layers: list[_Layer]) -> KeyStats:
        texts = self._preserved_texts(request)
        preserved_digest = _digest_texts(texts)
        if self._memo is not None:
            model_id, versions, stats = self._memo
            if (model_id == id(adapter.model) and all(t._version == v for t, v in versions)
                    and stats.preserved_digest == preserved_digest and set(stats.second_moment) == {x.name for x in layers}):
                stats.source = "reused (this process)"
                return stats
        model_digest = model_weights_digest(adapter.model)
        names = [x.name for x in layers]
        path = self._cache_path(model_digest, preserved_digest, names)
        stats = _load_stats(path, model_digest, preserved_digest, names) if path is not None else None
        if stats is None:
            stats = self._compute_stats(adapter, layers, texts, model_digest, preserved_digest)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save({"format": STATS_FORMAT, "model_digest": model_digest, "preserved_digest": preserved_digest,
                            "names": names, "positions": stats.positions, "texts": stats.texts,
                            "second_moment": {k: v.cpu() for k, v in stats.second_moment.items()}}, tmp)
                tmp.replace(path)
        devices = {x.name: x.param.device for x in layers}
        stats.second_moment = {k: v.to(devices[k]) for k, v in stats.second_moment.items()}
        self._memo = (id(adapter.model), [(t, t._version) for t in _tensors(adapter.model)], stats)
        return stats

    def _cache_path(self, model_digest: str, preserved_digest: str, names: list[str]) -> Path | None:
        if self.config.stats_cache == "off":
            return None
        from mmke_eval.resources import cache_dir

        root = Path(self.config.stats_cache).expanduser() if self.config.stats_cache else cache_dir() / "key_stats"
        key = hashlib.sha256("\0".join([STATS_FORMAT, model_digest, preserved_digest, *names]).encode()).hexdigest()
        return root / f"{key[:40]}.pt"

    def _preserved_texts(self, request: EditRequest) -> list[str]:
        texts: list[str] = []
        for source in self.config.preserved_sources():
            if source == "locality":
                texts += _locality_texts(self.name, request)
            else:
                path = Path(source).expanduser()
                if not path.is_file():
                    raise FileNotFoundError(f"editor {self.name!r}: preserved text file {source!r} not found "
                                            "(preserved=locality and/or text files joined by '+')")
                texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        texts = list(dict.fromkeys(texts))[: self.config.preserved_samples]
        if not texts:
            raise ValueError(f"editor {self.name!r}: the preserved set ({self.config.preserved!r}) holds no text")
        return texts

    @torch.no_grad()
    def _compute_stats(self, adapter, layers, texts, model_digest, preserved_digest) -> KeyStats:
        sums = {x.name: torch.zeros(x.param.shape[1], x.param.shape[1], dtype=torch.float64, device=x.param.device) for x in layers}
        counts = {"n": 0}

        def accumulate(name):
            def hook(module, args):
                keys = args[0].reshape(-1, args[0].shape[-1]).double()
                sums[name].add_(keys.T @ keys)
                if name == layers[0].name:
                    counts["n"] += keys.shape[0]
            return hook

        hooks = [x.down.register_forward_pre_hook(accumulate(x.name)) for x in layers]
        try:
            for text in texts:  # one at a time: no padding position enters the sums
                adapter.teacher_forced([Query(text)], k=1)
        finally:
            for hook in hooks:
                hook.remove()
        logger.info("%s: key statistics of %d preserved texts (%d positions) at %s", self.name, len(texts), counts["n"],
                    ", ".join(x.name for x in layers))
        second = {name: (s / counts["n"]).float() for name, s in sums.items()}
        return KeyStats(model_digest, preserved_digest, second, counts["n"], len(texts), source="computed")

    def summarize(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        if not stats:
            return {}
        return {"key_stats": sorted({s.get("key_stats", "") for s in stats}),
                "mean_seconds": round(sum(s.get("seconds", 0.0) for s in stats) / len(stats), 4),
                "mean_final_loss": round(sum(s.get("loss", 0.0) for s in stats) / len(stats), 6)}


class MEMITEditor(MLPEditor):
    """MEMIT: ``v = (lambda C + k k^T)^-1 k`` (module docstring)."""

    name = "memit"
    config_class = MEMITConfig

    def _solve(self, layer: _Layer, k: torch.Tensor) -> torch.Tensor:
        c = self._stats.second_moment[layer.name].double()
        return torch.linalg.solve(self.config.mom2_update_weight * c + k @ k.T, k)


class AlphaEditEditor(MLPEditor):
    """AlphaEdit: MEMIT's update projected onto the null space of the preserved keys (module docstring)."""

    name = "alphaedit"
    config_class = AlphaEditConfig

    def projection(self, name: str) -> torch.Tensor:
        """P for one edited matrix (float64), from the stream's key statistics."""
        stats = self._stats
        if name not in stats.projections:
            values, vectors = torch.linalg.eigh(stats.second_moment[name].double())
            null = vectors[:, values < self.config.nullspace_threshold]
            stats.projections[name] = null @ null.T
        return stats.projections[name]

    def _solve(self, layer: _Layer, k: torch.Tensor) -> torch.Tensor:
        p = self.projection(layer.name)
        previous = [live.keys[layer.name].double() for live in self._stream[:-1]]
        a = k @ k.T
        if previous:
            kp = torch.cat(previous, dim=1)
            a = a + kp @ kp.T
        eye = torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
        return torch.linalg.solve(p @ a + self.config.l2 * eye, p @ k)

    def _edit(self, adapter, request, layers, live):
        stats = super()._edit(adapter, request, layers, live)
        return {**stats, "null_space_dims": [int((self.projection(x.name).diagonal().sum()).round()) for x in layers]}


# -- helpers ---------------------------------------------------------------------------------------
def _lookup(editor: str, adapter, query: Query, lookup: str) -> tuple[int, int]:
    """The sequence index of the lookup token (``lookup``: the last prompt token, the one before
    the target's first; or the last image token), and the input's length."""
    enc = adapter.encoded(query)
    if lookup == "image_last":
        image = [i for i, t in enumerate(enc.ids) if t == getattr(adapter, "image_token_id", None)]
        if not image:
            raise ValueError(f"editor {editor!r}: lookup=image_last, but the edit input has no image token "
                             f"({type(adapter).__name__}); use lookup=prompt_last")
        return image[-1], len(enc.ids)
    return (enc.answer_start - 1 if query.target else len(enc.ids) - 1), len(enc.ids)


def _grab(seen: dict, name: str, pos: int):
    def hook(module, args):
        keys = args[0] if args[0].dim() == 3 else args[0][None]  # OPT's MLP runs on [positions, d] of batch 1
        seen[name] = keys[0, pos].detach().float()
        seen[name + ":len"] = keys.shape[1]
    return hook


def _grab_output(seen: dict, name: str, pos: int):
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        seen[name] = hidden[0, pos].detach().float()
        seen[name + ":len"] = hidden.shape[1]
    return hook


def _check_seen(editor: str, adapter, seen: dict, names: list[str], length: int) -> None:
    """Every hook ran on a sequence as long as the adapter's encoded input (so the lookup index
    points at the token it means); the lengths are dropped from ``seen``."""
    for name in names:
        if name not in seen:
            raise ValueError(f"editor {editor!r}: {name} was not reached by the forward pass of {type(adapter).__name__}")
    lengths = {seen.pop(name + ":len") for name in names}
    if lengths != {length}:
        raise ValueError(f"editor {editor!r}: the edited layers of {type(adapter).__name__} saw sequences of length "
                         f"{sorted(lengths)}, the encoded input has {length} positions: the lookup token cannot be located")


def _locality_texts(editor: str, request: EditRequest) -> list[str]:
    """The locality inputs (question and answer) of the request's train split, as its family reads
    the split (the IKE pool's (src, alt, question, answer) entries whose answer is not the edit's)."""
    if not request.train_file:
        raise ValueError(f"editor {editor!r}: preserved=locality needs the edit's train split (EditRequest.train_file); "
                         "name a text file instead (preserved=/path/texts.txt)")
    if request.family:
        from mmke_eval import families

        pool = families.get(request.family).demonstration_pool(request.train_file)
    else:
        from mmke_eval.data.easyedit import demonstration_pool

        pool = demonstration_pool(request.train_file)
    return [f"{question} {answer}" for src, alt, question, answer in pool if question != src and answer != alt]


def _digest_texts(texts: list[str]) -> str:
    h = hashlib.sha256(f"{len(texts)}\0".encode())
    for text in texts:
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()


def _tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t for _, t in model.state_dict(keep_vars=True).items()]


def model_weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer: name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _load_stats(path: Path, model_digest: str, preserved_digest: str, names: list[str]) -> KeyStats | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: recompute
        logger.warning("key statistics %s unreadable (%s): recomputing", path, err)
        return None
    if (data.get("format") != STATS_FORMAT or data.get("model_digest") != model_digest
            or data.get("preserved_digest") != preserved_digest or data.get("names") != names):
        logger.warning("key statistics %s are for another model or preserved set: recomputing", path)
        return None
    return KeyStats(model_digest, preserved_digest, data["second_moment"], int(data["positions"]), int(data["texts"]),
                    source=f"loaded {path}")
