"""The error a run (or a command) stops with when its input cannot work; the message says why
and what to do. The CLI shows it as ``mmke-eval: error: EvaluationError: ...`` and exits 1."""

from __future__ import annotations


class EvaluationError(RuntimeError):
    pass


def root_cause(err: BaseException) -> BaseException:
    """The error behind lmms-eval's retry wrappers (tenacity.RetryError) and re-raises."""
    seen = set()
    while id(err) not in seen and not getattr(err, "is_root_cause", False):
        seen.add(id(err))
        last_attempt = getattr(err, "last_attempt", None)  # tenacity.RetryError
        if last_attempt is not None and last_attempt.exception() is not None:
            err = last_attempt.exception()
        elif err.__cause__ is not None:
            err = err.__cause__
        else:
            break
    return err
