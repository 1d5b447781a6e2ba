"""The configuration of the `edited` model, typed, from either entry point.

``mmke_eval.evaluate`` builds it from Python values; ``lmms-eval --model edited --model_args ...``
from the dict lmms-eval parsed out of its model_args string (``from_model_args``: the one place
that reads that dict). Keys: ``base`` (an lmms-eval backend, also the adapter key in
registry.yaml), ``editor`` (a registry.yaml editor, default "none"), ``editor.<field>`` (the
editor's config), ``adapter.<option>`` (adapter options), the protocol options
(mmke_eval/protocol.py, each declared once), the run options (``journal``, ``wait_for_lock``), and
everything else goes to the base backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmke_eval.options import parse_bool
from mmke_eval.protocol import PROTOCOL_FIELDS, Protocol, refuse_misspelt_options
from mmke_eval.run_context import RunContext


@dataclass
class EditedConfig:
    base: str
    editor: str = "none"
    editor_args: dict[str, Any] = field(default_factory=dict)  # values as text or typed; never split on commas
    adapter_args: dict[str, Any] = field(default_factory=dict)
    base_args: dict[str, Any] = field(default_factory=dict)  # for the base backend, as given (they enter the run key)
    protocol: Protocol = field(default_factory=Protocol)
    batch_size: int | str = 1
    device: str | None = None
    journal: str | None = None  # finished cases (resume); mmke-eval: <output_path>/<editor>/cases.jsonl
    wait_for_lock: bool = False
    # mmke-eval's own runs report errors themselves and exit non-zero (raise); under lmms-eval's
    # CLI an error in one of several processes ends that process instead (lmms-eval would log it and exit 0).
    raise_errors: bool = False
    context: RunContext = field(default_factory=RunContext)  # what the task loaders read (data root, cases)

    @classmethod
    def from_model_args(cls, args: dict[str, Any], **run: Any) -> "EditedConfig":
        """From lmms-eval's parsed model_args (its ``batch_size``/``device`` included)."""
        if "base" not in args:
            raise ValueError("the edited model needs base=<an lmms-eval model name> in --model_args")
        editor_args, adapter_args, base_args, options = {}, {}, {}, {}
        for key, value in args.items():
            if key in ("base", "editor", "batch_size", "device", "journal", "wait_for_lock"):
                continue
            if key.startswith("editor."):
                editor_args[key[len("editor."):]] = value
            elif key.startswith("adapter."):
                adapter_args[key[len("adapter."):]] = value
            elif key in PROTOCOL_FIELDS:
                options[key] = value
            else:
                base_args[key] = value
        refuse_misspelt_options(base_args)
        return cls(
            base=args["base"], editor=args.get("editor", "none"), editor_args=editor_args, adapter_args=adapter_args,
            base_args=base_args, protocol=Protocol.from_options(options), batch_size=args.get("batch_size", 1),
            device=args.get("device"), journal=str(args["journal"]) if args.get("journal") else None,
            wait_for_lock=parse_bool("wait_for_lock", args.get("wait_for_lock", False)), **run)

    @property
    def journal_path(self) -> Path | None:
        return Path(self.journal).expanduser() if self.journal else None
