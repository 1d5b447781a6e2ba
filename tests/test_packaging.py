"""A non-editable install finds templates/, registry.yaml and the task YAMLs."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("mmke_eval-*.whl")
    return path


def test_wheel_carries_the_root_resources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "mmke_eval/_data/registry.yaml",
        "mmke_eval/_data/templates/mmke/probe.jinja",
        "mmke_tasks/mmke/mmke_entity.yaml",
        "mmke_tasks/mmke/_default_template_yaml",
        "mmke_tasks/mmke/sources/mmke_entity.json",
        # a family is one folder: its declaration, loader, mini tasks and generator travel with it
        "mmke_tasks/mmke/family.yaml",
        "mmke_tasks/mmke/loader.py",
        "mmke_tasks/mmke/README.md",
        "mmke_tasks/mmke/mini/mmke_mini_entity.yaml",
        "mmke_tasks/mmke/mini/sources/mmke_mini_entity.json",
        "mmke_tasks/mike/generator.py",
        "mmke_tasks/hooks.py",
        "editors/ft.py",
        # LMMS_EVAL_PLUGINS=mmke_eval imports mmke_eval.models and looks up mmke_eval.tasks
        "mmke_eval/models/__init__.py",
        "mmke_eval/models/edited.py",
        "mmke_eval/tasks/__init__.py",
        "mmke_eval/report/plots.py",
    ):
        assert expected in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "edited = mmke_eval.lmms.plugin:manifests" in text
    assert "mmke-eval = mmke_eval.cli:main" in text


def test_installed_wheel_resolves_resources_from_another_folder(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True, capture_output=True)
    code = (
        "from mmke_eval.resources import resource_path, tasks_dir; from mmke_eval import registry, templates;"
        "print(resource_path('registry.yaml')); print(tasks_dir());"
        "print(registry.editor_names()); print(templates.render('mmke/probe.jinja', question='Q?'))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)}, capture_output=True, text=True, check=True)
    lines = run.stdout.splitlines()
    assert lines[0] == str(target / "mmke_eval" / "_data" / "registry.yaml")
    assert lines[1] == str(target / "mmke_tasks")
    assert "ft_llm" in lines[2] and lines[3] == "Q?"
