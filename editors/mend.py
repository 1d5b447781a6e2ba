"""MEND: Model Editor Networks with Gradient Decomposition (Mitchell et al., ICLR 2022).

The gradient of the edit loss with respect to a linear layer's weight is a sum of rank-1 terms,
``dL/dW = sum_t delta_t u_t^T`` (``u``: the layer's inputs, ``delta``: the loss's gradients at its
outputs). MEND learns a network that maps each pair ``(u_t, delta_t)`` to ``(u~_t, delta~_t)`` and
edits ``W' = W + lr_l * sum_t delta~_t u~_t^T`` with a learned step size per layer (the reference's
sign: its step sizes are free to be negative; ours start at ``-edit_lr``, a descent step).

As in the reference settings (shared docs 3.2, ``hparams/TRAINING/MEND``): the MLP weights of
the last three language-model layers; one network per weight shape (``shared``), told apart by a
learned scale and shift per layer (``mode``); ``u`` and ``delta`` standardised by running
statistics and transformed together (``combine``); ``n_hidden + 1`` residual layers of low rank
(``rank``), initialised to the identity (``init: id``); per-layer step sizes trained at ``lr_lr``;
training loss ``edit_coef * NLL(new target | in-scope inputs) + loc_coef * KL(pre || post | locality
inputs)`` with text and image locality inputs (the reference: 0.1 and 1.0). The network computes
the reference's function for the reference's tensors, so its published checkpoints load after
``mmke-eval convert-checkpoint`` (``MENDEditor.load_reference``; docs/editors.md).

An edit writes ``W'`` into the model and restores exactly the tensors it touched; in training the
post-edit weights are substituted (editors/learned.py) so the loss reaches the networks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editors.base import ConfigError, EditRequest
from editors.learned import (
    TrainingExample,
    WeightUpdateConfig,
    WeightUpdateEditor,
    gradient_factors,
    kl_from_base,
    substituted,
)
from mmke_eval.reference.safe_pickle import ConversionError, describe_config
from mmke_eval.reference.weights import copy_checked, default_inner_params, listing, match_weights, shape_of

# A network of the reference's file: "mend.(IN, OUT).<tensor>" (ours: "transforms.OUTxIN.<tensor>").
REFERENCE_SHAPE_KEY = re.compile(r"^mend\.\((\d+), (\d+)\)\.(.+)$")


@dataclass
class MENDConfig(WeightUpdateConfig):
    rank: int = field(default=1920, metadata={"help": "rank of the low-rank layers (reference 1920; capped at u and delta's joint size)"})
    n_hidden: int = field(default=1, metadata={"help": "hidden layers of the gradient network (reference 1: two residual low-rank layers)"})
    edit_lr: float = field(default=1e-4, metadata={"help": "training: initial per-layer step size (edit_lrs start at -edit_lr: a descent step)"})
    lr_lr: float = field(default=1e-4, metadata={"help": "training: learning rate of the step sizes"})
    edit_coef: float = field(default=0.1, metadata={"help": "training: weight of the edit NLL on in-scope inputs"})
    loc_coef: float = field(default=1.0, metadata={"help": "training: weight of the locality KL"})
    meta_lr: float = field(default=1e-6, metadata={"help": "training: Adam learning rate of the networks (reference 1e-6)"})

    RUNTIME_FIELDS = WeightUpdateConfig.RUNTIME_FIELDS + ("edit_lr", "lr_lr", "edit_coef", "loc_coef")

    def __post_init__(self):
        super().__post_init__()
        if self.layers < 1 or self.rank < 1 or self.n_hidden < 0:
            raise ConfigError("editor 'mend': layers and rank must be >= 1, n_hidden >= 0")
        if not self.edit_lr > 0:
            raise ConfigError("editor 'mend': edit_lr must be > 0")


class GradientTransform(nn.Module):
    """``(u, delta) -> (u~, delta~)`` for one weight shape ``[d_out, d_in]``, shared by ``n_modes`` weights.

    The reference network (EasyEdit/VLKEB ``MEND.py`` ``GradientTransform`` with ``local_nn.IDMLP``;
    docs/editors.md, "Loading the published checkpoints"), tensor for tensor:

    * rows whose ``u`` or ``delta`` is all zeros are left out (they carry no gradient);
    * ``u`` and ``delta`` are standardised separately by running statistics (buffers ``u_mean``,
      ``v_mean``, ``u_s``, ``v_s`` (sums of squared deviations), ``k`` (rows seen), ``u_std``,
      ``v_std``), updated in training mode only, then concatenated ``[u, delta]``;
    * ``n_hidden + 1`` residual low-rank layers ``z <- z + relu(scale[m] * (z V^T U^T + b) + shift[m])``
      with ``U`` [dim, r], ``V`` [r, dim], ``r = min(rank, dim)``, and a learned scale and shift per
      weight (``mode`` m). ``U`` starts at zero: the network starts as the identity.
    """

    def __init__(self, d_in: int, d_out: int, rank: int, n_modes: int, n_hidden: int = 1):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        for side, dim in (("u", d_in), ("v", d_out)):
            self.register_buffer(f"{side}_mean", torch.zeros(dim))
            self.register_buffer(f"{side}_std", torch.ones(dim))
            self.register_buffer(f"{side}_s", torch.zeros(dim))
        self.register_buffer("k", torch.zeros(1))
        self.mlp = ResidualLowRankStack(d_in + d_out, rank, n_modes, n_hidden + 1)

    def _observe(self, u: torch.Tensor, delta: torch.Tensor) -> None:
        """Fold the rows into the running mean and squared deviations (Chan et al.'s parallel update)."""
        with torch.no_grad():
            n = u.shape[0]
            k = float(self.k)
            total = k + n
            for side, x in (("u", u), ("v", delta)):
                mean, s = getattr(self, f"{side}_mean"), getattr(self, f"{side}_s")
                batch_mean = x.mean(0)
                if k == 0:
                    mean.copy_(batch_mean)
                    s.copy_(((x - batch_mean) ** 2).sum(0))
                else:
                    diff = batch_mean - mean
                    s.add_(((x - batch_mean) ** 2).sum(0) + diff**2 * (k * n / total))
                    mean.add_(diff * (n / total))
            self.k.fill_(total)
            if total >= 2:
                self.u_std.copy_((self.u_s / (total - 1)).sqrt())
                self.v_std.copy_((self.v_s / (total - 1)).sqrt())

    def forward(self, u: torch.Tensor, delta: torch.Tensor, mode: int) -> tuple[torch.Tensor, torch.Tensor]:
        u, delta = u.float(), delta.float()
        keep = (u != 0).any(-1) & (delta != 0).any(-1)
        u, delta = u[keep], delta[keep]
        if self.training and u.shape[0]:
            self._observe(u, delta)
        z = torch.cat([(u - self.u_mean) / (self.u_std + 1e-7), (delta - self.v_mean) / (self.v_std + 1e-7)], dim=-1)
        z = self.mlp(z, mode)
        return z[:, : self.d_in], z[:, self.d_in :]


class ResidualLowRankStack(nn.Module):
    """``n_layers`` layers ``z <- z + relu(scale[m] * (z V^T U^T + b) + shift[m])``, identity at the start."""

    def __init__(self, dim: int, rank: int, n_modes: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(ResidualLowRank(dim, rank, n_modes) for _ in range(n_layers))

    def forward(self, z: torch.Tensor, mode: int) -> torch.Tensor:
        for layer in self.layers:
            z = layer(z, mode)
        return z


class ResidualLowRank(nn.Module):
    def __init__(self, dim: int, rank: int, n_modes: int):
        super().__init__()
        r = min(rank, dim)
        self.u = nn.Parameter(torch.zeros(dim, r))  # zero: the layer starts as the identity
        self.v = nn.Parameter(torch.randn(r, dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, z: torch.Tensor, mode: int) -> torch.Tensor:
        pre = (z @ self.v.t()) @ self.u.t() + self.bias
        pre = pre * self.mode_scale[mode] + self.mode_shift[mode]
        return z + pre.clamp(min=0)


class MENDNetworks(nn.Module):
    """One ``GradientTransform`` per weight shape and a step size per weight (``edit_lrs``).

    The weights are ordered by name (``names``); ``slot[name]`` is ``(shape key, mode)``, the mode
    being the weight's place among the weights of its shape. As in the reference, an edit *adds*
    ``edit_lrs[i] * delta~^T u~`` to weight i, so ``updates`` (what the editor subtracts) is its
    negative; our own training starts the step sizes at ``-edit_lr`` (a descent step).
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], rank: int, edit_lr: float, n_hidden: int = 1):
        super().__init__()
        self.names = sorted(shapes)
        by_shape: dict[tuple[int, ...], list[str]] = {}
        for name in self.names:
            by_shape.setdefault(tuple(shapes[name]), []).append(name)
        self.slot = {}  # weight name -> (network key, mode within the shape)
        self.transforms = nn.ModuleDict()
        for shape, names in sorted(by_shape.items()):
            key = shape_key(shape)
            d_out, d_in = shape
            self.transforms[key] = GradientTransform(d_in, d_out, rank, len(names), n_hidden)
            for i, name in enumerate(names):
                self.slot[name] = (key, i)
        self.edit_lrs = nn.Parameter(torch.full((len(self.names),), -float(edit_lr)))

    def transformed(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``(u~, delta~)`` per weight."""
        out = {}
        for name in self.names:
            u, delta = factors[name]
            key, mode = self.slot[name]
            out[name] = self.transforms[key](u, delta, mode)
        return out

    def updates(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Per weight, the tensor to subtract: ``-edit_lrs[i] * delta~^T u~``."""
        out = {}
        for index, (name, (u_t, delta_t)) in enumerate(self.transformed(factors).items()):
            out[name] = -self.edit_lrs[index] * (delta_t.t() @ u_t)
        return out


def shape_key(shape: tuple[int, ...]) -> str:
    """Our name of the network of weights of ``shape`` ``[d_out, d_in]``: ``"d_outxd_in"``."""
    return "x".join(map(str, shape))


class MENDEditor(WeightUpdateEditor):
    name = "mend"
    config_class = MENDConfig

    def build(self, adapter) -> nn.Module:
        shapes = self.linear_weight_shapes(adapter)
        return MENDNetworks(shapes, self.config.rank, self.config.edit_lr, self.config.n_hidden)

    def optimizer_groups(self):
        nets = [p for n, p in self.learned.named_parameters() if n != "edit_lrs"]
        return [{"params": nets, "lr": self.config.meta_lr}, {"params": [self.learned.edit_lrs], "lr": self.config.lr_lr}]

    def updates(self, adapter, request: EditRequest) -> dict[str, torch.Tensor]:
        return self.learned.updates(gradient_factors(adapter, self.learned.names, request))

    def meta_loss(self, adapter, example: TrainingExample):
        cfg = self.config
        with torch.no_grad():
            base = [adapter.sequence_logits(q) for q in example.locality]
        _, edited = self.post_edit_weights(adapter, example.edit)
        with substituted(adapter.model, edited):
            in_scope = example.in_scope
            edit_nll = sum(adapter.target_loss(q) for q in in_scope) / max(len(in_scope), 1)
            loc_kl = sum(kl_from_base(b, adapter.sequence_logits(q)) for b, q in zip(base, example.locality)) / max(len(base), 1)
        loss = cfg.edit_coef * edit_nll + cfg.loc_coef * loc_kl
        return loss, {"edit_nll": float(edit_nll.detach()), "loc_kl": float(loc_kl.detach())}

    # The reference's MEND file (mmke_eval/reference/): the EasyEdit-derived trainer's torch.save'd dict,
    # whose "model" holds the gradient networks keyed by weight shape, the step sizes and its model config.
    reference_format = "EasyEdit trainer (BaseTrainer.save_state), MEND"
    reference_keys = ("model",)
    reference_step_key = "step"

    def load_reference(self, adapter, ref: dict[str, Any], path: Path, inner_params: list[str] | None) -> dict[str, Any]:
        net = self.learned
        model = ref["model"]
        if not isinstance(model, dict):
            raise ConversionError(f"{path}: 'model' holds a {type(model).__name__}, not the editor's state dict")
        ignored = [k for k in model if k.startswith("model.")]
        unexpected = [k for k in model if k not in ("edit_lrs", "model_config") and not k.startswith(("mend.", "model."))]
        if unexpected:
            raise ConversionError(f"{path}: unexpected key {unexpected[0]!r} in 'model' (a MEND state dict holds "
                                  "'edit_lrs', 'mend.(IN, OUT)...' and 'model_config')")
        if "edit_lrs" not in model:
            raise ConversionError(f"{path}: missing key 'edit_lrs' in 'model' (not a MEND checkpoint?)")
        shapes = self.edited_modules(adapter)
        order = inner_params or default_inner_params(list(shapes), getattr(adapter, "family", ""))
        mapping = match_weights(list(shapes), order, f"{path}")
        lrs = model["edit_lrs"]
        if not isinstance(lrs, torch.Tensor) or tuple(lrs.shape) != (len(order),):
            raise ConversionError(f"{path}: 'edit_lrs' has shape {shape_of(lrs) if isinstance(lrs, torch.Tensor) else type(lrs).__name__}; "
                                  f"this model's {len(order)} edited weights need [{len(order)}]")

        # The reference keys a network by the weight's (in, out) and tells the weights of one shape
        # apart by their place in inner_params; ours by "OUTxIN" and the place among sorted names.
        ref_groups: dict[str, list[str]] = {}
        for ref_name in order:
            d_out, d_in = shapes[mapping[ref_name]]
            ref_groups.setdefault(f"({d_in}, {d_out})", []).append(ref_name)
        present = {m.group(1, 2) for k in model if (m := REFERENCE_SHAPE_KEY.match(k))}
        for d_in, d_out in sorted(present):
            if f"({d_in}, {d_out})" not in ref_groups:
                raise ConversionError(f"{path}: unexpected key 'mend.({d_in}, {d_out})': a network for weights of shape "
                                      f"[{d_out}, {d_in}], which this model's edited weights do not have "
                                      f"(they are {sorted({tuple(s) for s in shapes.values()})})")
        state = dict(net.state_dict())  # entries are replaced, never written into
        for ref_key, ref_names in ref_groups.items():
            d_in, d_out = (int(x) for x in ref_key[1:-1].split(", "))
            ours = f"transforms.{shape_key((d_out, d_in))}"
            prefix = f"mend.{ref_key}"
            if not any(k.startswith(prefix + ".") for k in model):
                raise ConversionError(f"{path}: missing key {prefix + '.mlp.layers.0.u'!r}: no network for weights of shape "
                                      f"[{d_out}, {d_in}] ({listing(mapping[n] for n in ref_names)})")
            # our mode of each weight -> its reference mode
            rows = [0] * len(ref_names)
            for ref_mode, ref_name in enumerate(ref_names):
                rows[net.slot[mapping[ref_name]][1]] = ref_mode
            for buffer in ("u_mean", "v_mean", "u_std", "v_std", "u_s", "v_s", "k"):
                copy_checked(state, model, f"{ours}.{buffer}", f"{prefix}.{buffer}", path)
            n_layers = len(net.transforms[shape_key((d_out, d_in))].mlp.layers)
            theirs_layers = {int(m.group(1)) for k in model if (m := re.match(re.escape(prefix) + r"\.mlp\.layers\.(\d+)\.", k))}
            if theirs_layers != set(range(n_layers)):
                raise ConversionError(f"{path}: {prefix} has {len(theirs_layers)} low-rank layers; the editor has {n_layers} "
                                      f"(n_hidden={n_layers - 1}; pass --editor_args n_hidden={max(len(theirs_layers) - 1, 0)})")
            for i in range(n_layers):
                for param in ("u", "v", "bias"):
                    copy_checked(state, model, f"{ours}.mlp.layers.{i}.{param}", f"{prefix}.mlp.layers.{i}.{param}", path)
                for param in ("mode_scale", "mode_shift"):
                    copy_checked(state, model, f"{ours}.mlp.layers.{i}.{param}", f"{prefix}.mlp.layers.{i}.{param}.weight", path, rows=rows)
            known = {f"{prefix}.{b}" for b in ("u_mean", "v_mean", "u_std", "v_std", "u_s", "v_s", "k")}
            known |= {f"{prefix}.mlp.layers.{i}.{p}" for i in range(n_layers) for p in ("u", "v", "bias", "mode_scale.weight", "mode_shift.weight")}
            extra = sorted(k for k in model if k.startswith(prefix + ".") and k not in known)
            if extra:
                raise ConversionError(f"{path}: unexpected key {extra[0]!r} (not part of MEND's IDMLP network)")
        edit_lrs = torch.zeros_like(state["edit_lrs"])
        for i, ref_name in enumerate(order):
            edit_lrs[net.names.index(mapping[ref_name])] = lrs[i].float()
        state["edit_lrs"] = edit_lrs
        net.load_state_dict(state, strict=True)
        config = model.get("model_config")
        return {
            "inner_params": order,
            "mapping": {ref_name: mapping[ref_name] for ref_name in order},
            "model_config": describe_config(config),
            "ignored_keys": len(ignored),
        }
