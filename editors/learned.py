"""Editors with learned parts (SERAC, MEND, KE): what they share.

A learned editor holds one ``torch.nn.Module`` of learned tensors (``self.learned``), built for
one adapter by ``build``. ``mmke-eval train-editor`` (mmke_eval/training/) trains it with
``meta_loss`` on a benchmark's train split; ``apply`` then edits case by case like every editor.

A checkpoint is a folder: ``editor.safetensors`` (the learned tensors, best validation step) and
``editor.json`` (the editor, its config, the base model's fingerprint, the edited modules with
their shapes, the training data and its hash, the training history). ``load_checkpoint``
refuses a checkpoint made for another base model or other edited modules, naming both.

``substituted`` swaps tensors in for named parameters during a forward pass without copying
anything into the model, so a post-edit weight ``W - lr * dW`` keeps its graph back to the
learned networks (meta-training) and the original ``Parameter`` objects come back untouched.

A weight-update editor whose reference trainer publishes its networks (MEND, KE) reads that file
itself: ``from_reference`` (the checks and the checkpoint, shared) and ``load_reference`` (its
tensors into the networks, per editor); ``mmke-eval convert-checkpoint`` calls it.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import torch

from editors.base import ConfigError, EditHandle, Editor, EditorConfig
from mmke_eval.adapters.base import Query
from mmke_eval.reference.safe_pickle import ConversionError, int_step, peek, read_reference, sha256_of

CHECKPOINT_FORMAT = "mmke-eval editor checkpoint"
CHECKPOINT_VERSION = 1
WEIGHTS_FILE = "editor.safetensors"
UNTRAINED = "untrained"  # checkpoint=untrained: the networks as initialised, no training
SHIPPED = "mini"  # checkpoint=mini: the one shipped for the built-in world model
META_FILE = "editor.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot serve this editor and model; the message names both sides."""


@dataclass
class TrainingExample:
    """One train-split case as a learned editor trains on it.

    ``in_scope``: queries the edit must change (rephrases, the edit image, the rephrase image),
    each with the new answer as target. ``locality``: queries it must leave alone (their targets
    are the data's answers; only the pre/post agreement is trained on).
    """

    case_id: str
    edit: Any  # editors.base.EditRequest
    in_scope: list[Query] = field(default_factory=list)
    locality: list[Query] = field(default_factory=list)
    # What each in-scope query is: "edit_outer"/"edit_outer_image" (train_objective=reference) or a probe kind (probes)
    in_scope_kinds: list[str] = field(default_factory=list)


@dataclass
class LearnedConfig(EditorConfig):
    """Options every learned editor has. Subclasses add theirs."""

    checkpoint: str = field(default="", metadata={"help": "folder written by `mmke-eval train-editor` (or a converted reference checkpoint); 'mini': the one shipped for the built-in world model; 'untrained': the networks as initialised"})
    meta_lr: float = field(default=1e-4, metadata={"help": "training: Adam learning rate of the learned networks"})
    max_steps: int = field(default=2000, metadata={"help": "training: most meta-training steps (one case each)"})
    val_every: int = field(default=200, metadata={"help": "training: validate every N steps"})
    patience: int = field(default=600, metadata={"help": "training: stop after N steps without a better validation score"})
    val_cases: int = field(default=8, metadata={"help": "training: train-split cases held out for validation"})
    grad_clip: float = field(default=100.0, metadata={"help": "training: gradient-norm clip of the learned networks"})
    seed: int = field(default=0, metadata={"help": "training: seed of initialisation and case order"})
    train_objective: str = field(default="reference", metadata={"help": "training: what the edit loss is computed on: reference (the reference trainers' edit_outer, the rephrased question on the edit image, and edit_outer_image, the edit question on the rephrase image) or probes (every scored non-locality probe, ours before)"})

    # Fields that only steer training or loading: a checkpoint trained with other values of these
    # still serves (the rest of the config defines what was learned and must match).
    RUNTIME_FIELDS = ("checkpoint", "meta_lr", "max_steps", "val_every", "patience", "val_cases", "grad_clip", "seed",
                      "train_objective")

    def __post_init__(self):
        for key in ("meta_lr", "grad_clip"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, not {getattr(self, key)}")
        for key in ("max_steps", "val_every", "patience"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, not {getattr(self, key)}")
        if self.val_cases < 0:
            raise ConfigError(f"val_cases must be >= 0, not {self.val_cases}")
        if self.train_objective not in ("reference", "probes"):
            raise ConfigError(f"train_objective must be reference or probes, not {self.train_objective!r}")

    def architecture(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME_FIELDS}


def resolve_checkpoint(value: str, editor: str) -> Path:
    """``mini``: the checkpoint shipped for the built-in world model (mmke_eval/mini/editors/EDITOR);
    anything else: a folder."""
    if value == SHIPPED:
        from mmke_eval.mini import EDITOR_CHECKPOINTS_DIR

        folder = EDITOR_CHECKPOINTS_DIR / editor
        if not (folder / META_FILE).is_file():
            raise CheckpointError(f"editor {editor!r}: no checkpoint is shipped for the world model in {folder}; train one "
                                  f"with `mmke-eval train-editor --editor {editor} --output_path {folder}`")
        return folder
    return Path(value).expanduser()


class LearnedEditor(Editor):
    """Base of editors that learn how to edit. Subclasses implement build / meta_loss / apply."""

    config_class = LearnedConfig
    learned: torch.nn.Module | None = None
    # The validation number that picks the best step and stops training early (lower is better).
    validation_key: str = "loss"

    def __init__(self, config: LearnedConfig | None = None):
        super().__init__(config)
        self.learned = None
        self._built_for: int | None = None  # id() of the adapter the networks were built for
        self._checkpoint_meta: dict[str, Any] | None = None

    # -- what subclasses provide --------------------------------------------------------------
    def build(self, adapter) -> torch.nn.Module:
        """Fresh (untrained) learned networks for ``adapter``'s model."""
        raise NotImplementedError

    def meta_loss(self, adapter, example: TrainingExample) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one case (differentiable w.r.t. ``self.learned``) and its parts."""
        raise NotImplementedError

    def edited_modules(self, adapter) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the model parameters this editor's networks act on."""
        group = self.edited_group()
        if group is None:
            return {}
        return {name: tuple(p.shape) for name, p in adapter.parameter_group(group, last_k=self.edited_layers()).items()}

    def after_step(self) -> None:
        """Called after every optimizer step of training (KE updates its Lagrange multiplier)."""

    def build_optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        """The training optimizer and its learning-rate schedule (None: constant). Adam, as the
        MEND/SERAC reference trainers use (``opt: Adam``); KE has its own."""
        return torch.optim.Adam(self.optimizer_groups()), None

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Parameter groups of the training optimizer (MEND gives its step sizes their own rate)."""
        return [{"params": [p for p in self.learned.parameters() if p.requires_grad], "lr": self.config.meta_lr}]

    # -- building and loading -------------------------------------------------------------------
    def ensure_ready(self, adapter, for_training: bool = False) -> None:
        """Networks built for this adapter, and loaded from ``checkpoint`` unless training."""
        if self.learned is not None and self._built_for == id(adapter):
            return
        torch.manual_seed(self.config.seed)
        self.learned = self.build(adapter).to(adapter.device)
        self._built_for = id(adapter)
        if for_training:
            return
        self.learned.eval()  # running statistics (MEND's normalisation) stay as trained
        if self.config.checkpoint == UNTRAINED:
            return  # the networks as initialised (tests, ablations); the results say so
        if not self.config.checkpoint:
            raise ConfigError(
                f"editor {self.name!r} needs trained networks: train them with `mmke-eval train-editor --editor {self.name} "
                f"--model ... --tasks ... --output_path CKPT` and pass --editor_args checkpoint=CKPT"
            )
        self.load_checkpoint(adapter, resolve_checkpoint(self.config.checkpoint, self.name))

    def checkpoint_meta(self, adapter, data: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "editor": self.name,
            "class": f"{type(self).__module__}:{type(self).__name__}",
            "config": self.config.to_dict(),
            "architecture": self.config.architecture(),
            "base_model": model_fingerprint(adapter, self.edited_modules(adapter)),
            "edited_modules": {name: list(shape) for name, shape in self.edited_modules(adapter).items()},
            "data": data,
            "training": training,
        }

    def save_checkpoint(self, folder: Path, meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.learned.state_dict().items()}
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp), metadata={"format": CHECKPOINT_FORMAT, "editor": self.name})
        tmp.replace(folder / WEIGHTS_FILE)
        tmp = folder / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1, default=str) + "\n")
        tmp.replace(folder / META_FILE)

    def load_checkpoint(self, adapter, folder: str | Path) -> dict[str, Any]:
        folder = Path(folder).expanduser()
        meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
        if not meta_path.is_file() or not weights_path.is_file():
            raise CheckpointError(f"editor {self.name!r}: checkpoint={folder}: needs {META_FILE} and {WEIGHTS_FILE} "
                                  "(written by `mmke-eval train-editor` or `mmke-eval convert-checkpoint`)")
        meta = read_checkpoint_meta(meta_path)
        self.check_checkpoint(adapter, meta, folder)
        state = read_checkpoint_weights(weights_path, device=str(adapter.device))
        missing, unexpected = self.learned.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"editor {self.name!r}: checkpoint {folder} does not fit its networks: missing "
                                  f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        self._checkpoint_meta = meta
        return meta

    def check_checkpoint(self, adapter, meta: dict[str, Any], folder: Path) -> None:
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{folder}: not an mmke-eval editor checkpoint (format {meta.get('format')!r})")
        if meta.get("class") != f"{type(self).__module__}:{type(self).__name__}":
            raise CheckpointError(f"{folder} holds a {meta.get('editor')!r} checkpoint ({meta.get('class')}); "
                                  f"editor {self.name!r} cannot use it")
        mine = self.config.architecture()
        theirs = meta.get("architecture", {})
        differ = sorted(k for k in mine if mine[k] != theirs.get(k))
        if differ:
            raise CheckpointError(f"{folder} was trained with other editor settings: "
                                  + "; ".join(f"{k}: checkpoint {theirs.get(k)!r}, now {mine.get(k)!r}" for k in differ))
        modules = {name: list(shape) for name, shape in self.edited_modules(adapter).items()}
        if modules != meta.get("edited_modules"):
            raise CheckpointError(
                f"{folder} edits other modules than editor {self.name!r} would on this model: checkpoint "
                f"{_short(meta.get('edited_modules'))}, this model {_short(modules)}"
            )
        saved = meta.get("base_model") or {}
        if saved.get("fingerprint") is None:
            return  # a converted reference checkpoint: names and shapes are all it can say
        now = model_fingerprint(adapter, self.edited_modules(adapter))
        if saved.get("fingerprint") != now["fingerprint"] or saved.get("config_digest") != now["config_digest"]:
            raise CheckpointError(
                f"{folder} was trained on another base model: checkpoint {saved.get('name_or_path')!r} "
                f"({saved.get('class')}, config {str(saved.get('config_digest'))[:12]}, weights {str(saved.get('fingerprint'))[:12]}); "
                f"this run {now['name_or_path']!r} ({now['class']}, config {now['config_digest'][:12]}, weights {now['fingerprint'][:12]})"
            )

    def describe(self) -> dict[str, Any]:
        described = super().describe()
        if self._checkpoint_meta is not None:
            meta = self._checkpoint_meta
            described["checkpoint_info"] = {
                "editor": meta.get("editor"), "base_model": (meta.get("base_model") or {}).get("name_or_path"),
                "data": (meta.get("data") or {}).get("sha256"), "best_step": (meta.get("training") or {}).get("best_step"),
                "converted_from": meta.get("converted_from"),
                # Checkpoints written before the option (the shipped world-model ones) trained on every
                # scored non-locality probe: what train_objective=probes does now.
                "train_objective": (meta.get("config") or {}).get("train_objective")
                or ("probes (written before train_objective existed)" if not meta.get("converted_from") else "the reference's (converted)"),
            }
        return described


DAMAGED = ("the checkpoint is damaged or not one: copy it again, or write it again with `mmke-eval train-editor` "
           "(or `mmke-eval convert-checkpoint`)")


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's ``editor.json``; a file that is not a JSON object is refused naming it."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno} ({err.msg}); {DAMAGED}") from None
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); {DAMAGED}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(meta).__name__}, not the object a checkpoint's {META_FILE} holds; {DAMAGED}")
    return meta


def read_checkpoint_weights(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A checkpoint's ``editor.safetensors``; a file safetensors cannot read is refused naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); {DAMAGED}") from None


def _short(modules: Any) -> str:
    if not modules:
        return "(none)"
    names = sorted(modules)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def model_fingerprint(adapter, modules: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """What identifies the base model for a checkpoint: its class, its architecture (config, with
    paths and dtypes left out) and the values of the edited weights, summarised to 4 significant
    digits so the same weights loaded in float32, float16 or bfloat16 agree while another
    fine-tune of the same architecture does not."""
    from mmke_eval.journal import digest

    model = adapter.model
    config = getattr(model, "config", None)
    config_dict = config.to_dict() if hasattr(config, "to_dict") else {}
    drop = {"_name_or_path", "dtype", "torch_dtype", "transformers_version", "_commit_hash", "architectures"}

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in drop}
        return value

    params = dict(model.named_parameters())
    summary = {}
    with torch.no_grad():
        for name in sorted(modules):
            t = params[name].detach().float()
            summary[name] = [_sig(t.mean().item()), _sig(t.std().item() if t.numel() > 1 else 0.0), _sig(t.abs().max().item())]
    return {
        "name_or_path": str(getattr(config, "_name_or_path", "") or ""),
        "class": type(model).__name__,
        "config_digest": digest(clean(config_dict)),
        "fingerprint": digest(summary),
    }


def _sig(x: float, digits: int = 4) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


@contextmanager
def substituted(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run ``model`` with ``tensors`` standing in for the parameters of the same names.

    Nothing is copied into the model: the module attributes point at the given tensors inside and
    at the original ``Parameter`` objects again after (also on an exception).
    """
    swapped = []
    try:
        for name, tensor in tensors.items():
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            original = module._parameters[attr]
            module._parameters[attr] = tensor  # plain tensor: the forward uses it, autograd follows it
            swapped.append((module, attr, original))
        yield
    finally:
        for module, attr, original in reversed(swapped):
            module._parameters[attr] = original


def kl_from_base(base_logits: torch.Tensor, post_logits: torch.Tensor) -> torch.Tensor:
    """KL(base || post) per position, averaged: the locality term of MEND's training."""
    base = torch.log_softmax(base_logits.float(), dim=-1)
    post = torch.log_softmax(post_logits.float(), dim=-1)
    return (base.exp() * (base - post)).sum(-1).mean()


def edit_queries(request) -> list[Query]:
    """The edit prompt with the new target, on each edit image (several with edit_images=K)."""
    return [Query(request.prompt, image, request.target) for image in (request.image, *request.extra_images)]


def gradient_factors(adapter, names: list[str], request) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per edited weight ``W`` (a linear layer's ``weight``), the factors of the edit loss's gradient:
    the layer's inputs ``u`` [positions, in] and the loss's gradients at its outputs ``delta``
    [positions, out], so that dL/dW = delta^T u (summed over positions). MEND and KE transform these.

    Only the edited weights require grad during this pass (and get no ``.grad``): the gradient
    reaches just as far back as their layers.
    """
    params = dict(adapter.model.named_parameters())
    weights = [params[name] for name in names]
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    deltas: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    hooks = []

    def hook_for(name):
        def forward_hook(module, args, output):
            inputs[name].append(args[0].detach().reshape(-1, args[0].shape[-1]))
            output.register_hook(lambda grad: deltas[name].append(grad.detach().reshape(-1, grad.shape[-1])))
        return forward_hook

    for name in names:
        hooks.append(adapter.model.get_submodule(name.rpartition(".")[0]).register_forward_hook(hook_for(name)))
    flags = [(p, p.requires_grad) for p in adapter.model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        queries = edit_queries(request)
        with torch.enable_grad():
            for query in queries:  # one pass each, so every input meets its own gradient
                torch.autograd.grad(adapter.target_loss(query) / len(queries), weights)
    finally:
        for h in hooks:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    return {name: (torch.cat(inputs[name]).float(), torch.cat(deltas[name]).float()) for name in names}


MULTI_IMAGE_MODES = ("combined", "successive")


@dataclass
class WeightUpdateConfig(LearnedConfig):
    """Options of editors that update linear weights of one parameter group (MEND, KE)."""

    target: str = field(default="llm_last_mlp", metadata={"help": "parameter group whose weights are edited"})
    layers: int = field(default=3, metadata={"help": "edit the group in the last N layers (reference: 3, layers 29-31)"})
    multi_image: str = field(default="combined", metadata={
        "help": "multi-step editing (edit_images=K): 'combined' (one edit from the K images' gradients together) or "
                "'successive' (K edits, one per image, each from the gradient of the model the previous ones edited)"})

    # How K edit images are used does not change what the networks learned.
    RUNTIME_FIELDS = LearnedConfig.RUNTIME_FIELDS + ("multi_image",)

    def __post_init__(self):
        super().__post_init__()
        if self.layers < 1:
            raise ConfigError(f"layers must be >= 1, not {self.layers}")
        if self.multi_image not in MULTI_IMAGE_MODES:
            raise ConfigError(f"multi_image must be one of {MULTI_IMAGE_MODES}, not {self.multi_image!r}")


class WeightUpdateEditor(LearnedEditor):
    """A learned editor that turns the edit's gradient into a weight update (MEND, KE).

    Subclasses give ``updates(adapter, request)``: per edited weight, the tensor to subtract. An
    edit writes the updated weights into the model, after cloning exactly those it touches.
    """

    config_class = WeightUpdateConfig

    def multi_image_rule(self) -> str:
        if self.config.multi_image == "successive":
            return "successive: K edits, one per edit image in order, each from the gradient of the model the previous ones edited"
        return "combined: one edit from the K edit images' gradients together (the mean of their losses)"

    def updates(self, adapter, request) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def edited_group(self) -> str:
        return self.config.target

    def edited_layers(self) -> int:
        return self.config.layers

    def linear_weight_shapes(self, adapter) -> dict[str, tuple[int, ...]]:
        """The edited weights' shapes; a group holding anything but linear weights is an error."""
        shapes = self.edited_modules(adapter)
        bad = [name for name, shape in shapes.items() if len(shape) != 2]
        if bad:
            raise ConfigError(f"editor {self.name!r}: target {self.config.target!r} holds tensors that are not linear weights: {bad[:3]}")
        return shapes

    def weight_names(self) -> list[str]:
        return self.learned.names

    def apply(self, adapter, request) -> EditHandle:
        self.ensure_ready(adapter)
        started = time.perf_counter()
        params = dict(adapter.model.named_parameters())
        names = self.weight_names()
        handle = EditHandle(editor=self.name, touched=tuple(names), saved={n: params[n].detach().clone() for n in names})
        images = (request.image, *request.extra_images)
        # edit_images=K: one request with all K images (combined), or K requests of one image each.
        steps = ([replace(request, image=image, extra_images=()) for image in images]
                 if self.config.multi_image == "successive" and len(images) > 1 else [request])
        total: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for step in steps:
                    for name, update in self.updates(adapter, step).items():
                        params[name].sub_(update.to(params[name].dtype))
                        total[name] = total[name] + update.float() if name in total else update.float()
        except BaseException:
            self.restore(adapter, handle)  # never leave a half-edited model behind
            raise
        handle.stats = {
            "weights": len(names),
            "n_params": sum(params[n].numel() for n in names),
            "update_norm": round(float(sum(u.norm() ** 2 for u in total.values()) ** 0.5), 6),
            "edit_images": len(images),
            "multi_image": self.config.multi_image,
            "updates": len(steps),
            "seconds": round(time.perf_counter() - started, 4),
        }
        return handle

    def post_edit_weights(self, adapter, request) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(updates, weights after them) with the graph back to the networks: for ``meta_loss``."""
        updates = self.updates(adapter, request)
        params = dict(adapter.model.named_parameters())
        return updates, {name: params[name] - update.to(params[name].dtype) for name, update in updates.items()}

    # -- the reference trainer's checkpoint (mmke-eval convert-checkpoint; mmke_eval/reference/) --------------
    # Set by an editor that reads one: the format's name (recorded in the checkpoint), the file's
    # top-level keys, and the key holding its training step.
    reference_format = ""
    reference_keys: tuple[str, ...] = ()
    reference_step_key = ""

    @staticmethod
    def check_reference(path: Path) -> None:
        """Refuse, reading no tensor, a file that is not a ``torch.save`` archive (before a model loads)."""
        peek(path)

    def load_reference(self, adapter, ref: dict[str, Any], path: Path, inner_params: list[str] | None) -> dict[str, Any]:
        """Put the reference file's tensors (``ref``) into ``self.learned``; return what the
        checkpoint records of the conversion (the name mapping, ignored keys, ...)."""
        raise NotImplementedError

    def from_reference(self, adapter, reference: str | Path, output: str | Path,
                       inner_params: list[str] | None = None, command: str = "") -> dict[str, Any]:
        """Read the reference trainer's file ``reference``, load it into the networks for ``adapter``
        and write the checkpoint folder ``output``; return the checkpoint's meta. The reference does
        not record its base model's weights: the checkpoint has no fingerprint, so only the edited
        modules' names and shapes are checked when it is loaded."""
        path = Path(reference).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--reference {reference}: no such file")
        out = Path(output).expanduser()
        if (out / META_FILE).exists():
            raise ConversionError(f"--output_path {out} already holds a checkpoint ({META_FILE}); choose another folder or remove it")
        ref = read_reference(path, self.reference_keys)
        self.ensure_ready(adapter, for_training=True)
        details = self.load_reference(adapter, ref, path, inner_params)
        self.learned.eval()
        step = int_step(ref.get(self.reference_step_key))
        sha = sha256_of(path)
        val_stats = ref.get("val_stats") if isinstance(ref.get("val_stats"), dict) else {}
        meta = self.checkpoint_meta(
            adapter,
            data={"source": "reference checkpoint", "sha256": sha, "file": str(path)},
            training={"best_step": step, "steps": step, "reference_val_stats": {k: float(v) for k, v in val_stats.items()
                                                                                if isinstance(v, (int, float))},
                      "command": command},
        )
        meta["base_model"]["fingerprint"] = None  # the reference does not record its base model's weights
        meta["converted_from"] = {"file": str(path.resolve()), "sha256": sha, "format": self.reference_format, "step": step,
                                  **details}
        self.save_checkpoint(out, meta)
        return meta

    def conversion_summary(self, meta: dict[str, Any], path: Path) -> str:
        """What ``from_reference`` made of the file, for the command's last line."""
        return (f"{self.name} from {path.name} (step {meta['converted_from']['step']}) for {len(meta['edited_modules'])} "
                f"weights of {meta['base_model']['class']}")
