"""``k=v,k2=v2`` option text (--model_args, --editor_args, a results file's model_args) as a dict."""

from __future__ import annotations

from mmke_eval.errors import EvaluationError


def parse_key_values(text: str, what: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; a malformed item names itself. ``\\,`` is a comma inside a value
    (``--editor_args 'ike.embedding_model=org/a\\,b'``)."""
    values = {}
    parts = [part.replace("\0", ",") for part in text.replace("\\,", "\0").split(",")]
    for item in filter(None, (part.strip() for part in parts)):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EvaluationError(f"{what}: expected key=value, got {item!r}")
        values[key.strip()] = value.strip()
    return values


def editor_args_for(editors: list[str], values: dict[str, str]) -> dict[str, dict[str, str]]:
    """Split --editor_args among editors: ``k=v`` goes to every editor, ``EDITOR.k=v`` to one."""
    per_editor: dict[str, dict[str, str]] = {editor: {} for editor in editors}
    for key, value in values.items():
        name, dot, field_name = key.partition(".")
        if not dot:
            for args in per_editor.values():
                args[key] = value
        elif name in per_editor:
            per_editor[name][field_name] = value
        else:
            raise EvaluationError(f"--editor_args {key}={value}: editor {name!r} is not among --editor {','.join(editors)}")
    return per_editor
