"""The error a run (or a command) stops with when its input cannot work; the message says why
and what to do. The CLI shows it as ``mmke-eval: error: EvaluationError: ...`` and exits 1."""

from __future__ import annotations


class EvaluationError(RuntimeError):
    pass
