"""KE: Knowledge Editor (De Cao, Aziz and Titov, "Editing Factual Knowledge in Language Models", EMNLP 2021).

A hyper-network reads the edit, as the text ``"{original} >> {new} || {prompt}"`` (the reference's
condition), and turns the edit loss's gradient on each edited weight into the update

    dW = sigma(eta) * ( (sigmoid(alpha) gamma^T) * grad_W + delta omega^T )

with ``alpha, delta`` (output size), ``gamma, omega`` (input size) and ``eta`` predicted from the
condition per weight; ``grad_W = sum_t delta_t u_t^T`` is never formed in the product: the
element-wise scaling is applied to its factors. The condition encoder is a bidirectional LSTM
over the base model's (frozen) token embeddings, projected down (the reference uses its own
LSTM over token embeddings, ``hidden_dim 128``). A learned scalar step per weight starts at
``edit_lr`` (the reference's ``max_scale`` bounds sigma(eta) at 1; a 7B weight and a tiny one
need different steps, so the bound is learned).

Training (shared docs 3.2): cross-entropy of the new target on the edit input, plus a Lagrangian
constraint ``lambda * (||dW|| - margin)`` with ``lambda >= 0`` raised by gradient ascent
(``lambda_lr``, reference 0.1) while the update is larger than ``margin``. The reference decays
the margin when validation accuracy passes 0.9; here the margin is fixed (an option).
Edits the same weights as MEND (last three layers' MLPs) and restores exactly what it touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from editors.base import ConfigError, EditRequest
from editors.learned import LearnedConfig, TrainingExample, WeightUpdateEditor, gradient_factors, edit_queries, substituted


@dataclass
class KEConfig(LearnedConfig):
    target: str = field(default="llm_last_mlp", metadata={"help": "parameter group whose weights are edited"})
    layers: int = field(default=3, metadata={"help": "edit the group in the last N layers (reference: layers 29-31)"})
    hidden_dim: int = field(default=128, metadata={"help": "LSTM hidden size of the condition encoder (reference 128)"})
    embed_dim: int = field(default=256, metadata={"help": "token embeddings are projected to this size for the LSTM"})
    edit_lr: float = field(default=1e-4, metadata={"help": "initial step of every edited weight (learned)"})
    margin: float = field(default=1e-3, metadata={"help": "training: bound on the update norm (Lagrangian constraint)"})
    lambda_lr: float = field(default=0.1, metadata={"help": "training: gradient-ascent rate of the Lagrange multiplier"})
    meta_lr: float = field(default=3e-4, metadata={"help": "training: learning rate of the hyper-network (reference 3e-4)"})

    RUNTIME_FIELDS = LearnedConfig.RUNTIME_FIELDS + ("edit_lr", "margin", "lambda_lr")

    def __post_init__(self):
        super().__post_init__()
        if min(self.layers, self.hidden_dim, self.embed_dim) < 1:
            raise ConfigError("editor 'ke': layers, hidden_dim and embed_dim must be >= 1")
        if not (self.edit_lr > 0 and self.margin > 0 and self.lambda_lr >= 0):
            raise ConfigError("editor 'ke': edit_lr and margin must be > 0, lambda_lr >= 0")


class KENetworks(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, ...]], token_dim: int, cfg: KEConfig):
        super().__init__()
        self.names = sorted(shapes)
        self.project = nn.Linear(token_dim, cfg.embed_dim)
        self.lstm = nn.LSTM(cfg.embed_dim, cfg.hidden_dim, batch_first=True, bidirectional=True)
        cond = 2 * cfg.hidden_dim
        self.heads = nn.ModuleDict()
        for index, name in enumerate(self.names):
            d_out, d_in = shapes[name]
            head = nn.ModuleDict({"alpha": nn.Linear(cond, d_out), "gamma": nn.Linear(cond, d_in),
                                  "delta": nn.Linear(cond, d_out), "omega": nn.Linear(cond, d_in), "eta": nn.Linear(cond, 1)})
            for layer in head.values():  # start as a plain gradient step: gamma = 1, no rank-1 shift
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            nn.init.ones_(head["gamma"].bias)
            nn.init.constant_(head["alpha"].bias, 10.0)  # sigmoid(alpha) ~ 1
            nn.init.constant_(head["eta"].bias, 10.0)  # sigmoid(eta) ~ 1
            self.heads[str(index)] = head
        self.log_steps = nn.Parameter(torch.full((len(self.names),), float(torch.tensor(cfg.edit_lr).log())))
        self.register_buffer("lagrange", torch.zeros(()))

    def condition(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.project(token_embeddings.float()).unsqueeze(0))
        return out[0].mean(0)

    def updates(self, cond: torch.Tensor, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        out = {}
        for index, name in enumerate(self.names):
            u, grad_out = factors[name]
            head = self.heads[str(index)]
            scaled = (grad_out * torch.sigmoid(head["alpha"](cond))).t() @ (u * head["gamma"](cond))
            shift = torch.outer(head["delta"](cond), head["omega"](cond))
            out[name] = self.log_steps[index].exp() * torch.sigmoid(head["eta"](cond)) * (scaled + shift)
        return out


class KEEditor(WeightUpdateEditor):
    name = "ke"
    config_class = KEConfig
    # The Lagrangian term changes with its multiplier; the reference keeps the best edit accuracy.
    validation_key = "edit_nll"

    def edited_group(self) -> str:
        return self.config.target

    def edited_layers(self) -> int:
        return self.config.layers

    def build(self, adapter) -> nn.Module:
        shapes = self.edited_modules(adapter)
        bad = [name for name, shape in shapes.items() if len(shape) != 2]
        if bad:
            raise ConfigError(f"editor 'ke': target {self.config.target!r} holds tensors that are not linear weights: {bad[:3]}")
        token_dim = adapter.model.get_input_embeddings().weight.shape[1]
        return KENetworks(shapes, token_dim, self.config)

    @staticmethod
    def condition_text(request: EditRequest) -> str:
        return f"{request.original} >> {request.target} || {request.prompt}"

    def _condition(self, adapter, request: EditRequest) -> torch.Tensor:
        ids = adapter.tokenizer(self.condition_text(request), add_special_tokens=False, return_tensors="pt").input_ids[0]
        with torch.no_grad():
            tokens = adapter.model.get_input_embeddings()(ids.to(adapter.device))
        return self.learned.condition(tokens)

    def updates(self, adapter, request: EditRequest) -> dict[str, torch.Tensor]:
        factors = gradient_factors(adapter, self.learned.names, request)
        return self.learned.updates(self._condition(adapter, request), factors)

    def meta_loss(self, adapter, example: TrainingExample):
        updates, edited = self.post_edit_weights(adapter, example.edit)
        with substituted(adapter.model, edited):
            queries = edit_queries(example.edit)
            edit_nll = sum(adapter.target_loss(q) for q in queries) / len(queries)
        norm = sum(u.float().pow(2).sum() for u in updates.values()).sqrt()
        self._last_violation = float(norm.detach()) - self.config.margin
        loss = edit_nll + self.learned.lagrange * (norm - self.config.margin)
        return loss, {"edit_nll": float(edit_nll.detach()), "update_norm": float(norm.detach()), "lagrange": float(self.learned.lagrange)}

    def after_step(self) -> None:
        # Gradient ascent on the multiplier, kept >= 0: it grows while the update is too large.
        violation = getattr(self, "_last_violation", 0.0)
        self.learned.lagrange.copy_((self.learned.lagrange + self.config.lambda_lr * violation).clamp(min=0.0))
