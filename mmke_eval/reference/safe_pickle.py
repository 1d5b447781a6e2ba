"""Reading the reference trainers' ``torch.save`` files without running code from them.

The pickle is first walked with every class and function outside a short list of plain containers
and torch's tensor rebuilders replaced by an inert stand-in (the reference pickles its model's
config class, e.g. LLaVA's ``LlavaConfig``, which is not importable here); only a dict with the
expected keys is then loaded by ``torch.load`` (``weights_only=False``, the same stand-ins,
memory-mapped).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


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

    __name__ = "mmke_eval.reference.safe_pickle.StubPickle"
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


def describe_config(config: Any) -> Any:
    if config is None:
        return None
    if isinstance(config, Stub):
        fields = config.fields()
        return {"class": config._where, **{k: fields[k] for k in ("_name_or_path", "hidden_size", "intermediate_size",
                                                                     "num_hidden_layers", "vocab_size") if k in fields}}
    return {"class": type(config).__name__}


def int_step(step: Any) -> int | None:
    return int(step) if isinstance(step, (int, float)) or (isinstance(step, torch.Tensor) and step.numel() == 1) else None
