"""Old home of the other families' minis, kept for mini/train_world.py (``measure_families``) and
tests/test_mini_releases.py.

Each family's mini is now its folder's generator (mmke_tasks/<family>/generator.py), written and
probed through mmke_eval/mini/generate.py; remove this module once the world-model trainer imports
``generate_any`` and ``knowledge_probes`` from there.
"""

from __future__ import annotations

from pathlib import Path

from mmke_eval.mini import generate as G


def __getattr__(name: str):
    if name == "FAMILIES":  # the families with a mini besides the default one
        return G.FAMILIES[1:]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def generate_family(family: str, root: Path, seed: int = 0, n_eval: int = 40, n_train: int = 40) -> Path:
    return G.generate_any(family, root, seed, n_eval, n_train)


def knowledge_probes(family: str, root: Path, split: str = "eval") -> list[dict]:
    return G.knowledge_probes(family, root, split)
