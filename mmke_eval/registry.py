"""Look up editors and model adapters by name through registry.yaml (lazily imported)."""

from __future__ import annotations

import difflib
import importlib
from functools import lru_cache
from typing import Any

import yaml

from mmke_eval.resources import resource_path


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


@lru_cache(maxsize=None)
def load_registry() -> dict[str, Any]:
    path = resource_path("registry.yaml")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    for section in ("editors", "adapters"):
        entries = data.get(section)
        if not isinstance(entries, dict):
            raise RegistryError(f"{path}: section {section!r} is missing or not a mapping")
        for name, entry in entries.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("class"), str) or ":" not in entry["class"]:
                raise RegistryError(f"{path}: {section}.{name}.class must be a 'module:attr' string")
    return data


def _entry(section: str, name: str) -> dict[str, Any]:
    entries = load_registry()[section]
    if name not in entries:
        hint = difflib.get_close_matches(name, entries, n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        kind = section[:-1]
        raise RegistryError(f"unknown {kind} {name!r}; known: {', '.join(sorted(entries))}.{did_you_mean}")
    return entries[name]


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def editor_names() -> list[str]:
    return sorted(load_registry()["editors"])


def editor_title(name: str) -> str:
    """The editor's name in figures (its ``title`` in registry.yaml, e.g. FT-LLM); an editor
    not in the registry (a results folder from elsewhere) keeps its own name."""
    entry = load_registry()["editors"].get(name)
    return str(entry.get("title") or name) if isinstance(entry, dict) else name


def editor_defaults(name: str, family: str = "") -> dict[str, Any]:
    entry = _entry("editors", name)
    return {**entry.get("defaults", {}), **entry.get("families", {}).get(family, {})}


def editor_class(name: str):
    return _import(_entry("editors", name)["class"])


def build_editor(name: str, family: str = "", overrides: dict[str, Any] | None = None):
    """Editor instance: registry defaults, then family defaults, then ``overrides``."""
    cls = editor_class(name)
    values = {**editor_defaults(name, family), **(overrides or {})}
    editor = cls(cls.config_class.from_dict(values, editor=name))
    editor.name = name  # ft_llm and ft_alignment share a class
    return editor


def adapter_names() -> list[str]:
    return sorted(load_registry()["adapters"])


def adapter_class(base: str):
    return _import(_entry("adapters", base)["class"])


def adapter_test_models(base: str) -> dict[str, Any]:
    """The tiny random models an adapter is tested on (``tiny:`` in registry.yaml): name -> builder
    returning (model, processor). Imported only when asked for."""
    return {path.rpartition(":")[2]: _import(path) for path in _entry("adapters", base).get("tiny", [])}
