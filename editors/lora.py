"""LoRA editing (EasyEdit's multimodal LoRA): a low-rank adapter on the language model's layers.

peft wraps the chosen linear modules of the language model's decoder layers (by default ``q_proj``
and ``v_proj`` of every layer, rank 8, alpha 32) and the edit trains the adapter alone on the NLL
of the new target given the edit prompt and image: plain SGD at lr 0.1 for 5 steps, the rate
multiplied by 0.9 after every step (EasyEdit's hparams for LLaVA-OneVision, Qwen2-VL, Qwen3-VL).
No weight of the model changes (``side_memory``): the base linear layers sit unchanged inside
peft's wrappers and the adapter's own tensors are added beside them.

A stream of edits (sequential or lifelong schedules) trains one adapter, as the reference does: the
first live edit injects it, every later edit goes on training the same tensors (a fresh optimizer
and rate schedule per edit, as the reference builds them per call). Each edit keeps a copy of the
adapter's tensors as they were before it (on the CPU: they are small), so restoring edits in
reverse order gives every intermediate adapter back exactly; restoring the first live edit removes
the adapter with peft's ``unload`` and the model is what it was (state_dict keys and values).

``lora_type=adalora`` uses peft's AdaLoRA layers (the SVD-form adapter P diag(E) Q, E starting at
zero) with its orthogonal regulariser added to the loss, as the reference's AdaLoRA runs do; the
rank reallocation of AdaLoRA is never run (the reference never calls it either).
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterator

import torch

from editors.base import ConfigError, EditHandle, Editor, EditorConfig, EditRequest
from editors.ft import _LAYER, _only_these_require_grad, vision_tower_cached
from editors.precision import LOSS_SCALING, LossScaler, needs_loss_scaling
from mmke_eval.adapters.base import Query

LORA_TYPES = ("lora", "adalora")
OPTIMIZERS = ("sgd", "adam")
ADAPTER_NAME = "mmke_edit"


@dataclass
class LoRAConfig(EditorConfig):
    lora_type: str = field(default="lora", metadata={"help": "lora | adalora: peft's LoRA layers or its AdaLoRA (SVD-form) layers"})
    rank: int = field(default=8, metadata={"help": "adapter rank r (EasyEdit: 8)"})
    lora_alpha: int = field(default=32, metadata={"help": "scaling numerator: the update is scaled by lora_alpha / rank (EasyEdit: 32)"})
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the adapter's input during the edit's steps (seeded), never when the "
                                                               "edited model is scored (EasyEdit: 0.1, active in both)"})
    target_modules: str = field(default="q_proj v_proj", metadata={"help": "names of the linear modules inside the language model's decoder "
                                                                           "layers to adapt, separated by spaces or commas (EasyEdit: q_proj v_proj)"})
    layers: str = field(default="", metadata={"help": "decoder layer indices to adapt, separated by spaces or commas; empty: every layer (EasyEdit: every layer)"})
    steps: int = field(default=5, metadata={"help": "optimizer steps per edit (EasyEdit: 5)"})
    lr: float = field(default=0.1, metadata={"help": "learning rate of each edit's first step (EasyEdit: 0.1)"})
    lr_decay: float = field(default=0.9, metadata={"help": "the rate is multiplied by this after every step (EasyEdit's ExponentialLR gamma sh_lr: 0.9)"})
    weight_decay: float = field(default=0.0, metadata={"help": "optimizer weight decay on the adapter (EasyEdit: 0)"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd (EasyEdit's multimodal LoRA) | adam (its text LoRA)"})
    orth_reg_weight: float = field(default=0.5, metadata={"help": "AdaLoRA only: weight of the orthogonal regulariser added to the loss (peft's default, as the reference)"})
    seed: int = field(default=0, metadata={"help": "seed of the adapter's random initialisation (drawn once, when the first live edit injects it)"})
    cache_vision: bool = field(default=True, metadata={"help": "compute the frozen vision tower's features of the edit image(s) once per edit instead of at every step (same numbers)"})
    loss_scaling: str = field(default="auto", metadata={"help": "auto (dynamic on float16 models, off otherwise) | dynamic | off: loss scaling of the edit's backward pass"})

    def __post_init__(self):
        if self.lora_type not in LORA_TYPES:
            raise ConfigError(f"editor 'lora': lora_type must be one of {LORA_TYPES}, not {self.lora_type!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"editor 'lora': optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if self.loss_scaling not in LOSS_SCALING:
            raise ConfigError(f"editor 'lora': loss_scaling must be one of {LOSS_SCALING}, not {self.loss_scaling!r}")
        if self.rank < 1 or self.lora_alpha <= 0:
            raise ConfigError("editor 'lora': rank must be >= 1 and lora_alpha > 0")
        if self.steps < 0 or self.lr <= 0 or self.weight_decay < 0 or not 0 < self.lr_decay <= 1:
            raise ConfigError("editor 'lora': steps must be >= 0, lr > 0, weight_decay >= 0 and 0 < lr_decay <= 1")
        if not 0 <= self.lora_dropout < 1 or self.orth_reg_weight < 0:
            raise ConfigError("editor 'lora': lora_dropout must be in [0, 1) and orth_reg_weight >= 0")
        if not self.module_names():
            raise ConfigError("editor 'lora': target_modules names no module (e.g. 'target_modules=q_proj v_proj')")
        self.layer_indices()  # checked here, one line on a bad value

    def module_names(self) -> list[str]:
        return _items(self.target_modules)

    def layer_indices(self) -> list[int] | None:
        """The decoder layers to adapt, or None: all of them."""
        if not self.layers.strip():
            return None
        try:
            return sorted({int(part) for part in _items(self.layers)})
        except ValueError:
            raise ConfigError(f"editor 'lora': layers must be layer indices separated by spaces (e.g. 'layers=0 1') or empty, not {self.layers!r}") from None


def _items(text: str) -> list[str]:
    """Space- or comma-separated items (a comma separates --editor_args, so spaces are easier to pass)."""
    return [item for item in text.replace(",", " ").split() if item]


@dataclass
class _Adapter:
    """The live adapter: peft's tuner (to unload it) and what the model was like before it."""

    tuner: torch.nn.Module
    params: dict[str, torch.nn.Parameter]  # the adapter's trained tensors, by state_dict name
    dropouts: list[torch.nn.Module]  # the adapter's dropout layers: in train mode during the edit's steps only
    n_modules: int
    requires_grad: list[tuple[torch.nn.Parameter, bool]]  # the model's flags before peft changed them


class LoRAEditor(Editor):
    """Train one LoRA adapter on the language model across the live edits; restore undoes one edit."""

    name = "lora"
    config_class = LoRAConfig
    side_memory = True
    multi_image = "every step fits the target on all K edit images (the mean of their losses)"

    def __init__(self, config: LoRAConfig | None = None):
        super().__init__(config)
        self._adapter: _Adapter | None = None
        self._live: list[EditHandle] = []  # live edits, oldest first: restored in reverse order
        self._scalers: dict[torch.dtype, LossScaler] = {}

    def apply(self, adapter, request: EditRequest) -> EditHandle:
        first = self._adapter is None
        if first:
            self._adapter = self._inject(adapter)
        live = self._adapter
        # The adapter before this edit: what restoring it puts back (the first edit removes the adapter instead).
        before = {} if first else {name: p.detach().to("cpu", copy=True) for name, p in live.params.items()}
        handle = EditHandle(editor=self.name, saved=before)
        queries = [Query(request.prompt, image, request.target) for image in (request.image, *request.extra_images)]
        started = time.perf_counter()
        self._live.append(handle)
        try:
            losses, scaler = self._train(adapter, live, queries)
        except BaseException:
            self.restore(adapter, handle)  # never leave a half-trained adapter behind
            raise
        handle.stats = {
            "lora_type": self.config.lora_type,
            "rank": self.config.rank,
            "steps": self.config.steps,
            "edit_images": len(queries),
            "initial_loss": losses[0] if losses else None,
            "loss": losses[-1] if losses else None,  # after the last step
            "seconds": round(time.perf_counter() - started, 4),
            "adapter_params": sum(p.numel() for p in live.params.values()),
            "adapted_modules": live.n_modules,
            "live_edits": len(self._live),  # edits the adapter holds, this one included
            **scaler.describe(),
        }
        return handle

    def restore(self, adapter, handle: EditHandle) -> None:
        if not self._live or self._live[-1] is not handle:
            raise RuntimeError("editor 'lora': edits must be restored in reverse order of their applies "
                               f"({len(self._live)} live; this handle is {'not the last one' if any(h is handle for h in self._live) else 'not live'})")
        self._live.pop()
        if not self._live:  # the first live edit: the adapter goes, the model is as before it
            self._remove(adapter)
        else:
            with torch.no_grad():
                for name, p in self._adapter.params.items():
                    p.copy_(handle.saved[name])
        handle.saved.clear()

    def summarize(self, stats: list[dict]) -> dict:
        """The task's edits: how big the adapter is, how far the edits learned their targets, how long they took."""
        if not stats:
            return {}

        def mean(key: str) -> float | None:
            values = [s[key] for s in stats if s.get(key) is not None]
            return sum(values) / len(values) if values else None

        return {"edits": len(stats), "adapter_params": stats[-1]["adapter_params"], "most_live_edits": max(s["live_edits"] for s in stats),
                "mean_initial_loss": mean("initial_loss"), "mean_loss": mean("loss"), "mean_seconds": mean("seconds")}

    # --- the adapter ---------------------------------------------------------------------------

    def _inject(self, adapter) -> _Adapter:
        """Wrap the target modules with peft's layers (seeded initialisation); nothing else changes."""
        from peft import AdaLoraConfig, AdaLoraModel, LoraConfig, LoraModel
        from peft.functional import cast_adapter_dtype

        model = adapter.model
        if hasattr(model, "peft_config"):
            raise ConfigError("editor 'lora': the model already carries a peft adapter (peft_config); load it without one")
        targets = self._target_modules(adapter)
        options = dict(lora_alpha=self.config.lora_alpha, lora_dropout=self.config.lora_dropout, target_modules=targets, bias="none")
        if self.config.lora_type == "adalora":
            # AdaLoRA's rank is init_r (it ignores r). total_step is required by peft but only drives
            # the rank reallocation, which is never run.
            peft_config, tuner_class = AdaLoraConfig(init_r=self.config.rank, target_r=self.config.rank,
                                                     total_step=max(self.config.steps, 1),
                                                     orth_reg_weight=self.config.orth_reg_weight, **options), AdaLoraModel
        else:
            peft_config, tuner_class = LoraConfig(r=self.config.rank, **options), LoraModel
        flags = [(p, p.requires_grad) for p in model.parameters()]
        original = {id(p) for p, _ in flags}
        with torch.random.fork_rng(devices=[]):  # the same adapter every run, the caller's RNG untouched
            torch.manual_seed(self.config.seed)
            tuner = tuner_class(model, peft_config, ADAPTER_NAME)
        try:
            # float32 adapter tensors on a float16/bfloat16 model (peft's get_peft_model does the same):
            # small updates to them do not vanish in half-precision rounding
            cast_adapter_dtype(model, ADAPTER_NAME)
        except BaseException:
            tuner.unload()
            raise
        finally:
            for p, flag in flags:  # peft froze the model's parameters: their flags are the caller's
                p.requires_grad_(flag)
        params = {name: p for name, p in model.named_parameters() if id(p) not in original and _trained(name)}
        # peft creates its dropout layers in train mode whatever the model's mode; scoring never uses them
        dropouts = [m for name, m in model.named_modules() if ".lora_dropout." in f".{name}" and isinstance(m, torch.nn.Dropout)]
        for m in dropouts:
            m.eval()
        return _Adapter(tuner=tuner, params=params, dropouts=dropouts, n_modules=len(targets), requires_grad=flags)

    def _remove(self, adapter) -> None:
        live, self._adapter = self._adapter, None
        live.tuner.unload()  # peft puts each wrapped module's base layer back in its place
        for p, flag in live.requires_grad:
            p.requires_grad_(flag)

    def _target_modules(self, adapter) -> list[str]:
        """Full names of the modules to adapt: the configured names inside the language model's
        decoder layers (the stack holding the adapter's ``llm_last_mlp`` group)."""
        model = adapter.model
        found = [_LAYER.match(name) for name in adapter.parameter_group("llm_last_mlp")]
        if not found or not all(found) or len({m.group(1) for m in found}) != 1:
            raise ConfigError(f"editor 'lora': cannot find the language model's decoder layers of {type(model).__name__}")
        stack = found[0].group(1)
        n_layers = len(model.get_submodule(stack))
        wanted = self.config.layer_indices()
        if wanted is not None and (wanted[0] < 0 or wanted[-1] >= n_layers):
            raise ConfigError(f"editor 'lora': layers={self.config.layers!r} outside the {n_layers} decoder layers of "
                              f"{type(model).__name__} (0..{n_layers - 1})")
        layers = range(n_layers) if wanted is None else wanted
        targets = []
        for module_name in self.config.module_names():
            names = [f"{stack}.{i}.{sub}" for i in layers for sub, _ in model.get_submodule(f"{stack}.{i}").named_modules()
                     if sub.rsplit(".", 1)[-1] == module_name]
            if not names:
                known = sorted({sub.rsplit(".", 1)[-1] for sub, m in model.get_submodule(f"{stack}.0").named_modules()
                                if isinstance(m, torch.nn.Linear)})
                raise ConfigError(f"editor 'lora': target_modules entry {module_name!r} is no module of the decoder layers "
                                  f"of {type(model).__name__} ({stack}); its linear modules: {known}")
            targets += names
        return targets

    # --- training --------------------------------------------------------------------------------

    def _scaler(self, dtype: torch.dtype) -> LossScaler:
        if dtype not in self._scalers:
            self._scalers[dtype] = LossScaler(enabled=needs_loss_scaling(dtype, self.config.loss_scaling))
        return self._scalers[dtype]

    def _train(self, adapter, live: _Adapter, queries: list[Query]) -> tuple[list[float], LossScaler]:
        """The edit's optimizer steps on the adapter alone; the target's NLL (dropout off, as the
        probes see the model; without AdaLoRA's regulariser) before the first step and after the last."""
        weights = list(live.params.values())
        scaler = self._scaler(next(adapter.model.parameters()).dtype)
        if self.config.optimizer == "sgd":
            optimizer = torch.optim.SGD(weights, lr=self.config.lr, weight_decay=self.config.weight_decay)
        else:
            optimizer = torch.optim.Adam(weights, lr=self.config.lr, weight_decay=self.config.weight_decay)
        schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.config.lr_decay)

        def loss_fn(regularised: bool = True) -> torch.Tensor:
            loss = sum(adapter.target_loss(query) for query in queries) / len(queries)
            if regularised and self.config.lora_type == "adalora" and self.config.orth_reg_weight > 0:
                loss = loss + self.config.orth_reg_weight * _orthogonal_penalty(live.params)
            return loss

        if not self.config.steps:
            return [], scaler
        vision = vision_tower_cached(adapter, list(live.params)) if self.config.cache_vision else nullcontext()
        with _only_these_require_grad(adapter.model, weights), vision:
            with torch.no_grad():
                losses = [float(loss_fn(regularised=False))]
            # dropout masks from a seed of their own (the edit's place in the stream): the same edit twice, the same adapter
            with _dropout_active(live.dropouts), torch.random.fork_rng(devices=_cuda_devices(adapter.model)):
                torch.manual_seed(self.config.seed + len(self._live))
                for _ in range(self.config.steps):
                    _, grads = scaler.gradients(loss_fn, weights)
                    for weight, grad in zip(weights, grads):
                        weight.grad = grad.to(weight.dtype)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    schedule.step()
            with torch.no_grad():
                losses.append(float(loss_fn(regularised=False)))
        return losses, scaler


@contextmanager
def _dropout_active(dropouts: list[torch.nn.Module]) -> Iterator[None]:
    for m in dropouts:
        m.train()
    try:
        yield
    finally:
        for m in dropouts:
            m.eval()


def _cuda_devices(model: torch.nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _trained(name: str) -> bool:
    """The adapter tensors an edit trains (AdaLoRA's ``ranknum`` is a constant, not one of them)."""
    return any(f".{part}." in f".{name}." for part in ("lora_A", "lora_B", "lora_E"))


def _orthogonal_penalty(params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
    """AdaLoRA's regulariser as peft computes it: the mean over the adapter's P and Q matrices of
    ||P P^T - I||_F (``lora_A``, r x in) and ||Q^T Q - I||_F (``lora_B``, out x r)."""
    terms = []
    for name, p in params.items():
        if ".lora_A." in f".{name}." or ".lora_B." in f".{name}.":
            cov = p @ p.T if ".lora_A." in f".{name}." else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)))
    return torch.stack(terms).mean()
