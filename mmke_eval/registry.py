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


def editor_defaults(name: str, family: str = "", benchmark: str = "") -> dict[str, Any]:
    """The editor's default values for a model family (``family``) on a benchmark family."""
    return {key: value for key, (value, _) in resolve_editor_defaults(name, family, benchmark).items()}


def benchmark_editor_defaults(benchmark: str) -> dict[str, dict[str, dict[str, Any]]]:
    """The benchmark family's ``editors`` (mmke_tasks/<family>/family.yaml): editor -> model family ->
    values (the benchmark's hparams); an editor not in registry.yaml is an error naming the known ones."""
    from mmke_eval import families

    declared = families.get(benchmark).editor_defaults()
    for editor in declared:
        _entry("editors", editor)  # a misspelt editor name fails here, naming the known ones
    return declared


def resolve_editor_defaults(name: str, family: str = "", benchmark: str = "") -> dict[str, tuple[Any, str]]:
    """key -> (value, where it came from), in the documented order (registry.yaml, top): the
    editor's defaults, its model family's values, the benchmark's values for that model family."""
    entry = _entry("editors", name)
    layers = [(entry.get("defaults") or {}, f"editors.{name}.defaults"),
              ((entry.get("families") or {}).get(family) or {}, f"editors.{name}.families.{family}")]
    if benchmark:
        layers.append((benchmark_editor_defaults(benchmark).get(name, {}).get(family) or {},
                       f"benchmarks.{benchmark}.editors.{name}.{family}"))
    resolved: dict[str, tuple[Any, str]] = {}
    for values, source in layers:
        resolved.update((key, (value, source)) for key, value in values.items())
    return resolved


def editor_class(name: str):
    return _import(_entry("editors", name)["class"])


def build_editor(name: str, family: str = "", overrides: dict[str, Any] | None = None, benchmark: str = ""):
    """Editor instance: registry defaults, model family values, the benchmark's values for that
    model family, then ``overrides``. The editor records where each value came from
    (``defaults_source``, in the results' editor description)."""
    cls = editor_class(name)
    resolved = resolve_editor_defaults(name, family, benchmark)
    resolved.update((key, (value, "editor_args")) for key, value in (overrides or {}).items())
    editor = cls(cls.config_class.from_dict({key: value for key, (value, _) in resolved.items()}, editor=name))
    editor.name = name  # ft_llm and ft_alignment share a class
    editor.defaults_source = {"model_family": family, "benchmark": benchmark,
                              "values": {key: source for key, (_, source) in sorted(resolved.items())}}
    return editor


def adapter_names() -> list[str]:
    return sorted(load_registry()["adapters"])


def adapter_class(base: str):
    return _import(_entry("adapters", base)["class"])


def adapter_test_models(base: str) -> dict[str, Any]:
    """The tiny random models an adapter is tested on (``tiny:`` in registry.yaml): name -> builder
    returning (model, processor). Imported only when asked for."""
    return {path.rpartition(":")[2]: _import(path) for path in _entry("adapters", base).get("tiny", [])}
