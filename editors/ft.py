"""Fine-tuning editors (MMKE-Bench FT-LLM and FT-Alignment).

One class, two registry entries: ``target`` names the adapter's parameter group ("llm_last_mlp"
or "alignment"). The edit minimises the NLL of the new target on the edit prompt and edit image
with AdamW for a fixed number of steps, like the reference (no early stop).

Only the group's tensors are touched: they are cloned before the first step, the optimizer sees
fp32 master copies of them alone, and the model gets each master written back in its own dtype
after every step. On an fp32 model the master and the weight are the same numbers; on fp16/bf16
the updates accumulate in fp32 instead of vanishing in half-precision rounding (the reference
casts the whole model to fp32 instead, which costs the memory of a second model). The forward
and backward passes run in the model's dtype; on float16 the loss is scaled dynamically so that
small gradients do not underflow (editors/precision.py). The results record both.
"""

from __future__ import annotations

import copy
import re
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterator

import torch

from editors.base import ConfigError, EditHandle, Editor, EditorConfig, EditRequest
from editors.precision import LOSS_SCALING, LossScaler, needs_loss_scaling
from mmke_eval.adapters.base import Query

TARGETS = ("llm_last_mlp", "alignment")


@dataclass
class FTConfig(EditorConfig):
    target: str = field(default="llm_last_mlp", metadata={"help": "parameter group to fine-tune: " + " | ".join(TARGETS)})
    steps: int = field(default=40, metadata={"help": "AdamW steps on the edit example (MMKE: 40 LLM, 30 alignment)"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate (MMKE: 1e-4 LLaVA/MiniGPT-4, 2e-4 BLIP-2)"})
    # The reference builds AdamW with the learning rate only, so it gets torch's default decay.
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (torch default, as in the reference)"})
    cache_lower_layers: bool = field(
        default=True,
        metadata={"help": "compute the layers below the edited ones once per case instead of at every step (same numbers)"},
    )
    cache_vision: bool = field(
        default=True,
        metadata={"help": "compute the frozen vision tower's features of the edit image(s) once per case instead of at every step (same numbers)"},
    )
    loss_scaling: str = field(
        default="auto",
        metadata={"help": "auto (dynamic on float16 models, off otherwise) | dynamic | off: loss scaling of the edit's backward pass"},
    )

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ConfigError(f"editor 'ft': target must be one of {TARGETS}, not {self.target!r}")
        if self.steps < 0:
            raise ConfigError("editor 'ft': steps must be >= 0")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("editor 'ft': lr must be > 0 and weight_decay >= 0")
        if self.loss_scaling not in LOSS_SCALING:
            raise ConfigError(f"editor 'ft': loss_scaling must be one of {LOSS_SCALING}, not {self.loss_scaling!r}")


class FTEditor(Editor):
    """Fine-tune one parameter group of the model on the edit example; restore copies it back."""

    name = "ft"
    config_class = FTConfig
    multi_image = "every step fits the target on all K edit images (the mean of their losses)"

    def __init__(self, config: FTConfig | None = None):
        super().__init__(config)
        self._scalers: dict[torch.dtype, LossScaler] = {}  # the scale found by one edit serves the next

    @property
    def reference_followup_image(self) -> bool:
        # VLKEB edit twice: only FT-Alignment's second edit sees the image (a text-only input
        # would give the alignment module nothing to learn from).
        return self.config.target == "alignment"

    def describe(self) -> dict:
        used = {str(dtype).removeprefix("torch."): scaler.describe() for dtype, scaler in self._scalers.items()}
        return {
            **super().describe(),
            "precision": {
                "master_dtype": "float32",
                "compute_dtype": sorted(used) or "none yet (no edit applied)",  # the model's dtype
                "loss_scaling_used": used,
            },
        }

    def edited_group(self) -> str:
        return self.config.target

    def _scaler(self, dtype: torch.dtype) -> LossScaler:
        if dtype not in self._scalers:
            self._scalers[dtype] = LossScaler(enabled=needs_loss_scaling(dtype, self.config.loss_scaling))
        return self._scalers[dtype]

    def apply(self, adapter, request: EditRequest) -> EditHandle:
        params = adapter.parameter_group(self.config.target)
        handle = EditHandle(
            editor=self.name,
            touched=tuple(params),
            saved={name: p.detach().clone() for name, p in params.items()},
        )
        # Multi-step editing (edit_images=K): every step fits the target on all K edit images.
        queries = [Query(request.prompt, image, request.target) for image in (request.image, *request.extra_images)]
        compute_dtype = next(iter(params.values())).dtype
        scaler = self._scaler(compute_dtype)
        overflows_before = scaler.overflows
        started = time.perf_counter()
        try:
            losses = self._train(adapter, params, queries, scaler)
        except BaseException:
            self.restore(adapter, handle)  # never leave a half-edited model behind
            raise
        handle.stats = {
            "target": self.config.target,
            "steps": self.config.steps,
            "edit_images": len(queries),
            "n_params": sum(p.numel() for p in params.values()),
            "initial_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,  # after the last step
            "seconds": round(time.perf_counter() - started, 4),
            "compute_dtype": str(compute_dtype).removeprefix("torch."),
            "master_dtype": "float32",
            **scaler.describe(),
            **({"overflow_retries": scaler.overflows - overflows_before} if scaler.enabled else {}),
        }
        return handle

    def _train(self, adapter, params: dict[str, torch.nn.Parameter], queries: list[Query], scaler: LossScaler) -> list[float]:
        """AdamW on fp32 masters of ``params`` (loss: the mean over ``queries``); returns the loss
        before each step and after the last."""

        def loss_fn() -> torch.Tensor:
            return sum(adapter.target_loss(query) for query in queries) / len(queries)

        weights = list(params.values())
        masters = [w.detach().to(torch.float32).clone() for w in weights]
        optimizer = torch.optim.AdamW(masters, lr=self.config.lr, weight_decay=self.config.weight_decay)
        vision = vision_tower_cached(adapter, list(params)) if self.config.cache_vision else nullcontext()
        with _only_these_require_grad(adapter.model, weights), vision:
            cached = lower_layers_cached(adapter, list(params), loss_fn, len(queries)) if self.config.cache_lower_layers else nullcontext()
            with cached:
                losses = self._steps(loss_fn, weights, masters, optimizer, scaler)
        return losses

    def _steps(self, loss_fn, weights, masters, optimizer, scaler: LossScaler) -> list[float]:
        """The AdamW steps; the loss before each step and after the last."""
        losses = []
        for _ in range(self.config.steps):
            loss, grads = scaler.gradients(loss_fn, weights)
            for master, grad in zip(masters, grads):
                master.grad = grad
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for weight, master in zip(weights, masters):
                    weight.copy_(master)  # copy_ casts to the weight's dtype
            losses.append(float(loss.detach()))
        if losses:
            # Inside the caller's contexts, so this forward builds no graph through the frozen parts.
            losses.append(float(loss_fn().detach()))
        return losses


@contextmanager
def _only_these_require_grad(model: torch.nn.Module, weights: list[torch.nn.Parameter]) -> Iterator[None]:
    """``requires_grad`` on exactly ``weights`` inside; every parameter's flag is put back after.

    Turning the others off keeps autograd from building a graph through the frozen parts.
    """
    wanted = {id(w) for w in weights}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in wanted)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


_LAYER = re.compile(r"^(.*\.layers)\.(\d+)\.")


@contextmanager
def lower_layers_cached(adapter, names: list[str], loss_fn, n_forwards: int) -> Iterator[bool]:
    """Inside, the decoder layers below the lowest edited one do not run: their output (the hidden
    states entering the lowest edited layer) is computed once here, for each of the ``n_forwards``
    forward passes ``loss_fn`` makes, and fed back in at every later call. Those layers do not
    change during the edit, so the loss and its gradients are the same numbers as the full model's.

    Applies when every edited tensor sits in one stack of decoder layers (``...layers.<i>.``) above
    its first layer (FT-LLM); otherwise (FT-Alignment) it changes nothing and yields False.
    """
    found = [_LAYER.match(name) for name in names]
    if not found or not all(found) or len({m.group(1) for m in found}) != 1:
        yield False
        return
    layers = adapter.model.get_submodule(found[0].group(1))
    lowest = min(int(m.group(2)) for m in found)
    if lowest == 0 or not isinstance(layers, torch.nn.ModuleList):
        yield False
        return
    entering: list[torch.Tensor] = []
    tuple_output: list[bool] = []

    def record(module, args, kwargs):
        entering.append((args[0] if args else kwargs["hidden_states"]).detach())

    def record_output(module, args, output):
        tuple_output.append(isinstance(output, tuple))

    hooks = [layers[lowest].register_forward_pre_hook(record, with_kwargs=True),
             layers[lowest - 1].register_forward_hook(record_output)]
    try:
        with torch.no_grad():
            loss_fn()
    finally:
        for hook in hooks:
            hook.remove()
    if len(entering) != n_forwards:  # not one pass per query: do not guess which input is which
        yield False
        return
    calls = {"n": 0}

    def replay(module, args, kwargs):
        hidden = entering[calls["n"] % n_forwards]
        calls["n"] += 1
        return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

    originals = [layers[i] for i in range(lowest)]
    skip = _PassThrough(tuple_output[0] if tuple_output else False)
    hook = layers[lowest].register_forward_pre_hook(replay, with_kwargs=True)
    try:
        for i in range(lowest):
            layers[i] = skip
        yield True
    finally:
        hook.remove()
        for i, layer in enumerate(originals):
            layers[i] = layer


@contextmanager
def vision_tower_cached(adapter, names: list[str]) -> Iterator[bool]:
    """Inside, the vision tower runs once per distinct image input: each call whose inputs equal an
    earlier call's (the same pixel tensor values, the same options) gets that call's output back.
    The tower is frozen during the edit (no edited tensor in it), so the loss and its gradients
    are the same numbers as with the tower running at every step.

    The tower is the module holding the adapter's ``vision`` parameter group. Yields False (and
    changes nothing) when the adapter has no such group or an edited tensor lies in it.
    """
    try:
        tower_names = list(adapter.parameter_group("vision"))
    except (KeyError, ValueError, NotImplementedError):  # no vision group declared for this model
        yield False
        return
    prefix = _common_module(tower_names)
    if not prefix or any(name == prefix or name.startswith(prefix + ".") for name in names):
        yield False
        return
    parent_name, _, child = prefix.rpartition(".")
    parent = adapter.model.get_submodule(parent_name) if parent_name else adapter.model
    tower = getattr(parent, child)
    setattr(parent, child, _Memoized(tower))
    try:
        yield True
    finally:
        setattr(parent, child, tower)


def _common_module(names: list[str]) -> str:
    """The deepest module path that holds every one of the parameter ``names``."""
    parts = [name.split(".")[:-1] for name in names]
    common = []
    for column in zip(*parts):
        if any(part != column[0] for part in column[1:]):
            break
        common.append(column[0])
    return ".".join(common)


def _same_inputs(a, b) -> bool:
    """Equal call inputs: tensors by shape, dtype and values; tuples and lists item by item."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_inputs(x, y) for x, y in zip(a, b))
    return a == b


class _Memoized(torch.nn.Module):
    """Stands in for a frozen module: runs it for inputs it has not seen, returns the recorded
    output for inputs equal to earlier ones. Other attributes answer as the original's."""

    def __init__(self, original: torch.nn.Module):
        super().__init__()
        self.__dict__["original"] = original  # not a submodule: its parameters stay where they are
        self.seen: list[tuple[tuple, object]] = []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["original"], name)

    def forward(self, *args, **kwargs):
        inputs = (args, tuple(sorted(kwargs.items())))
        for seen, output in self.seen:
            if _same_inputs(seen, inputs):
                return _copied(output)
        with torch.no_grad():
            output = self.__dict__["original"](*args, **kwargs)
        self.seen.append((inputs, output))
        return _copied(output)


def _copied(value):
    """A copy of a module output: new containers and cloned tensors. Callers modify what they get
    (Qwen2-VL replaces ``pooler_output`` by its split), which must never reach the recorded one."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):  # ModelOutput included: a shallow copy, then each field copied
        fresh = copy.copy(value)
        for key, item in value.items():
            fresh[key] = _copied(item)
        return fresh
    if isinstance(value, (tuple, list)):
        items = [_copied(item) for item in value]
        return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)
    return value


class _PassThrough(torch.nn.Module):
    """Stands in for a decoder layer whose output is replayed: hands its input on unchanged."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.as_tuple else hidden_states
