"""A reference trainer's checkpoint file as an mmke-eval editor checkpoint, by the editor that owns
its format: an editor class that reads one declares ``reference_format`` and implements
``from_reference``; an editor whose reference files are another design names the editor that runs
them (``reference_runs_as``: mmke-eval's SERAC -> serac_ref). No editor is named here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmke_eval.reference.safe_pickle import ConversionError


def reads_reference(cls) -> bool:
    """Whether the editor class converts a reference checkpoint itself."""
    return bool(getattr(cls, "reference_format", None))


def reference_editor(name: str) -> str | None:
    """The editor a reference checkpoint of editor ``name`` becomes (itself, or the one its class
    names in ``reference_runs_as``); None if the reference publishes none this code reads."""
    from mmke_eval import registry

    if name not in registry.editor_names():
        return None
    target = getattr(registry.editor_class(name), "reference_runs_as", name)
    return target if reads_reference(registry.editor_class(target)) else None


def convertible_editors() -> list[str]:
    """The editor names a reference checkpoint is given under (registry order): those that read
    their reference's files, and those whose files another editor runs (not that other one)."""
    from mmke_eval import registry

    names = list(registry.load_registry()["editors"])
    runs_as = {getattr(registry.editor_class(n), "reference_runs_as", None) for n in names}
    return [n for n in names if reference_editor(n) and n not in runs_as]


def not_convertible(name: str) -> str:
    return f"--editor {name}: only {', '.join(convertible_editors())} checkpoints of the reference trainers can be converted"


def convert(editor, adapter, reference: str | Path, output: str | Path,
            inner_params: list[str] | None = None, command: str = "") -> dict[str, Any]:
    """Read ``reference``, load its tensors into ``editor``'s networks for ``adapter`` (a serac_ref
    editor: into its checkpoint's tensors) and write the checkpoint folder ``output``. Returns the
    checkpoint's meta."""
    if not reads_reference(type(editor)):
        raise ConversionError(not_convertible(editor.name))
    return editor.from_reference(adapter, reference, output, inner_params=inner_params, command=command)
