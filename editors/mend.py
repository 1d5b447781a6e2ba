"""MEND: Model Editor Networks with Gradient Decomposition (Mitchell et al., ICLR 2022).

The gradient of the edit loss with respect to a linear layer's weight is a sum of rank-1 terms,
``dL/dW = sum_t delta_t u_t^T`` (``u``: the layer's inputs, ``delta``: the loss's gradients at its
outputs). MEND learns a network that maps each pair ``(u_t, delta_t)`` to ``(u~_t, delta~_t)`` and
edits ``W' = W - lr_l * sum_t delta~_t u~_t^T`` with a learned step size per layer.

As in the reference settings (shared docs 3.2, ``hparams/TRAINING/MEND``): the MLP weights of
the last three language-model layers; one network per weight shape (``shared``), told apart by a
learned scale and shift per layer; ``u`` and ``delta`` normalised by running statistics and
transformed together (``combine``); one hidden layer of low rank (``rank``), initialised to the
identity; per-layer step sizes starting at ``edit_lr`` and trained at ``lr_lr``; training loss
``edit_coef * NLL(new target | in-scope inputs) + loc_coef * KL(pre || post | locality inputs)``
with text and image locality inputs (the reference: 0.1 and 1.0).

An edit writes ``W'`` into the model and restores exactly the tensors it touched; in training the
post-edit weights are substituted (editors/learned.py) so the loss reaches the networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from editors.base import ConfigError, EditRequest
from editors.learned import (
    LearnedConfig,
    TrainingExample,
    WeightUpdateEditor,
    gradient_factors,
    kl_from_base,
    substituted,
)


@dataclass
class MENDConfig(LearnedConfig):
    target: str = field(default="llm_last_mlp", metadata={"help": "parameter group whose weights are edited"})
    layers: int = field(default=3, metadata={"help": "edit the group in the last N layers (reference: 3, layers 29-31)"})
    rank: int = field(default=1920, metadata={"help": "rank of the hidden layer (reference 1920; capped at the input size)"})
    edit_lr: float = field(default=1e-4, metadata={"help": "initial per-layer step size (reference edit_lrs 1e-4)"})
    lr_lr: float = field(default=1e-4, metadata={"help": "training: learning rate of the step sizes"})
    edit_coef: float = field(default=0.1, metadata={"help": "training: weight of the edit NLL on in-scope inputs"})
    loc_coef: float = field(default=1.0, metadata={"help": "training: weight of the locality KL"})
    meta_lr: float = field(default=1e-6, metadata={"help": "training: Adam learning rate of the networks (reference 1e-6)"})

    RUNTIME_FIELDS = LearnedConfig.RUNTIME_FIELDS + ("edit_lr", "lr_lr", "edit_coef", "loc_coef")

    def __post_init__(self):
        super().__post_init__()
        if self.layers < 1 or self.rank < 1:
            raise ConfigError("editor 'mend': layers and rank must be >= 1")
        if not self.edit_lr > 0:
            raise ConfigError("editor 'mend': edit_lr must be > 0")


class RunningNorm(nn.Module):
    """Normalises by the mean and standard deviation of every vector seen in training (Welford)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("count", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("m2", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                n = x.shape[0]
                batch_mean = x.mean(0)
                delta = batch_mean - self.mean
                total = self.count + n
                self.mean += delta * n / total
                self.m2 += ((x - batch_mean) ** 2).sum(0) + delta**2 * self.count * n / total
                self.count.copy_(total)
        std = (self.m2 / (self.count - 1).clamp(min=1)).sqrt() if self.count > 1 else torch.ones_like(self.mean)
        return (x - self.mean) / (std + 1e-7)


class GradientTransform(nn.Module):
    """``(u, delta) -> (u~, delta~)`` for one weight shape, shared by ``n_layers`` layers."""

    def __init__(self, d_in: int, d_out: int, rank: int, n_layers: int):
        super().__init__()
        dim = d_in + d_out
        rank = min(rank, dim)
        self.d_in = d_in
        self.norm = RunningNorm(dim)
        self.scale = nn.Parameter(torch.ones(n_layers, dim))
        self.shift = nn.Parameter(torch.zeros(n_layers, dim))
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)  # identity at the start: the first edits are normalised gradients
        nn.init.zeros_(self.up.bias)

    def forward(self, u: torch.Tensor, delta: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.norm(torch.cat([u, delta], dim=-1))
        z = z * self.scale[layer] + self.shift[layer]
        z = z + self.up(torch.relu(self.down(z)))
        return z[:, : self.d_in], z[:, self.d_in :]


class MENDNetworks(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, ...]], rank: int, edit_lr: float):
        super().__init__()
        self.names = sorted(shapes)
        by_shape: dict[tuple[int, ...], list[str]] = {}
        for name in self.names:
            by_shape.setdefault(tuple(shapes[name]), []).append(name)
        self.slot = {}  # weight name -> (network key, layer index within the shape)
        self.transforms = nn.ModuleDict()
        for shape, names in sorted(by_shape.items()):
            key = "x".join(map(str, shape))
            d_out, d_in = shape
            self.transforms[key] = GradientTransform(d_in, d_out, rank, len(names))
            for i, name in enumerate(names):
                self.slot[name] = (key, i)
        self.edit_lrs = nn.Parameter(torch.full((len(self.names),), float(edit_lr)))

    def updates(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """``lr_l * sum_t delta~_t u~_t^T`` per weight (to be subtracted)."""
        out = {}
        for index, name in enumerate(self.names):
            u, delta = factors[name]
            key, layer = self.slot[name]
            u_t, delta_t = self.transforms[key](u, delta, layer)
            out[name] = self.edit_lrs[index] * (delta_t.t() @ u_t)
        return out


class MENDEditor(WeightUpdateEditor):
    name = "mend"
    config_class = MENDConfig

    def edited_group(self) -> str:
        return self.config.target

    def edited_layers(self) -> int:
        return self.config.layers

    def build(self, adapter) -> nn.Module:
        shapes = self.edited_modules(adapter)
        bad = [name for name, shape in shapes.items() if len(shape) != 2]
        if bad:
            raise ConfigError(f"editor 'mend': target {self.config.target!r} holds tensors that are not linear weights: {bad[:3]}")
        return MENDNetworks(shapes, self.config.rank, self.config.edit_lr)

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
