"""One run at a time per output folder (``<output_path>/<editor>``, the folder of a journal).

Two runs writing into the same folder would both compute every case, append duplicate journal
lines, and one results file would overwrite the other. A run therefore holds ``mmke-eval.lock``
in the folder while it works: an exclusive ``flock`` on the file, which the kernel releases when
the process ends, however it ends; the file holds who holds it (pid, host, start time, command)
so that a refused run can say so. A second run is refused with one line naming the folder and the
holder, or waits for it (``mmke-eval --wait_for_lock``; ``wait_for_lock=true`` in the ``edited``
model's arguments). A lock file left by a process that is gone (``kill -9``, a crash) is taken
over, with a log line.

The processes of one multi-process run (torchrun, accelerate launch) share the folder: only
process 0 takes the lock. Where ``flock`` is not available (Windows, a network file system
without locks), the pid in the file decides: a live process on this host holds it, a dead one
is stale, and one on another host is taken as live (it cannot be checked from here).
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = "mmke-eval.lock"

# Folder (resolved) -> open lock file descriptor, for the locks this process holds: taking one it
# already holds is a no-op (the CLI, the runner and the edited model all ask for the same folder).
_held: dict[str, int] = {}


class FolderLocked(RuntimeError):
    """Another run holds the output folder."""

    is_root_cause = True


@contextmanager
def holding(folder: str | Path, wait: bool = False, poll_s: float = 1.0) -> Iterator[None]:
    """Hold the lock of ``folder`` while the block runs (released on exit and on error)."""
    key = acquire(folder, wait=wait, poll_s=poll_s)
    try:
        yield
    finally:
        if key is not None:
            release(key)


def acquire(folder: str | Path, wait: bool = False, poll_s: float = 1.0) -> str | None:
    """Take the lock of ``folder`` (created if missing); return its key for ``release``, or None
    when this process holds it already. Raises FolderLocked when another live run holds it
    (unless ``wait``: then waits until it is free)."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _held:
        return None
    path = folder / LOCK_NAME
    announced = False
    while True:
        fd, holder = _try_lock(path)
        if fd is not None:
            break
        if not wait:
            raise FolderLocked(f"{folder} is in use by another run ({describe(holder)}); wait for it to end, pass "
                               f"--wait_for_lock to wait for it, or use another --output_path (lock file: {path})")
        if not announced:
            print(f"mmke-eval: waiting for {folder}, in use by another run ({describe(holder)}) ...", file=sys.stderr, flush=True)
            announced = True
        time.sleep(poll_s)
    if holder:  # the file still names a process that did not release it: gone (its flock went with it)
        print(f"mmke-eval: took over the lock of {folder} left by a run that is no longer running ({describe(holder)})",
              file=sys.stderr, flush=True)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(_me()).encode("utf-8"))
    os.fsync(fd)
    _held[key] = fd
    return key


def release(key: str) -> None:
    fd = _held.pop(key, None)
    if fd is None:
        return
    try:
        os.unlink(Path(key) / LOCK_NAME)  # while still locked: a run waiting on it then sees a new file
    except OSError:
        pass
    os.close(fd)


def release_all() -> None:
    for key in list(_held):
        release(key)


atexit.register(release_all)  # a lock taken for a whole process (the edited model under lmms-eval's CLI)


def _try_lock(path: Path) -> tuple[int | None, dict]:
    """(fd holding the lock, what the file said before) or (None, the live holder)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _flock(fd):  # no flock here: the recorded process decides
            holder = _read(fd)
            if holder and holder.get("pid") != os.getpid() and _alive(holder):
                os.close(fd)
                return None, holder
            return fd, holder
        if _inode(fd) != _inode(path):  # its holder removed it as we opened it: try the new file
            os.close(fd)
            return _try_lock(path)
        holder = _read(fd)
        if holder and holder.get("host") == socket.gethostname() and holder.get("pid") != os.getpid() and _alive(holder):
            os.close(fd)  # a live process names itself without a flock (a file system without shared locks)
            return None, holder
        return fd, holder
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        return None, holder
    except BaseException:
        os.close(fd)
        raise


def _flock(fd: int) -> bool:
    """Exclusive, non-blocking (BlockingIOError when held); False where flock is not available."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise BlockingIOError(*err.args) from None
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise
    return True


def _inode(target) -> tuple[int, int] | None:
    try:
        st = os.fstat(target) if isinstance(target, int) else os.stat(target)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    try:
        holder = json.loads(data.decode("utf-8", "replace")) if data.strip() else {}
    except json.JSONDecodeError:
        holder = {"unreadable": data[:80].decode("utf-8", "replace")}
    return holder if isinstance(holder, dict) else {}


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "process_start": _process_start(os.getpid()), "command": " ".join(sys.argv)[:500]}


def _process_start(pid: int) -> str | None:
    """The process's start time since boot (Linux), so that a reused pid is not taken for the holder."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    if holder.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process cannot be checked from here
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    recorded, now = holder.get("process_start"), _process_start(pid)
    return recorded is None or now is None or recorded == now


def describe(holder: dict) -> str:
    if not holder:
        return "holder unknown"
    if "unreadable" in holder:
        return f"lock file unreadable: {holder['unreadable']!r}"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
