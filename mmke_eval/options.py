"""Strict parsing of option values given as text (--model_args, --editor_args).

lmms-eval turns ``true``/``false`` and numbers into Python values and leaves everything else a
string, so ``bool("no")`` would be True: every option we own goes through these instead.
"""

from __future__ import annotations

from typing import Any

TRUE_WORDS = ("1", "true", "yes")
FALSE_WORDS = ("0", "false", "no")


class OptionError(ValueError):
    """A bad option value; the message names the option."""


def parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise OptionError(f"option {name}={value!r}: expected a boolean (true/false, 1/0, yes/no)")


def parse_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise OptionError(f"option {name}={value!r}: expected a whole number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():  # lmms-eval reads "-2" as -2.0
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    else:
        raise OptionError(f"option {name}={value!r}: expected a whole number")
    if minimum is not None and number < minimum:
        raise OptionError(f"option {name}={number}: must be >= {minimum}")
    return number


def parse_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise OptionError(f"option {name}={value!r}: expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"option {name}={value!r}: expected a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise OptionError(f"option {name}={value!r}: expected a finite number")
    return number


def parse_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise OptionError(f"option {name}={value!r}: expected one of {', '.join(choices)}")
    return value
