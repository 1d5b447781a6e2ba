"""`mmke-eval convert-checkpoint`: a published MEND, KE or SERAC checkpoint of the reference trainers,
as an mmke-eval editor checkpoint.

    mmke-eval convert-checkpoint --editor mend --reference MEND/llava_...-step_5000.pt \\
        --model llava_hf --model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cuda,device_map=cuda,dtype=float16 --output_path ckpt/mend_mmke
    mmke-eval --editor mend --editor_args checkpoint=ckpt/mend_mmke --model llava_hf ...

MMKE-Bench and VLKEB publish the networks their trainers learned: MEND as the EasyEdit-derived
trainer saves them (a ``torch.save``'d dict whose ``"model"`` holds the gradient networks, keyed by
weight shape, and the step sizes), KE as PyTorch-Lightning checkpoints of ``OneShotLearner``
(``"state_dict"`` under ``learner.``). docs/editors.md ("Loading the published checkpoints") gives
the layouts with their sources. The reference names the edited weights by its own model code
(``model.layers.31.mlp.down_proj.weight``, ``opt_model.model.decoder.layers.31.fc1.weight``); they
are matched to the adapter's parameters by layer index and module (``up_proj``/``down_proj``,
``fc1``/``fc2``). Every tensor is checked against the shape the editor needs on this model; a file
that does not fit is refused, naming the key and both shapes.

The file is read without running code from it: its pickle is first walked with every class and
function outside a short list of plain containers and torch's tensor rebuilders replaced by an
inert stand-in (the reference pickles its model's config class, e.g. LLaVA's ``LlavaConfig``, which
is not importable here); only a dict with the expected keys is then loaded by ``torch.load``
(``weights_only=False``, the same stand-ins, memory-mapped).

A SERAC file (``SERAC_MULTI``, the same trainer's dict) becomes a checkpoint of ``serac_ref``
(editors/serac_reference.py), which runs the reference's design: its classifier (DistilBERT), its
``scale``, the trained tensors of its counterfactual LM and (BLIP-2) its projection of the Q-Former's
outputs, each checked against the configs of ``cls_name`` and ``small_name``; its JSON holds the
base model's fingerprint (its alignment module, whose image features the counterfactual model reads).

The output folder of MEND and KE is an ordinary checkpoint (``editor.safetensors`` + ``editor.json``) with
``converted_from`` (file, sha256, format, step) and no base-model fingerprint: the reference does
not record its weights, so only the edited modules' names and shapes are checked when it is loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import re
import shlex
import zipfile
from pathlib import Path
from typing import Any

import torch

from editors.learned import META_FILE

FORMAT_MEND = "EasyEdit trainer (BaseTrainer.save_state), MEND"
FORMAT_KE = "PyTorch-Lightning checkpoint, KE OneShotLearner"
FORMAT_SERAC = "EasyEdit trainer (BaseTrainer.save_state), SERAC_MULTI"
CONVERTIBLE = ("mend", "ke", "serac")
# A reference SERAC file becomes a checkpoint of serac_ref (editors/serac_reference.py), the
# reference's design; mmke-eval's own SERAC (--editor serac at evaluation) is another one.
SERAC_NAMES = ("serac", "serac_ref")


class ConversionError(ValueError):
    """A reference file that cannot become a checkpoint for this editor and model; says why."""


# -- reading the reference file without running its code -----------------------------------------
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("builtins", "range"), ("builtins", "bytearray"),
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Size"), ("torch", "device"), ("torch.nn.parameter", "Parameter"), ("torch", "Tensor"),
    ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
}


class Stub:
    """Stands in for a class or function of the reference's code base: takes whatever it is built
    with and keeps it (``args``, ``state``, items) without running anything."""

    _where = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = args, None, {}
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.items[len(self.items)] = value

    def extend(self, values):
        for value in values:
            self.append(value)

    def fields(self) -> dict[str, Any]:
        """What the object held: its state dict, or its items."""
        state = self.state[1] if isinstance(self.state, tuple) and len(self.state) == 2 and isinstance(self.state[1], dict) else self.state
        out = dict(self.items)
        if isinstance(state, dict):
            out.update(state)
        return out

    def __repr__(self) -> str:
        return f"<{self._where}>"


_stubs: dict[tuple[str, str], type] = {}


def _stub(module: str, name: str) -> type:
    if (module, name) not in _stubs:
        _stubs[(module, name)] = type(name, (Stub,), {"_where": f"{module}.{name}"})
    return _stubs[(module, name)]


def _dtype_global(module: str, name: str):
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        dtype = _dtype_global(module, name)
        if dtype is not None:
            return dtype
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        return _stub(module, name)


class StubPickle:
    """A ``pickle_module`` for ``torch.load`` whose unpickler only builds plain objects and tensors."""

    __name__ = "mmke_eval.convert.StubPickle"
    Unpickler = _StubUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs):
        return _StubUnpickler(file, **kwargs).load()

    @staticmethod
    def loads(data, **kwargs):
        return _StubUnpickler(io.BytesIO(data), **kwargs).load()


class TensorInfo:
    """A tensor seen in the first pass: its shape only (no data is read)."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def __repr__(self) -> str:
        return f"tensor{list(self.shape)}"


class _PeekUnpickler(_StubUnpickler):
    """Walks the pickle of a ``torch.save`` archive: tensors become TensorInfo, storages are not read."""

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"):
            return lambda storage, offset, size, *rest: TensorInfo(size)
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return lambda data, *rest: data
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return lambda func, new_type, args, state: func(*args)
        if module == "torch" and name.endswith("Storage"):
            return _stub(module, name)
        return super().find_class(module, name)

    def persistent_load(self, pid):
        return None


def peek(path: Path) -> Any:
    """The top-level object of a ``torch.save`` file, tensors as TensorInfo, nothing executed."""
    if not zipfile.is_zipfile(path):
        raise ConversionError(f"{path}: not a torch.save archive (zip); the reference trainers save with torch.save")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise ConversionError(f"{path}: a zip archive but not a torch.save file (no single data.pkl)")
            with archive.open(pickles[0]) as f:
                try:
                    return _PeekUnpickler(f).load()
                except Exception as err:  # noqa: BLE001 - any failure of a foreign pickle ends in one message
                    raise ConversionError(f"{path}: cannot read its pickle ({type(err).__name__}: {err}); {DOWNLOAD_AGAIN}") from err
    except (zipfile.BadZipFile, OSError) as err:
        raise ConversionError(f"{path}: a damaged zip archive ({err}); {DOWNLOAD_AGAIN}") from None


DOWNLOAD_AGAIN = "the file is damaged or not a reference checkpoint: download it again (and compare its size)"


def read_reference(path: Path, required: tuple[str, ...]) -> dict[str, Any]:
    """The reference file's dict, tensors loaded (memory-mapped), after checking its top-level keys."""
    top = peek(path)
    if not isinstance(top, dict):
        raise ConversionError(f"{path}: holds a {type(top).__name__}, not the dict the reference trainer saves")
    missing = [k for k in required if k not in top]
    if missing:
        raise ConversionError(f"{path}: missing key {missing[0]!r} (has {sorted(map(str, top))[:8]})")
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True, pickle_module=StubPickle)
    except Exception as err:  # noqa: BLE001 - a damaged archive fails in zip, storage or pickle code alike
        raise ConversionError(f"{path}: cannot be loaded ({type(err).__name__}: {str(err)[:200]}); {DOWNLOAD_AGAIN}") from None


def sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


# -- naming: reference weights <-> adapter parameters ---------------------------------------------
_OUR_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:mlp\.)?(\w+)\.weight$")
_KE_CONDITIONER = re.compile(r"(?:^|_)layers_(\d+)_(?:mlp_)?(\w+?)_weight_conditioner$")


def layer_and_module(name: str) -> tuple[int, str]:
    """``(layer index, module)`` of an edited weight's name: ``...layers.31.mlp.down_proj.weight`` ->
    ``(31, "down_proj")``, ``...decoder.layers.31.fc1.weight`` -> ``(31, "fc1")``."""
    m = _OUR_NAME.search(name)
    if not m:
        raise ConversionError(f"cannot tell the layer and module of {name!r} (expected '...layers.N.[mlp.]MODULE.weight')")
    return int(m.group(1)), m.group(2)


def match_weights(ours: list[str], reference: list[str], what: str) -> dict[str, str]:
    """reference name -> our name, by layer index and module; both sides must be the same set."""
    by_key = {layer_and_module(n): n for n in ours}
    mapping, seen = {}, set()
    for ref in reference:
        key = layer_and_module(ref) if "." in ref else _ke_key(ref)
        if key not in by_key:
            raise ConversionError(
                f"{what}: the reference edits {ref!r} (layer {key[0]}, {key[1]}), which this model's edited weights "
                f"do not include: {_listing(ours)} (set --editor_args layers=N / target=..., or --inner_params)"
            )
        if key in seen:
            raise ConversionError(f"{what}: two reference weights at layer {key[0]}, {key[1]}")
        seen.add(key)
        mapping[ref] = by_key[key]
    left = [n for k, n in by_key.items() if k not in seen]
    if left:
        raise ConversionError(f"{what}: the reference has nothing for this model's edited weight(s) {_listing(left)}")
    return mapping


def _ke_key(conditioner: str) -> tuple[int, str]:
    m = _KE_CONDITIONER.search(conditioner)
    if not m:
        raise ConversionError(f"cannot tell the layer and module of KE conditioner {conditioner!r}")
    return int(m.group(1)), m.group(2)


def _listing(names) -> str:
    names = sorted(names)
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


# How the reference's model code names an edited weight (its hparams' inner_params), by family.
REFERENCE_NAMES = {
    "llava": "model.layers.{layer}.mlp.{module}.weight",  # original LLaVA (LlavaLlamaForCausalLM)
    "blip2": "opt_model.model.decoder.layers.{layer}.{module}.weight",  # LAVIS Blip2OPT
    "minigpt4": "llama_model.model.layers.{layer}.mlp.{module}.weight",  # MiniGPT-4's LLaMA
}


def default_inner_params(ours: list[str], family: str = "") -> list[str]:
    """The reference's ``inner_params`` for our edited weights, in its order: layers ascending and,
    in each layer, ``down_proj`` before ``up_proj``, ``fc1`` before ``fc2`` (the hparams' order;
    modes and step sizes are indexed by it). Named as the reference's model code names them where
    the family is one the reference runs (else our names, which match by layer and module alike)."""
    pattern = REFERENCE_NAMES.get(family)
    keyed = sorted((layer_and_module(n), n) for n in ours)
    return [pattern.format(layer=layer, module=module) if pattern else name for (layer, module), name in keyed]


def _shape(t) -> list[int]:
    return list(t.shape)


def _need(target: dict[str, torch.Tensor], source: dict[str, Any], ours: str, theirs: str, path: Path,
          rows: list[int] | None = None) -> None:
    """Copy ``source[theirs]`` into ``target[ours]`` after checking it is there with the right shape
    (``rows``: take these rows of it, in this order)."""
    if theirs not in source:
        raise ConversionError(f"{path}: missing key {theirs!r} (needed for {ours})")
    tensor = source[theirs]
    if not isinstance(tensor, torch.Tensor):
        raise ConversionError(f"{path}: key {theirs!r} holds a {type(tensor).__name__}, not a tensor")
    if rows is not None:
        if tensor.dim() < 1 or tensor.shape[0] != len(rows):
            raise ConversionError(f"{path}: {theirs!r} has shape {_shape(tensor)}; this model needs "
                                  f"{[len(rows), *target[ours].shape[1:]]} (one row per edited weight of its shape)")
        tensor = tensor[rows]
    if tuple(tensor.shape) != tuple(target[ours].shape):
        raise ConversionError(f"{path}: {theirs!r} has shape {_shape(tensor)}; the editor on this model needs "
                              f"{_shape(target[ours])} for {ours}")
    target[ours] = tensor.detach().to(torch.float32)  # copied by load_state_dict


# -- MEND -------------------------------------------------------------------------------------------
_MEND_SHAPE_KEY = re.compile(r"^mend\.\((\d+), (\d+)\)\.(.+)$")


def convert_mend(editor, adapter, ref: dict[str, Any], path: Path, inner_params: list[str] | None) -> dict[str, Any]:
    from editors.mend import shape_key

    net = editor.learned
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
    shapes = editor.edited_modules(adapter)
    order = inner_params or default_inner_params(list(shapes), getattr(adapter, "family", ""))
    mapping = match_weights(list(shapes), order, f"{path}")
    lrs = model["edit_lrs"]
    if not isinstance(lrs, torch.Tensor) or tuple(lrs.shape) != (len(order),):
        raise ConversionError(f"{path}: 'edit_lrs' has shape {_shape(lrs) if isinstance(lrs, torch.Tensor) else type(lrs).__name__}; "
                              f"this model's {len(order)} edited weights need [{len(order)}]")

    # The reference keys a network by the weight's (in, out) and tells the weights of one shape
    # apart by their place in inner_params; ours by "OUTxIN" and the place among sorted names.
    ref_groups: dict[str, list[str]] = {}
    for ref_name in order:
        d_out, d_in = shapes[mapping[ref_name]]
        ref_groups.setdefault(f"({d_in}, {d_out})", []).append(ref_name)
    present = {m.group(1, 2) for k in model if (m := _MEND_SHAPE_KEY.match(k))}
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
                                  f"[{d_out}, {d_in}] ({_listing(mapping[n] for n in ref_names)})")
        # our mode of each weight -> its reference mode
        rows = [0] * len(ref_names)
        for ref_mode, ref_name in enumerate(ref_names):
            rows[net.slot[mapping[ref_name]][1]] = ref_mode
        for buffer in ("u_mean", "v_mean", "u_std", "v_std", "u_s", "v_s", "k"):
            _need(state, model, f"{ours}.{buffer}", f"{prefix}.{buffer}", path)
        n_layers = len(net.transforms[shape_key((d_out, d_in))].mlp.layers)
        theirs_layers = {int(m.group(1)) for k in model if (m := re.match(re.escape(prefix) + r"\.mlp\.layers\.(\d+)\.", k))}
        if theirs_layers != set(range(n_layers)):
            raise ConversionError(f"{path}: {prefix} has {len(theirs_layers)} low-rank layers; the editor has {n_layers} "
                                  f"(n_hidden={n_layers - 1}; pass --editor_args n_hidden={max(len(theirs_layers) - 1, 0)})")
        for i in range(n_layers):
            for param in ("u", "v", "bias"):
                _need(state, model, f"{ours}.mlp.layers.{i}.{param}", f"{prefix}.mlp.layers.{i}.{param}", path)
            for param in ("mode_scale", "mode_shift"):
                _need(state, model, f"{ours}.mlp.layers.{i}.{param}", f"{prefix}.mlp.layers.{i}.{param}.weight", path, rows=rows)
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
        "model_config": _describe_config(config),
        "ignored_keys": len(ignored),
    }


def _describe_config(config: Any) -> Any:
    if config is None:
        return None
    if isinstance(config, Stub):
        fields = config.fields()
        return {"class": config._where, **{k: fields[k] for k in ("_name_or_path", "hidden_size", "intermediate_size",
                                                                     "num_hidden_layers", "vocab_size") if k in fields}}
    return {"class": type(config).__name__}


# -- KE ---------------------------------------------------------------------------------------------
_KE_LSTM = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
            "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse")


def convert_ke(editor, adapter, ref: dict[str, Any], path: Path, inner_params: list[str] | None) -> dict[str, Any]:
    net = editor.learned
    sd = ref["state_dict"]
    if not isinstance(sd, dict):
        raise ConversionError(f"{path}: 'state_dict' holds a {type(sd).__name__}, not a state dict")
    conditioner_names = sorted({m.group(1) for k in sd if (m := re.match(r"learner\.conditioners\.([^.]+)\.", k))})
    if not conditioner_names:
        raise ConversionError(f"{path}: missing key 'learner.conditioners.*' (not a KE OneShotLearner checkpoint?)")
    shapes = editor.edited_modules(adapter)
    if inner_params:
        wanted = {n.replace(".", "_") + "_conditioner" for n in inner_params}
        if wanted != set(conditioner_names):
            raise ConversionError(f"{path}: its conditioners {_listing(conditioner_names)} are not those of --inner_params "
                                  f"{_listing(wanted)}")
    mapping = match_weights(list(shapes), conditioner_names, f"{path}")
    state = dict(net.state_dict())  # entries are replaced, never written into
    known = set()

    def take(ours: str, theirs: str, rows=None):
        known.add(theirs)
        _need(state, sd, ours, theirs, path, rows)

    emb_key = "learner.condition.embedding.weight"
    known.add(emb_key)
    if emb_key not in sd:
        raise ConversionError(f"{path}: missing key {emb_key!r}")
    emb, ours_emb = sd[emb_key], state["condition.embedding.weight"]
    if emb.dim() != 2 or emb.shape[1] != ours_emb.shape[1]:
        raise ConversionError(f"{path}: {emb_key!r} has shape {_shape(emb)}; the editor on this model needs "
                              f"[{ours_emb.shape[0]}, {ours_emb.shape[1]}] (the base model's embedding width)")
    # The reference's table has the rows of its model's vocabulary; ours those of the model's
    # embeddings (llava-hf adds <image>, <pad> and padding rows). Shared ids are the same tokens;
    # extra rows of ours keep the base model's embeddings (the reference's initialisation).
    shared = min(emb.shape[0], ours_emb.shape[0])
    table = ours_emb.clone()
    table[:shared] = emb[:shared].float()
    state["condition.embedding.weight"] = table
    for name in _KE_LSTM:
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


# -- SERAC ------------------------------------------------------------------------------------------
def convert_serac(editor, adapter, reference: str | Path, output: str | Path, command: str = "") -> dict[str, Any]:
    """A reference SERAC_MULTI file as a serac_ref checkpoint (editors/serac_reference.py): the
    classifier's DistilBERT tensors, the ``scale`` buffer, the counterfactual model's trained
    tensors and, for BLIP-2, its projection of the Q-Former's outputs, each checked against
    ``cls_name``'s and ``small_name``'s configs and this model's widths. Returns the meta."""
    from editors import serac_reference as ref_serac

    path, out = Path(reference).expanduser(), Path(output).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--reference {reference}: no such file")
    if (out / META_FILE).exists():
        raise ConversionError(f"--output_path {out} already holds a checkpoint ({META_FILE}); choose another folder or remove it")
    ref = serac_reference_file(path)
    model = ref["model"]
    width = ref_serac.SERACReferenceEditor.check_adapter(adapter)
    cls_name, small_name = editor.default_names(adapter)
    lm = ref_serac.meta_model(small_name, "small_name")
    expected = {"classifier": _shapes(ref_serac.meta_model(cls_name, "cls_name")), "replacement": _shapes(lm)}
    names = {"classifier": f"cls_name={cls_name}", "replacement": f"small_name={small_name}"}
    embed = lm.get_input_embeddings().embedding_dim
    projection = ref_serac.own_projection(adapter)
    if projection:  # BLIP-2: the file's projection from the Q-Former's outputs into small_name's embeddings
        expected["language_projection"] = {"weight": (embed, width), "bias": (embed,)}
        names["language_projection"] = f"the projection from this model's Q-Former ({width}) into small_name={small_name} ({embed})"
    elif embed != width:
        raise ConversionError(f"small_name={small_name} embeds tokens in {embed} dimensions; this model's image features "
                              f"have {width}")
    tensors: dict[str, torch.Tensor] = {}
    rebuilt, base_keys = [], 0
    for key, value in model.items():
        if key == "model_config":
            continue
        if key.startswith("model."):  # the base model's, when a file holds them
            base_keys += 1
            continue
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor")
        if key == "scale":
            if value.numel() != 1:
                raise ConversionError(f"{path}: 'scale' has shape {_shape(value)}; the similarity's scale is one number")
            tensors["scale"] = value.detach().float().reshape(())
            continue
        part, _, inner = key.partition(".")
        if part not in expected:
            hint = (f"; 'language_projection.*' belongs to a SERAC for BLIP-2 or MiniGPT-4, not for "
                    f"{type(adapter.model).__name__}") if part == "language_projection" else ""
            raise ConversionError(f"{path}: unexpected key {key!r} (a SERAC_MULTI state dict holds 'classifier.*', "
                                  f"'replacement.*', 'scale', 'model_config'{', language_projection.*' if projection else ''}{hint})")
        if inner not in expected[part]:
            if ref_serac.is_rebuilt_buffer(inner):
                rebuilt.append(key)
                continue
            raise ConversionError(f"{path}: {key!r} is not a tensor of {names[part]} ({_listing(expected[part])})")
        if tuple(value.shape) != expected[part][inner]:
            raise ConversionError(f"{path}: {key!r} has shape {_shape(value)}; {names[part]} has {list(expected[part][inner])} "
                                  f"for {inner}")
        # The classifier and the projection in float32 (they are small); the language model's tensors as trained.
        tensors[key] = value.detach().clone() if part == "replacement" else value.detach().float()
    if "scale" not in tensors:
        raise ConversionError(f"{path}: missing key 'scale' in 'model' (the scope similarity's buffer)")
    missing = sorted(k for k in expected["classifier"] if f"classifier.{k}" not in tensors)
    if missing:
        raise ConversionError(f"{path}: missing key {'classifier.' + missing[0]!r} ({len(missing)} of {names['classifier']}'s "
                              f"{len(expected['classifier'])} tensors missing)")
    trained = sorted(k[len("replacement."):] for k in tensors if k.startswith("replacement."))
    if not trained:
        raise ConversionError(f"{path}: no 'replacement.*' tensor: nothing of the counterfactual model was trained")
    for inner in expected.get("language_projection", {}):
        if f"language_projection.{inner}" not in tensors:
            raise ConversionError(f"{path}: missing key 'language_projection.{inner}' ({names['language_projection']}; "
                                  "the reference never trained it, but its values are the ones it used)")
    sha = sha256_of(path)
    step = _int_step(ref.get("step"))
    converted = {
        "file": str(path.resolve()), "sha256": sha, "format": FORMAT_SERAC, "step": step,
        "replacement_tensors": trained,
        "replacement_layers": sorted({int(m.group(1)) for k in trained if (m := re.search(r"(?:^|\.)layers\.(\d+)\.", k))}),
        "classifier_tensors": len(expected["classifier"]), "scale": float(tensors["scale"]),
        "image_path": ("the file's language_projection of the Q-Former's outputs (untrained in the reference)" if projection
                       else "the base model's image features"),
        "ignored_keys": {"base_model": base_keys, "rebuilt_buffers": rebuilt},
        "model_config": _describe_config(model.get("model_config")), "command": command,
    }
    meta = ref_serac.checkpoint_meta(adapter, cls_name, small_name, converted)
    ref_serac.save_checkpoint(out, tensors, meta)
    return meta


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_serac_file(path: Path) -> None:
    """Refuse, reading no tensor, a file whose ``"model"`` is not a SERAC state dict."""
    top = peek(path)
    if isinstance(top, dict) and isinstance(top.get("model"), dict) and not any(str(k).startswith("classifier.") for k in top["model"]):
        raise ConversionError(f"{path}: no 'classifier.*' key in 'model': not a SERAC checkpoint (has "
                              f"{sorted(map(str, top['model']))[:4]})")


def serac_reference_file(path: Path) -> dict[str, Any]:
    """A reference SERAC file's dict, after checking that its ``"model"`` is a SERAC state dict."""
    check_serac_file(path)
    ref = read_reference(path, ("model",))
    if not isinstance(ref["model"], dict):
        raise ConversionError(f"{path}: 'model' holds a {type(ref['model']).__name__}, not the editor's state dict")
    return ref


def _int_step(step: Any) -> int | None:
    return int(step) if isinstance(step, (int, float)) or (isinstance(step, torch.Tensor) and step.numel() == 1) else None


# -- the conversion ---------------------------------------------------------------------------------
def _not_convertible(name: str) -> str:
    return f"--editor {name}: only {', '.join(CONVERTIBLE)} checkpoints of the reference trainers can be converted"


def convert(editor, adapter, reference: str | Path, output: str | Path,
            inner_params: list[str] | None = None, command: str = "") -> dict[str, Any]:
    """Read ``reference``, load its tensors into ``editor``'s networks for ``adapter`` (a serac_ref
    editor: into its checkpoint's tensors) and write the checkpoint folder ``output``. Returns the
    checkpoint's meta."""
    if editor.name in SERAC_NAMES:
        if inner_params:
            raise ConversionError("--inner_params: a SERAC file edits no weight of the base model")
        return convert_serac(editor, adapter, reference, output, command)
    path = Path(reference).expanduser()
    if editor.name not in CONVERTIBLE:
        raise ConversionError(_not_convertible(editor.name))
    if not path.is_file():
        raise FileNotFoundError(f"--reference {reference}: no such file")
    out = Path(output).expanduser()
    if (out / META_FILE).exists():
        raise ConversionError(f"--output_path {out} already holds a checkpoint ({META_FILE}); choose another folder or remove it")
    required = ("model",) if editor.name == "mend" else ("state_dict",)
    ref = read_reference(path, required)
    editor.ensure_ready(adapter, for_training=True)
    if editor.name == "mend":
        details, fmt = convert_mend(editor, adapter, ref, path, inner_params), FORMAT_MEND
        step = ref.get("step")
    else:
        details, fmt = convert_ke(editor, adapter, ref, path, inner_params), FORMAT_KE
        step = ref.get("global_step")
    editor.learned.eval()
    step = _int_step(step)
    sha = sha256_of(path)
    val_stats = ref.get("val_stats") if isinstance(ref.get("val_stats"), dict) else {}
    meta = editor.checkpoint_meta(
        adapter,
        data={"source": "reference checkpoint", "sha256": sha, "file": str(path)},
        training={"best_step": step, "steps": step, "reference_val_stats": {k: float(v) for k, v in val_stats.items()
                                                                            if isinstance(v, (int, float))},
                  "command": command},
    )
    meta["base_model"]["fingerprint"] = None  # the reference does not record its base model's weights
    meta["converted_from"] = {"file": str(path.resolve()), "sha256": sha, "format": fmt, "step": step, **details}
    editor.save_checkpoint(out, meta)
    return meta


def main(argv: list[str]) -> int:
    from mmke_eval import registry, runner
    from mmke_eval.train_editor import load_adapter

    parser = argparse.ArgumentParser(prog="mmke-eval convert-checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--editor", required=True, help="the editor the file trained: " + ", ".join(CONVERTIBLE))
    parser.add_argument("--reference", required=True, help="the reference's checkpoint file (.pt from the EasyEdit "
                        "trainer for MEND and SERAC, .ckpt from PyTorch-Lightning for KE)")
    parser.add_argument("--model", default=runner.DEFAULT_MODEL)
    parser.add_argument("--model_args", default=None)
    parser.add_argument("--editor_args", default="", help="k=v,... editor settings, if the reference used others "
                        "than the registry's (they must be passed again when the checkpoint is used)")
    parser.add_argument("--inner_params", default="", help="the reference's edited weight names in its hparams "
                        "order, comma-separated (default: the reference's: the edited layers ascending, modules by name)")
    parser.add_argument("--output_path", required=True, help="checkpoint folder to write")
    args = parser.parse_args(argv)
    if args.editor not in CONVERTIBLE + SERAC_NAMES:
        raise ConversionError(_not_convertible(args.editor))
    name = "serac_ref" if args.editor in SERAC_NAMES else args.editor  # the reference's SERAC runs as serac_ref
    overrides = runner.parse_key_values(args.editor_args, "--editor_args")
    if "checkpoint" in overrides:
        raise ConversionError("--editor_args checkpoint=...: conversion writes a checkpoint (--output_path); it does not read one")
    registry.build_editor(name, overrides=overrides)  # bad values fail before the model loads
    path = Path(args.reference).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--reference {args.reference}: no such file")
    check_serac_file(path) if name == "serac_ref" else peek(path)  # a wrong file: say so before the model loads
    if (Path(args.output_path).expanduser() / META_FILE).exists():
        raise ConversionError(f"--output_path {args.output_path} already holds a checkpoint ({META_FILE}); choose another "
                              "folder or remove it")
    adapter = load_adapter(args.model, args.model_args)
    editor = registry.build_editor(name, family=adapter.family, overrides=overrides)
    inner = [n.strip() for n in args.inner_params.split(",") if n.strip()] or None
    command = "mmke-eval convert-checkpoint " + " ".join(shlex.quote(a) for a in argv)
    meta = convert(editor, adapter, path, args.output_path, inner_params=inner, command=command)
    if name == "serac_ref":
        conv = meta["converted_from"]
        print(f"mmke-eval convert-checkpoint: SERAC from {path.name} (step {conv['step']}): the classifier "
              f"({conv['classifier_tensors']} tensors of {meta['config']['cls_name']}) and {len(conv['replacement_tensors'])} "
              f"trained tensors of {meta['config']['small_name']} (layers {conv['replacement_layers']}); checkpoint in "
              f"{args.output_path}. Use it with --editor serac_ref --editor_args checkpoint={args.output_path}"
              + (f",{args.editor_args}" if args.editor_args else ""))
        return 0
    edited = meta["edited_modules"]
    print(f"mmke-eval convert-checkpoint: {args.editor} from {path.name} (step {meta['converted_from']['step']}) for "
          f"{len(edited)} weights of {meta['base_model']['class']}; checkpoint in {args.output_path}. "
          f"Use it with --editor {args.editor} --editor_args checkpoint={args.output_path}"
          + (f",{args.editor_args}" if args.editor_args else ""))
    return 0
