"""One run at a time per output folder: a second run is refused (or waits), a dead run's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmke_eval import run_lock

ROOT = Path(__file__).resolve().parent.parent
HOLD = "import sys; from mmke_eval import run_lock; run_lock.acquire(sys.argv[1]); print('held', flush=True); sys.stdin.read()"


@pytest.fixture
def other_run():
    """Start another process that holds a folder's lock until its stdin closes (then exits normally)."""
    started = []

    def start(folder: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        child = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, env=env)
        started.append(child)
        assert child.stdout.readline().strip() == "held"
        return child

    yield start
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait()


def test_a_second_run_is_refused_naming_the_folder_and_the_holder(other_run, tmp_path):
    folder = tmp_path / "out" / "ft_llm"
    holder = other_run(folder)
    with pytest.raises(run_lock.FolderLocked) as refused:
        run_lock.acquire(folder)
    message = str(refused.value)
    assert str(folder) in message and f"pid {holder.pid} on {socket.gethostname()}, started " in message
    assert "--wait_for_lock" in message
    holder.stdin.close()  # the other run ends normally: its lock file goes with it
    holder.wait()
    assert not (folder / run_lock.LOCK_NAME).exists()
    key = run_lock.acquire(folder)
    run_lock.release(key)


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_log_line(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now
    folder = tmp_path / "none"
    folder.mkdir()
    (folder / run_lock.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "yesterday"}))
    key = run_lock.acquire(folder)
    try:
        assert json.loads((folder / run_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
        assert (f"took over the lock of {folder} left by a run that is no longer running (pid {dead.pid}"
                in capsys.readouterr().err)
    finally:
        run_lock.release(key)


def test_a_killed_holder_releases_its_lock_and_the_next_run_takes_it_over(other_run, tmp_path, capsys):
    folder = tmp_path / "ike"
    holder = other_run(folder)
    holder.kill()  # kill -9: no clean-up, the file stays; the kernel drops its flock
    holder.wait()
    key = run_lock.acquire(folder)
    run_lock.release(key)
    assert f"no longer running (pid {holder.pid}" in capsys.readouterr().err


def test_a_live_process_named_in_the_file_holds_it_even_without_a_flock(tmp_path):
    """A file system without shared locks: the recorded live process on this host decides."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "none"
        folder.mkdir()
        (folder / run_lock.LOCK_NAME).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "started": "now"}))
        with pytest.raises(run_lock.FolderLocked, match=f"pid {live.pid}"):
            run_lock.acquire(folder)
    finally:
        live.kill()
        live.wait()


def test_wait_for_lock_waits_until_the_other_run_ends(other_run, tmp_path, capsys):
    folder = tmp_path / "none"
    holder = other_run(folder)
    start = time.monotonic()
    import threading

    threading.Timer(1.0, holder.stdin.close).start()
    key = run_lock.acquire(folder, wait=True, poll_s=0.1)
    try:
        assert time.monotonic() - start >= 0.9
        assert f"waiting for {folder}, in use by another run (pid {holder.pid}" in capsys.readouterr().err
    finally:
        run_lock.release(key)


def test_the_cli_refuses_a_second_run_before_loading_anything_and_releases_on_error(other_run, tmp_path, monkeypatch, capsys):
    from mmke_eval import cli, runner

    def never(config, tasks, **run):
        raise AssertionError("evaluated")

    monkeypatch.setattr(runner, "run_editor", never)
    monkeypatch.setattr(runner, "model_args_for", lambda model, given, world="base": f"pretrained={tmp_path}")
    holder = other_run(tmp_path / "ft_llm")
    assert cli.main(["--editor", "none,ft_llm", "--output_path", str(tmp_path)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"mmke-eval: error: FolderLocked: {tmp_path / 'ft_llm'} is in use by another run (pid {holder.pid}")
    assert not (tmp_path / "none" / run_lock.LOCK_NAME).exists()  # the folder taken before the refusal is free again

    holder.stdin.close()
    holder.wait()

    def failing(config, tasks, **run):
        assert (Path(run["output_path"]) / run_lock.LOCK_NAME).is_file()  # held while the editor runs
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "run_editor", failing)
    assert cli.main(["--editor", "none", "--output_path", str(tmp_path)]) == 1
    assert not (tmp_path / "none" / run_lock.LOCK_NAME).exists() and not run_lock._held


def test_the_other_processes_of_a_multi_process_run_do_not_take_the_lock(other_run, tmp_path, monkeypatch):
    """torchrun: process 0 holds the folder for the run; process 1 of the same run must not be refused."""
    from mmke_eval import cli, runner

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(runner, "run_editor", lambda config, tasks, **run: None)  # a non-zero process gets no results
    monkeypatch.setattr(runner, "model_args_for", lambda model, given, world="base": f"pretrained={tmp_path}")
    other_run(tmp_path / "none")  # (stands for process 0)
    assert cli.main(["--editor", "none", "--output_path", str(tmp_path)]) == 0


def test_the_edited_model_under_lmms_evals_cli_takes_its_journal_folder(other_run, tmp_path, monkeypatch):
    """lmms-eval --model edited with journal=: the folder is held until the process ends; a refusal
    is an exit with the message (lmms-eval's CLI would log an exception and exit 0)."""
    from mmke_eval.config import EditedConfig
    from mmke_eval.lmms import model

    def lock(folder):
        model._lock_journal_folder(EditedConfig(base="llava_hf", journal=str(tmp_path / folder / "cases.jsonl")))

    holder = other_run(tmp_path / "ike")
    with pytest.raises(SystemExit, match=f"FolderLocked: {tmp_path / 'ike'} is in use by another run \\(pid {holder.pid}"):
        lock("ike")
    lock("mend")
    try:
        assert json.loads((tmp_path / "mend" / run_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        run_lock.release_all()
