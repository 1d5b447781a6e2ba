"""KE: Knowledge Editor (De Cao, Aziz and Titov, "Editing Factual Knowledge in Language Models", EMNLP 2021).

The reference's ``OneShotLearner`` (VLKEB / MMKE-Bench ``KE/src/models/ke_train.py`` build it from
the KnowledgeEditor code, ``nicola-decao/KnowledgeEditor`` ``src/models/one_shot_learner.py``),
tensor for tensor, so its published checkpoints load after ``mmke-eval convert-checkpoint``
(docs/editors.md, "Loading the published checkpoints"):

* the condition: the text ``"{original} >> {new} || {prompt}"`` tokenized by the base model's
  tokenizer (its special tokens, at most ``max_length`` 32 tokens), embedded by the editor's own
  embedding table (initialised from the base model's input embeddings, then trained), read by a
  one-layer bidirectional LSTM (``hidden_dim`` 128) whose two final states go through
  ``tanh(Linear)`` to ``condition_dim`` (1024);
* per edited weight ``W`` [out, in], a conditioner ``Linear(condition_dim, hidden_dim)``, tanh,
  ``Linear(hidden_dim, 2 * (out + in) + 1)``, both weight-normalised (``weight = g * v / |v|`` by
  row), whose output splits into ``col_a`` (in), ``row_a`` (out), ``col_b`` (in), ``row_b`` (out) and
  ``eta`` (1);
* the edit *adds* ``max_scale * sigmoid(eta) * (grad_W * (softmax(row_a) col_a^T) + softmax(row_b) col_b^T)``
  to ``W``, ``grad_W`` being the gradient of the edit NLL. ``grad_W = sum_t delta_t u_t^T`` is never
  formed: the element-wise scaling is applied to its factors.

Our own training starts as a plain gradient-descent step of size ``edit_lr`` (the last conditioner
layer outputs its bias only, chosen so); the reference starts from PyTorch's default initialisation.
Training (shared docs 3.2): cross-entropy of the new target on the edit input, plus a Lagrangian
constraint ``lambda * (||dW|| - margin)`` on the norm of all updates together, with ``lambda >= 0``
raised by gradient ascent (``lambda_lr``, reference 0.1) while the norm exceeds ``margin``. (The
reference constrains ``lp``, the mean over weights of each update's root mean square, against
margins 1e-3 to 1e-7, decayed when validation accuracy passes 0.9; here the margin is fixed, an
option.) Edits the same weights as MEND (last three layers' MLPs) and restores exactly what it
touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from editors.base import ConfigError, EditRequest
from editors.learned import TrainingExample, WeightUpdateConfig, WeightUpdateEditor, edit_queries, gradient_factors, substituted
from mmke_eval.reference.safe_pickle import ConversionError, Stub
from mmke_eval.reference.weights import copy_checked, listing, match_weights, shape_of

# The reference's names: a conditioner per edited weight, "<weight name, dots as _>_conditioner";
# the LSTM's tensors of the condition encoder.
REFERENCE_CONDITIONER = re.compile(r"(?:^|_)layers_(\d+)_(?:mlp_)?(\w+?)_weight_conditioner$")
REFERENCE_LSTM = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                  "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse")


def conditioner_key(conditioner: str) -> tuple[int, str]:
    """``(layer index, module)`` of the weight a reference conditioner edits."""
    m = REFERENCE_CONDITIONER.search(conditioner)
    if not m:
        raise ConversionError(f"cannot tell the layer and module of KE conditioner {conditioner!r}")
    return int(m.group(1)), m.group(2)


@dataclass
class KEConfig(WeightUpdateConfig):
    hidden_dim: int = field(default=128, metadata={"help": "LSTM state size and conditioner hidden size (reference 128)"})
    condition_dim: int = field(default=1024, metadata={"help": "size of the edit's condition vector (reference 1024)"})
    max_length: int = field(default=32, metadata={"help": "condition text truncated to this many tokens (reference 32)"})
    max_scale: float = field(default=1.0, metadata={"help": "training: bound of the update's scale (reference 1; a checkpoint keeps its own)"})
    edit_lr: float = field(default=1e-4, metadata={"help": "training: the untrained network's update is -edit_lr * gradient"})
    margin: float = field(default=1e-3, metadata={"help": "training: bound on the update norm (Lagrangian constraint)"})
    lambda_lr: float = field(default=0.1, metadata={"help": "training: gradient-ascent rate of the Lagrange multiplier"})
    meta_lr: float = field(default=3e-4, metadata={"help": "training: learning rate of the hyper-network (reference 3e-4)"})
    # KE's trainer (ke_train.py, train_ke.sh): centered RMSprop, linear warm-up over 1k updates then
    # linear decay to 0 at 20k, and alpha_lp a parameter from 1 trained by gradient ascent at lr 0.1.
    optimizer: str = field(default="rmsprop_centered", metadata={"help": "training: rmsprop_centered (KE's trainer) or adam (ours before)"})
    warmup_steps: int = field(default=1000, metadata={"help": "training: linear learning-rate warm-up over N updates (reference 1000; 0: none)"})
    decay_steps: int = field(default=20000, metadata={"help": "training: the rate decays linearly to 0 at update N (reference 20000; 0: constant)"})
    lagrange_update: str = field(default="learned", metadata={"help": "training: learned (KE's alpha_lp: a parameter from 1, gradient ascent in the optimizer at lambda_lr) or ascent (ours before: from 0, + lambda_lr * violation per step)"})

    RUNTIME_FIELDS = WeightUpdateConfig.RUNTIME_FIELDS + ("max_scale", "edit_lr", "margin", "lambda_lr", "optimizer",
                                                          "warmup_steps", "decay_steps", "lagrange_update")

    def __post_init__(self):
        super().__post_init__()
        if min(self.layers, self.hidden_dim, self.condition_dim, self.max_length) < 1:
            raise ConfigError("editor 'ke': layers, hidden_dim, condition_dim and max_length must be >= 1")
        if not (self.edit_lr > 0 and self.margin > 0 and self.lambda_lr >= 0 and self.max_scale > 0):
            raise ConfigError("editor 'ke': edit_lr, margin and max_scale must be > 0, lambda_lr >= 0")
        if self.optimizer not in ("rmsprop_centered", "adam"):
            raise ConfigError(f"editor 'ke': optimizer must be rmsprop_centered or adam, not {self.optimizer!r}")
        if self.lagrange_update not in ("learned", "ascent"):
            raise ConfigError(f"editor 'ke': lagrange_update must be learned or ascent, not {self.lagrange_update!r}")
        if self.warmup_steps < 0 or self.decay_steps < 0 or (self.decay_steps and self.decay_steps <= self.warmup_steps):
            raise ConfigError("editor 'ke': warmup_steps and decay_steps must be >= 0, and decay_steps (unless 0) > warmup_steps")


class WeightNormLinear(nn.Module):
    """``x W^T + b`` with ``W = weight_g * weight_v / |weight_v|`` (norm by output row)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        plain = nn.Linear(d_in, d_out)
        self.weight_v = nn.Parameter(plain.weight.detach().clone())
        self.weight_g = nn.Parameter(plain.weight.detach().norm(dim=1, keepdim=True))
        self.bias = nn.Parameter(plain.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return nn.functional.linear(x, weight, self.bias)


class ConditionEncoder(nn.Module):
    """Token ids -> condition vector: embedding, bidirectional LSTM's final states, tanh(Linear)."""

    def __init__(self, embeddings: torch.Tensor, hidden_dim: int, condition_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(embeddings.shape[0], embeddings.shape[1])
        with torch.no_grad():
            self.embedding.weight.copy_(embeddings.float())
        self.lstm = nn.LSTM(embeddings.shape[1], hidden_dim, num_layers=1, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(2 * hidden_dim, condition_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(self.embedding(ids).unsqueeze(0))
        return torch.tanh(self.linear(torch.cat([h_n[0, 0], h_n[1, 0]], dim=-1)))


class WeightConditioner(nn.Module):
    """Condition -> (col_a, row_a, col_b, row_b, eta) for one weight [d_out, d_in]."""

    def __init__(self, condition_dim: int, hidden_dim: int, d_out: int, d_in: int):
        super().__init__()
        self.d_out, self.d_in = d_out, d_in
        self.hidden = WeightNormLinear(condition_dim, hidden_dim)
        self.out = WeightNormLinear(hidden_dim, 2 * (d_out + d_in) + 1)

    def forward(self, cond: torch.Tensor) -> list[torch.Tensor]:
        return list(self.out(torch.tanh(self.hidden(cond))).split([self.d_in, self.d_out, self.d_in, self.d_out, 1], dim=-1))

    def start_as_descent(self, step: float, max_scale: float) -> None:
        """Outputs the bias alone, chosen so that the update is ``-step * grad``: softmax(row_a) is
        uniform (1/out), col_a = -2 step out / max_scale, sigmoid(eta) = 1/2, no shift term."""
        with torch.no_grad():
            self.out.weight_g.zero_()
            self.out.bias.zero_()
            self.out.bias[: self.d_in] = -2.0 * step * self.d_out / max_scale


class KENetworks(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, ...]], embeddings: torch.Tensor, cfg: KEConfig):
        super().__init__()
        self.names = sorted(shapes)
        self.condition = ConditionEncoder(embeddings, cfg.hidden_dim, cfg.condition_dim)
        self.conditioners = nn.ModuleDict()
        for index, name in enumerate(self.names):
            d_out, d_in = shapes[name]
            conditioner = WeightConditioner(cfg.condition_dim, cfg.hidden_dim, d_out, d_in)
            conditioner.start_as_descent(cfg.edit_lr, cfg.max_scale)
            self.conditioners[str(index)] = conditioner
        self.register_buffer("max_scale", torch.tensor(float(cfg.max_scale)))
        self.register_buffer("lagrange", torch.zeros(()))

    def deltas(self, cond: torch.Tensor, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Per weight, what the reference adds to it."""
        out = {}
        for index, name in enumerate(self.names):
            u, grad_out = factors[name]
            col_a, row_a, col_b, row_b, eta = self.conditioners[str(index)](cond)
            scaled = (grad_out * row_a.softmax(-1)).t() @ (u * col_a)
            shift = torch.outer(row_b.softmax(-1), col_b)
            out[name] = self.max_scale * torch.sigmoid(eta) * (scaled + shift)
        return out

    def updates(self, cond: torch.Tensor, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Per weight, the tensor to subtract (the negative of what the reference adds)."""
        return {name: -delta for name, delta in self.deltas(cond, factors).items()}


class KEEditor(WeightUpdateEditor):
    name = "ke"
    config_class = KEConfig
    # The Lagrangian term changes with its multiplier; the reference keeps the best edit accuracy.
    validation_key = "edit_nll"

    def build(self, adapter) -> nn.Module:
        shapes = self.linear_weight_shapes(adapter)
        networks = KENetworks(shapes, adapter.model.get_input_embeddings().weight.detach(), self.config)
        if self.config.lagrange_update == "learned":
            # KE's alpha_lp: a parameter from 1 that the optimizer raises (its gradient negated:
            # ascent) while the constraint is violated. Same state-dict key as the buffer.
            del networks.lagrange
            networks.lagrange = nn.Parameter(torch.ones((), device=networks.max_scale.device))
            networks.lagrange.register_hook(lambda grad: -grad)
        return networks

    def optimizer_groups(self):
        lagrange = [p for name, p in self.learned.named_parameters() if name == "lagrange"]
        rest = [p for name, p in self.learned.named_parameters() if name != "lagrange" and p.requires_grad]
        return [{"params": rest, "lr": self.config.meta_lr}] + ([{"params": lagrange, "lr": self.config.lambda_lr}] if lagrange else [])

    def build_optimizer(self):
        cfg = self.config
        groups = self.optimizer_groups()
        optimizer = torch.optim.RMSprop(groups, centered=True) if cfg.optimizer == "rmsprop_centered" else torch.optim.Adam(groups)
        if not cfg.warmup_steps and not cfg.decay_steps:
            return optimizer, None

        def factor(step: int) -> float:  # linear warm-up, then linear decay to 0 at decay_steps
            if cfg.warmup_steps and step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            if cfg.decay_steps:
                return max(0.0, (cfg.decay_steps - step) / (cfg.decay_steps - cfg.warmup_steps))
            return 1.0

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    @staticmethod
    def condition_text(request: EditRequest) -> str:
        return f"{request.original} >> {request.target} || {request.prompt}"

    def condition_ids(self, adapter, request: EditRequest) -> torch.Tensor:
        """The condition's token ids as the reference makes them: the base tokenizer, its special
        tokens, truncated to ``max_length``."""
        ids = adapter.tokenizer(self.condition_text(request), truncation=True, max_length=self.config.max_length,
                                return_tensors="pt").input_ids[0]
        rows = self.learned.condition.embedding.num_embeddings
        if ids.numel() and int(ids.max()) >= rows:
            raise ConfigError(f"editor 'ke': the condition's token id {int(ids.max())} is past the editor's "
                              f"embedding table ({rows} rows)")
        return ids

    def _condition(self, adapter, request: EditRequest) -> torch.Tensor:
        return self.learned.condition(self.condition_ids(adapter, request).to(adapter.device))

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
        return loss, {"edit_nll": float(edit_nll.detach()), "update_norm": float(norm.detach()), "lagrange": float(self.learned.lagrange.detach())}

    def after_step(self) -> None:
        # Gradient ascent on the multiplier, kept >= 0: it grows while the updates are too large
        # (lagrange_update=learned: the optimizer took the step; only the bound is applied here).
        with torch.no_grad():
            if self.config.lagrange_update == "learned":
                self.learned.lagrange.clamp_(min=0.0)
                return
            violation = getattr(self, "_last_violation", 0.0)
            self.learned.lagrange.copy_((self.learned.lagrange + self.config.lambda_lr * violation).clamp(min=0.0))

    # The reference's KE file (mmke_eval/reference/): a PyTorch-Lightning checkpoint of OneShotLearner,
    # its tensors under "state_dict" ("learner." ...), its settings under "hyper_parameters".
    reference_format = "PyTorch-Lightning checkpoint, KE OneShotLearner"
    reference_keys = ("state_dict",)
    reference_step_key = "global_step"

    def load_reference(self, adapter, ref: dict[str, Any], path: Path, inner_params: list[str] | None) -> dict[str, Any]:
        net = self.learned
        sd = ref["state_dict"]
        if not isinstance(sd, dict):
            raise ConversionError(f"{path}: 'state_dict' holds a {type(sd).__name__}, not a state dict")
        conditioner_names = sorted({m.group(1) for k in sd if (m := re.match(r"learner\.conditioners\.([^.]+)\.", k))})
        if not conditioner_names:
            raise ConversionError(f"{path}: missing key 'learner.conditioners.*' (not a KE OneShotLearner checkpoint?)")
        shapes = self.edited_modules(adapter)
        if inner_params:
            wanted = {n.replace(".", "_") + "_conditioner" for n in inner_params}
            if wanted != set(conditioner_names):
                raise ConversionError(f"{path}: its conditioners {listing(conditioner_names)} are not those of --inner_params "
                                      f"{listing(wanted)}")
        mapping = match_weights(list(shapes), conditioner_names, f"{path}", key_of=conditioner_key)
        state = dict(net.state_dict())  # entries are replaced, never written into
        known = set()

        def take(ours: str, theirs: str, rows=None):
            known.add(theirs)
            copy_checked(state, sd, ours, theirs, path, rows)

        emb_key = "learner.condition.embedding.weight"
        known.add(emb_key)
        if emb_key not in sd:
            raise ConversionError(f"{path}: missing key {emb_key!r}")
        emb, ours_emb = sd[emb_key], state["condition.embedding.weight"]
        if emb.dim() != 2 or emb.shape[1] != ours_emb.shape[1]:
            raise ConversionError(f"{path}: {emb_key!r} has shape {shape_of(emb)}; the editor on this model needs "
                                  f"[{ours_emb.shape[0]}, {ours_emb.shape[1]}] (the base model's embedding width)")
        # The reference's table has the rows of its model's vocabulary; ours those of the model's
        # embeddings (llava-hf adds <image>, <pad> and padding rows). Shared ids are the same tokens;
        # extra rows of ours keep the base model's embeddings (the reference's initialisation).
        shared = min(emb.shape[0], ours_emb.shape[0])
        table = ours_emb.clone()
        table[:shared] = emb[:shared].float()
        state["condition.embedding.weight"] = table
        for name in REFERENCE_LSTM:
            take(f"condition.lstm.{name}", f"learner.condition.lstm._module.{name}")
        take("condition.linear.weight", "learner.condition.linear._linear_layers.0.weight")
        take("condition.linear.bias", "learner.condition.linear._linear_layers.0.bias")
        for conditioner, our_name in mapping.items():
            index = str(net.names.index(our_name))
            for ours, theirs in (("hidden", "0"), ("out", "2")):
                for param in ("weight_g", "weight_v", "bias"):
                    take(f"conditioners.{index}.{ours}.{param}", f"learner.conditioners.{conditioner}.conditioners.{theirs}.{param}")
        hparams = ref.get("hyper_parameters")
        hparams = hparams.fields() if isinstance(hparams, Stub) else (hparams if isinstance(hparams, dict) else {})
        max_scale = float(hparams.get("max_scale", 1.0))
        state["max_scale"] = torch.tensor(max_scale)
        if "alpha_lp" in sd:
            known.add("alpha_lp")
            state["lagrange"] = sd["alpha_lp"].detach().float().clamp(min=0.0).reshape(())
        known.add("margin_lp")
        extra = sorted(k for k in sd if k.startswith("learner.") and k not in known)
        if extra:
            raise ConversionError(f"{path}: unexpected key {extra[0]!r} (not part of KE's OneShotLearner as mmke-eval knows it)")
        net.load_state_dict(state, strict=True)
        return {
            "mapping": {c: mapping[c] for c in conditioner_names},
            "embedding_rows": {"reference": int(emb.shape[0]), "model": int(ours_emb.shape[0]), "from_reference": int(shared)},
            "max_scale": max_scale,
            "margin_lp": float(sd["margin_lp"]) if isinstance(sd.get("margin_lp"), torch.Tensor) else None,
            "ignored_keys": len([k for k in sd if not k.startswith("learner.") and k not in known]),
        }
