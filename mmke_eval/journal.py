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
        self.repaired = 0  # torn last lines (a write cut off by a crash) removed on open
        self.unreadable = 0  # other lines that are not a record (skipped; their cases are recomputed)
        if self.path.is_file():
            for line in self._repaired_lines():
                entry = _record(line)
                if entry is None:
                    self.unreadable += 1
                elif entry.get("run") == run_key:
                    self.entries[entry["case"]] = entry["responses"]
        self.resumed = len(self.entries)
        _open_journals.append(self)

    def _repaired_lines(self) -> list[str]:
        """The journal's lines, after cutting off a torn last line: a crash in the middle of a write
        leaves a line without its newline, and the next record appended would join it, making both
        unreadable. A last line that is a whole record and lacks only its newline gets it instead.
        Done under the journal's lock, so that no process of a multi-process run is writing."""
        with open(self.path, "r+b") as f:
            _lock(f)
            data = f.read()
            if data and not data.endswith(b"\n"):
                start = data.rfind(b"\n") + 1
                if _record(data[start:].decode("utf-8", "replace")) is not None:
                    f.write(b"\n")
                    data += b"\n"
                else:
                    f.truncate(start)
                    data = data[:start]
                    self.repaired += 1
                f.flush()
                os.fsync(f.fileno())
        return [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]

    def resume_message(self) -> str | None:
        """One line for the log when this run resumes or its journal needed repair; else None."""
        if not (self.resumed or self.repaired or self.unreadable):
            return None
        notes = [f"{self.resumed} finished case(s) of this run found"]
        if self.repaired:
            notes.append("a torn last line (a write cut off by a crash) removed: its case is computed again")
        if self.unreadable:
            notes.append(f"{self.unreadable} unreadable line(s) skipped")
        return f"resuming from {self.path}: " + "; ".join(notes)

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


def _record(line: str) -> dict | None:
    """A journal record read from one line, or None. A line on which a record was appended to a torn
    one (journals written before torn tails were cut off) still yields its whole record."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        entry, start = None, line.find('{"case"', 1)  # records are written with sorted keys: "case" first
        while entry is None and start > 0:
            try:
                entry = json.loads(line[start:])
            except json.JSONDecodeError:
                start = line.find('{"case"', start + 1)
    if isinstance(entry, dict) and isinstance(entry.get("case"), str) and isinstance(entry.get("responses"), dict):
        return entry
    return None


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
