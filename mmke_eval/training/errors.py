"""The error training stops with; the message names the option, file or case, and what to do."""

from __future__ import annotations


class TrainingError(RuntimeError):
    pass
