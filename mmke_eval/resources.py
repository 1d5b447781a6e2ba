"""Where the non-Python resources (templates/, registry.yaml, mmke_tasks/) are.

In the repository (and an editable install) they sit at the repository root; a wheel carries
templates/ and registry.yaml inside ``mmke_eval/_data`` (see pyproject.toml).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_path(name: str) -> Path:
    """Path of a root-level resource such as ``templates`` or ``registry.yaml``."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"mmke-eval resource {name!r} not found (looked in {_PACKAGE_DIR / '_data'} and {_PACKAGE_DIR.parent})")


def cache_dir() -> Path:
    """mmke-eval's cache folder: ``$MMKE_CACHE``, default ``~/.cache/mmke_eval`` (generated
    benchmarks, IKE's pool embeddings)."""
    return Path(os.environ.get("MMKE_CACHE") or Path.home() / ".cache" / "mmke_eval").expanduser()


def tasks_dir() -> Path:
    """The folder of task YAMLs that mmke-eval hands to lmms-eval as --include_path."""
    import mmke_tasks

    return Path(mmke_tasks.__file__).resolve().parent


def package_version(name: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
