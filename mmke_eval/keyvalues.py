"""``k=v,k2=v2`` option text (--model_args, --editor_args, a results file's model_args) as a dict."""

from __future__ import annotations

from mmke_eval.errors import EvaluationError


def parse_key_values(text: str, what: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; a malformed item names itself."""
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EvaluationError(f"{what}: expected key=value, got {item!r}")
        values[key.strip()] = value.strip()
    return values
