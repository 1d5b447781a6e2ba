"""The non-editable install, as a user gets it (`make test-wheel`, run by CI).

Builds the wheel, makes a fresh venv that already holds torch (and torchvision), installs the
wheel into it with the tested constraints, checks that torch and torchvision were kept, and runs
`mmke-eval --cases 2` end to end from another folder; then, in another folder, the README's
"Adding a task" example exactly as written (a task YAML that includes the installed package's
template) and `mmke-eval report --plot` on its output. Slow (a real install), so it runs only when
MMKE_WHEEL_TEST=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(os.environ.get("MMKE_WHEEL_TEST") != "1", reason="set MMKE_WHEEL_TEST=1 (make test-wheel)")


def run(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def readme_block(first_line: str) -> str:
    """The README's bash block that starts with ``first_line``."""
    text = (REPO / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```bash\n")[1:]]
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


def installed(python: Path, name: str) -> str:
    code = f"from importlib.metadata import version; print(version({name!r}))"
    return run(python, "-c", code).stdout.strip()


def test_wheel_installs_beside_an_existing_torch_and_runs_from_another_folder(tmp_path):
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, REPO)
    (wheel,) = dist.glob("mmke_eval-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [python, "-m", "pip", "-q", "--disable-pip-version-check"]
    torch_spec = os.environ.get("TORCH_SPEC", "torch==2.13.0")
    # What a GPU user does first: the torch build they want, and a torchvision that matches it.
    run(*pip, "install", torch_spec, "torchvision")
    torch_before, vision_before = installed(python, "torch"), installed(python, "torchvision")
    run(*pip, "install", "-c", REPO / "constraints.txt", wheel)
    assert installed(python, "torch") == torch_before and installed(python, "torchvision") == vision_before
    assert Version(installed(python, "filelock")) < Version("4.3")
    # This machine's CPU torch cannot load PyPI's torchvision (see the Makefile); nothing needs it.
    run(*pip, "uninstall", "-y", "torchvision")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MMKE_MINI_DATA": ""}
    env.pop("PYTHONPATH", None)
    done = run(env_dir / "bin" / "mmke-eval", "--cases", "2", "--editor", "none,ft_llm", "--output_path", "out", cwd=elsewhere, env=env)
    assert "| mmke_mini | ft_llm |" in done.stdout
    rows = json.loads((elsewhere / "out" / "mmke_table.json").read_text())
    by_task = {(r["task"], r["editor"]): r for r in rows}
    assert by_task[("mmke_mini", "none")]["t_loc"] == 100.0
    assert by_task[("mmke_mini", "ft_llm")]["t_rel"] > by_task[("mmke_mini", "none")]["t_rel"]
    # the package came from the venv, not from this checkout
    where = run(python, "-c", "import mmke_eval; print(mmke_eval.__file__)", cwd=elsewhere, env=env).stdout.strip()
    assert where.startswith(str(env_dir))

    # README, "Adding a task": as written, in a folder of its own, the installed mmke-eval on PATH
    example = tmp_path / "readme_example"
    example.mkdir()
    path_env = {**env, "PATH": f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"}
    done = run("bash", "-e", "-c", readme_block("# a task of your own, in any folder"), cwd=example, env=path_env)
    assert "| my_entity | ft_llm |" in done.stdout
    rows = {r["editor"]: r for r in json.loads((example / "my_tasks" / "out" / "mmke_table.json").read_text())}
    assert rows["none"]["t_loc"] == 100.0 and rows["ft_llm"]["t_rel"] > rows["none"]["t_rel"]
    # its results folder as a paper table and figures (matplotlib comes with the install)
    done = run(env_dir / "bin" / "mmke-eval", "report", "out", "--format", "latex", "--plot", "figs",
               cwd=example / "my_tasks", env=env)
    assert r"\begin{tabular}" in done.stdout and "my\\_entity (my\\_bench, entity\\_level)" in done.stdout
    assert sorted(p.name for p in (example / "my_tasks" / "figs").iterdir()) == [
        "bars_mmke_world_model.pdf", "bars_mmke_world_model.png", "radar_mmke_world_model.pdf", "radar_mmke_world_model.png"]
