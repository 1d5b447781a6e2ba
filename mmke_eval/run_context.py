"""What one run tells the task hooks, and what the hooks tell the run: the run context.

lmms-eval calls a task's hooks (``process_docs``, ``doc_to_text``) with the documents only, so
what the loaders need of the run (the data root given with ``--data``, the case limit, the
sequential gap's edit-only tail, the user-number block for several processes, the prompt path of
the run's editor) travels in a ``RunContext``. The run activates it (``mmke_eval.evaluate``:
``with activated(context)``, undone when the run ends, so two runs in one process never see each
other's values); the loaders fill in what they read (skip reports, data records) for the results.

Under lmms-eval's own CLI (``lmms-eval --model edited``) the `edited` model activates its context
when it is built, which lmms-eval does before it loads the tasks, in the same thread.

With no run active (plain lmms-eval with another model) the hooks read the documented
user-facing defaults: the source cards' data environment variables and ``MMKE_MAX_CASES``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

MAX_CASES_ENV = "MMKE_MAX_CASES"


@dataclass
class RunContext:
    data_root: Path | None = None  # --data: the data root of every task of the run (over data_env variables)
    max_cases: int | None = None  # --cases N: the first N edit cases of each task; None: all
    edit_only_tail: int = 0  # with --cases N and sequential_gap G: G more cases loaded for editing only (VLKEB)
    case_block: int = 1  # consecutive cases that must stay on one process (user_number)
    prompt_path: str | None = None  # the prompt path of the run's editor (mmke_eval/prompts.py); None: trainer
    # Filled by the loaders, per card key (benchmark, knowledge_type, split, ...), for the results.
    skip_reports: dict[tuple[str, ...], Any] = field(default_factory=dict)
    data_records: dict[tuple[str, ...], dict] = field(default_factory=dict)

    def __post_init__(self):
        if self.max_cases is not None and (isinstance(self.max_cases, bool) or int(self.max_cases) < 1):
            raise ValueError(f"cases={self.max_cases!r}: expected a positive whole number of cases")


_ACTIVE: ContextVar[RunContext | None] = ContextVar("mmke_run_context", default=None)


def current() -> RunContext:
    """The active run's context; without one, the defaults read from the environment (a fresh
    object each call, so nothing a loader records outlives the call)."""
    return _ACTIVE.get() or from_environment()


def from_environment() -> RunContext:
    from mmke_eval.data.schema import DataError

    value = os.environ.get(MAX_CASES_ENV, "").strip()
    if value and (not value.isdigit() or int(value) < 1):
        raise DataError(f"{MAX_CASES_ENV}={value!r}: expected a positive whole number of cases")
    return RunContext(max_cases=int(value) if value else None)


@contextmanager
def activated(context: RunContext | None) -> Iterator[RunContext | None]:
    """``context`` is the active run's while the block runs (None: no run is active); the previous
    one after, whatever was activated inside."""
    token = _ACTIVE.set(context)
    try:
        yield context
    finally:
        _ACTIVE.reset(token)


def activate_for_lmms_cli(context: RunContext) -> None:
    """Under lmms-eval's CLI (one run per process, no block around it): from now on in this thread."""
    _ACTIVE.set(context)


def active() -> RunContext | None:
    return _ACTIVE.get()
