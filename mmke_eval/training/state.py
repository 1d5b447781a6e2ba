"""The training state in ``resume.safetensors``: tensors (safetensors) plus JSON in the file's
header, so reading it runs no code and a folder someone hands you is safe to resume in. A pickled
``resume.pt`` (what earlier versions wrote, loaded with a full unpickler) is refused unread."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from mmke_eval.training.errors import TrainingError

RESUME_FILE = "resume.safetensors"
PICKLED_RESUME_FILE = "resume.pt"  # earlier versions' pickle: never loaded (unpickling can run code)
STATE_FORMAT = "mmke-eval training state"
STATE_VERSION = 1


def write_training_state(path: Path, run_key: str, learned: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                         best: dict[str, torch.Tensor], state: dict[str, Any], scheduler=None) -> None:
    """Tensors under ``learned/``, ``best/``, ``optimizer/<param>/<name>`` and ``rng/``; everything
    else (the loop's state, the optimizer's and the rate scheduler's settings, Python's and NumPy's generators) as JSON in
    the header. Written to a temporary file and renamed, so a crash leaves the previous state."""
    from safetensors.torch import save_file

    def plain(t: torch.Tensor) -> torch.Tensor:  # safetensors refuses shared or strided storage
        return t.detach().to("cpu", copy=True).contiguous()

    tensors = {f"learned/{k}": plain(v) for k, v in learned.items()}
    tensors.update({f"best/{k}": plain(v) for k, v in best.items()})
    opt = optimizer.state_dict()
    other: dict[str, dict[str, Any]] = {}
    for index, entries in opt["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = plain(value)
            else:
                other.setdefault(str(index), {})[name] = value
    rng: dict[str, Any] = {"python": random.getstate(), "numpy": None, "cuda": 0}
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_states = torch.cuda.get_rng_state_all()
        rng["cuda"] = len(cuda_states)
        tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(cuda_states)})
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    rng["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    header = {"run_key": run_key, "state": state, "optimizer": {"param_groups": opt["param_groups"], "state": other}, "rng": rng,
              "scheduler": scheduler.state_dict() if scheduler is not None else None}
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT, "version": str(STATE_VERSION), "json": json.dumps(header)})
    tmp.replace(path)


def read_training_state(path: Path) -> dict[str, Any]:
    """What ``write_training_state`` wrote, tensors on the CPU: ``run_key``, ``learned``, ``best``,
    ``optimizer`` (a state dict), ``state`` and ``rng``. Nothing in the file is executed; a file that
    is not such a state is refused naming it, with the way out (``--restart``)."""
    from safetensors import SafetensorError, safe_open

    def refused(why: str) -> TrainingError:
        return TrainingError(f"{path}: not a readable mmke-eval training state ({why}); run the same command with --restart "
                             f"to train afresh in {path.parent}")

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != STATE_FORMAT or meta.get("version") != str(STATE_VERSION):
                raise refused(f"format {meta.get('format')!r} version {meta.get('version')!r}, expected {STATE_FORMAT!r} "
                              f"version {STATE_VERSION}")
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        header = json.loads(meta["json"])
        groups: dict[str, dict[str, torch.Tensor]] = {"learned": {}, "best": {}, "optimizer": {}, "rng": {}}
        for key, value in tensors.items():
            group, _, rest = key.partition("/")
            groups[group][rest] = value
        opt_state: dict[int, dict[str, Any]] = {}
        for key, value in groups["optimizer"].items():
            index, _, name = key.partition("/")
            opt_state.setdefault(int(index), {})[name] = value
        for index, entries in header["optimizer"]["state"].items():
            opt_state.setdefault(int(index), {}).update(entries)
        rng = {**header["rng"], "torch": groups["rng"]["torch"],
               "cuda_states": [groups["rng"][f"cuda/{i}"] for i in range(int(header["rng"]["cuda"]))]}
        return {"run_key": header["run_key"], "state": header["state"], "learned": groups["learned"], "best": groups["best"],
                "optimizer": {"state": opt_state, "param_groups": [_with_tuples(g) for g in header["optimizer"]["param_groups"]]},
                "rng": rng, "scheduler": header.get("scheduler")}
    except TrainingError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise refused(f"{type(err).__name__}: {str(err)[:200]}") from None


def _with_tuples(group: dict[str, Any]) -> dict[str, Any]:
    """JSON has no tuples: Adam's ``betas`` come back as the pair it saved."""
    return {k: tuple(v) if k == "betas" and isinstance(v, list) else v for k, v in group.items()}


def restore_rng_states(rng: dict[str, Any]) -> None:
    """Python's, NumPy's and torch's generators as they were when the state was saved (CUDA's where
    this machine has as many GPUs as the one that saved it)."""
    import numpy as np

    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda_states"] and torch.cuda.is_available() and torch.cuda.device_count() == len(rng["cuda_states"]):
        torch.cuda.set_rng_state_all(rng["cuda_states"])
