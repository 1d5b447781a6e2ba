"""Finished edit cases, written as they finish, so that a rerun of the same command resumes.

One JSON line per case: the run key, the case key, and the JSON response of each of its probes.
A response is reused only when both keys match, and the keys hash everything that determines it:

* the run key: the model (backend, class, dtype, its files' names, sizes and modification
  times, or the Hub revision), the editor and its resolved configuration, the protocol options,
  the adapter's input layout, and the mmke-eval version;
* the case key: every field of every probe document of the case (questions, answers, the edit),
  the prompt the harness built, the generation settings, and the bytes of every image it uses.

So a changed answer, image, option or model is recomputed, never served from an earlier run
(lmms-eval's own response cache keys only the prompt text, and is off for the ``edited`` model).
In sequential mode a case's result depends on every edit before it: the key chains the keys of
the cases before it in the task, and a task is reused only when all of its cases are in the
journal; otherwise it is run again from its start.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

# Journals written in this process: the CLI's Ctrl-C message counts their cases.
_open_journals: list["CaseJournal"] = []


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def file_digest(path: str, _cache: dict[tuple[str, int, int], str] = {}) -> str:  # noqa: B006 - a deliberate memo
    """sha256 of a file's bytes (memoised by path, size and modification time)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        _cache[key] = sha.hexdigest()
    return _cache[key]


class CaseJournal:
    def __init__(self, path: str | Path, run_key: str):
        self.path = Path(path)
        self.run_key = run_key
        self.entries: dict[str, dict[str, str]] = {}
        self.written = 0  # cases added by this process
        if self.path.is_file():
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash: that case is simply recomputed
                if isinstance(entry, dict) and entry.get("run") == run_key and isinstance(entry.get("responses"), dict):
                    self.entries[entry["case"]] = entry["responses"]
        self.resumed = len(self.entries)
        _open_journals.append(self)

    def get(self, case_key: str) -> dict[str, str] | None:
        return self.entries.get(case_key)

    def add(self, case_key: str, responses: dict[str, str]) -> None:
        """Append one finished case, durably (flushed and fsynced before returning). The processes
        of a multi-process run share the file: each line is written under an exclusive lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"run": self.run_key, "case": case_key, "responses": responses}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as f:
            _lock(f)
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[case_key] = responses
        self.written += 1


def _lock(f) -> None:
    """An exclusive lock on an open file until it is closed (POSIX); elsewhere nothing."""
    try:
        import fcntl
    except ImportError:  # Windows: one process per journal
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)


def saved_cases() -> list[tuple[Path, int]]:
    """(journal file, cases it holds for its run) of every journal opened in this process."""
    return [(j.path, len(j.entries)) for j in _open_journals]


def model_identity(model: Any) -> dict[str, Any]:
    """What identifies a loaded model's weights without reading them: the folder's weight and
    config files (name, size, modification time) for a local checkpoint, the revision for a Hub one."""
    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "") or "")
    identity: dict[str, Any] = {"name_or_path": name, "class": type(model).__name__}
    folder = Path(name).expanduser()
    if name and folder.is_dir():
        identity["files"] = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.iterdir()
            if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".model", ".pt", ".pth")
        )
    else:
        identity["revision"] = getattr(config, "_commit_hash", None)
    return identity
