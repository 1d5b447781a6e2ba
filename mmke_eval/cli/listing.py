"""``mmke-eval list``: the editors (with their defaults), the benchmark families and the tasks."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = "The editors (defaults, per model family and per benchmark values), the benchmark families and the tasks."


def configure(parser: argparse.ArgumentParser) -> None:
    pass  # no options


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str], argv: list[str]) -> int:
    from mmke_eval import families, registry
    from mmke_eval.lmms.taskfiles import task_index

    print("editors (defaults; per model family overrides; a benchmark's own values are listed under it):")
    for name in registry.editor_names():
        entry = registry.load_registry()["editors"][name]
        print(f"  {name:14s} {entry.get('help', '')}")
        if entry.get("defaults"):
            print(f"  {'':14s}   defaults: {key_values(entry['defaults'])}")
        for family, values in (entry.get("families") or {}).items():
            print(f"  {'':14s}   {family}: {key_values(values)}")
    print("benchmark families (registry.yaml; docs/benchmarks.md):")
    for name in families.names():
        family = families.get(name)
        print(f"  {name:14s} {family.title}: {', '.join(title for _, title in family.columns)}")
        # The benchmark's own hparams, over the editors' model-family values above (registry.yaml)
        declared = registry.benchmark_editor_defaults(name)
        for editor, per_model in declared.items():
            for model_family, values in per_model.items():
                print(f"  {'':14s}   {editor} on {model_family}: {key_values(values)}")
        if not declared:
            print(f"  {'':14s}   editor values: the editors' defaults and model-family values above")
    print("tasks and groups:")
    tasks, groups = task_index()
    for name in sorted({*tasks, *groups}):
        print(f"  {name}")
    return 0


def key_values(values: dict) -> str:
    """k=v,...; a string with spaces at its ends, a newline or a comma is quoted, so it reads unambiguously."""
    def shown(v):
        return json.dumps(v) if isinstance(v, str) and (v != v.strip() or "\n" in v or "," in v) else v
    return ",".join(f"{k}={shown(v)}" for k, v in values.items())
