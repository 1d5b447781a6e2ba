"""mmke-eval inside lmms-eval itself: LMMS_EVAL_PLUGINS=mmke_eval finds our tasks (no --include_path),
an lmms-eval --config file runs them, and task YAMLs anywhere include our templates by package path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmke_eval.lmms.patches import install_task_loading as install_fixes, package_include, with_plugin_tasks
from mmke_eval.mini import WORLD_MODEL_DIR
from mmke_eval.resources import tasks_dir

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "lmms-eval-run.yaml"


@pytest.mark.slow
def test_lmms_eval_config_run_finds_our_tasks_with_only_the_plugin_variable(tmp_path, capsys):
    """The docs' example config, pointed at the built-in world model and one case of mmke_mini_entity."""
    from mmke_eval import cli

    entries = yaml.safe_load(EXAMPLE.read_text())
    # lmms-eval checks the keys of the entry run here; the others have the same ones
    assert all(set(entry) == set(entries[0]) for entry in entries) and "include_path" not in entries[0]
    first = entries[0]
    model_args = dict(part.split("=", 1) for part in first["model_args"].split(","))
    model_args.update(pretrained=str(WORLD_MODEL_DIR), device="cpu", device_map="cpu", dtype="float32",
                      journal=str(tmp_path / "out" / "cases.jsonl"))
    first.update(model_args=",".join(f"{k}={v}" for k, v in model_args.items()), tasks="mmke_mini_entity",
                 output_path=str(tmp_path / "out"), env={"MMKE_MAX_CASES": "1"})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump([first]))
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)), "LMMS_EVAL_PLUGINS": "mmke_eval",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "MMKE_MINI_DATA": "", "PYTHONPATH": str(REPO)}  # PYTHONPATH: this checkout, not an installed copy
    done = subprocess.run([Path(sys.executable).parent / "lmms-eval", "--config", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("*_results.json")  # lmms-eval 0.7.3 alone: "Tasks not found", no file
    results = json.loads(results_file.read_text())
    assert results["config"]["model"] == "edited" and "mmke" not in results
    assert set(results["results"]) == {"mmke_mini_entity"}
    assert list((tmp_path / "out").rglob("*_samples_mmke_mini_entity.jsonl"))
    # a plain lmms-eval folder reads back as a run: the editor and protocol from model_args, data not recorded
    assert cli.main(["report", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "- Data: mmke_mini/entity_level/eval: data not recorded (plain lmms-eval run)" in out
    assert "| ft_llm |" in out and "- Model: world_model (llava_hf; dtype=float32, pretrained=" in out


def test_includes_by_package_path_resolve_in_the_installed_tasks(tmp_path, monkeypatch):
    import lmms_eval.utils

    task = tmp_path / "mine" / "my_entity.yaml"
    task.parent.mkdir()
    task.write_text("include: mmke_tasks/mmke/_default_template_yaml\ntask: my_entity\n"
                    "dataset_kwargs:\n  data_files: {eval: my_entity.json}\n")
    monkeypatch.chdir(tmp_path)  # not the repository root: the include is not found relative to here
    install_fixes()
    install_fixes()  # idempotent
    config = lmms_eval.utils.load_yaml_config(str(task), mode="simple")
    assert config["task"] == "my_entity" and config["dataset_path"] == "json"
    assert [m["metric"] for m in config["metric_list"]][:6] == ["t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port"]
    assert package_include("x/mmke_tasks/mmke/_default_template_yaml") == str(tasks_dir() / "mmke" / "_default_template_yaml")
    assert package_include("x/mmke_tasks/mmke/no_such_file") == "x/mmke_tasks/mmke/no_such_file"
    assert package_include("elsewhere/_default_template_yaml") == "elsewhere/_default_template_yaml"


def test_plugin_task_folder_is_added_once_and_only_for_mmke_eval(monkeypatch):
    monkeypatch.setenv("LMMS_EVAL_PLUGINS", "other_pkg")
    assert with_plugin_tasks("/x") == "/x"
    monkeypatch.setenv("LMMS_EVAL_PLUGINS", "other_pkg, mmke_eval")
    assert with_plugin_tasks(None) == [str(tasks_dir())]
    assert with_plugin_tasks("/x") == ["/x", str(tasks_dir())]
    assert with_plugin_tasks([str(tasks_dir())]) == [str(tasks_dir())]


def test_mmke_eval_refuses_an_lmms_eval_config_file(capsys):
    from mmke_eval import cli

    assert cli.main(["--config", "run.yaml"]) == 1
    assert "LMMS_EVAL_PLUGINS=mmke_eval lmms-eval --config FILE" in capsys.readouterr().err


def test_task_index_is_built_once_until_a_task_file_changes(tmp_path, monkeypatch):
    from lmms_eval.tasks import TaskManager

    install_fixes()
    folder = tmp_path / "tasks"
    folder.mkdir()
    task = folder / "one.yaml"
    task.write_text("task: probe_one\ndataset_path: x\noutput_type: generate_until\ndoc_to_text: q\n")
    parsed = []
    index_folder = TaskManager._get_task_and_group
    monkeypatch.setattr(TaskManager, "_get_task_and_group", lambda self, d: parsed.append(d) or index_folder(self, d))

    first = TaskManager("WARNING", include_path=[str(folder)], include_defaults=False)
    second = TaskManager("WARNING", include_path=[str(folder)], include_defaults=False)
    assert len(parsed) == 1 and first.all_tasks == second.all_tasks == ["probe_one"]
    second._task_index["probe_one"]["type"] = "changed"  # each manager gets its own copy
    assert TaskManager("WARNING", include_path=[str(folder)], include_defaults=False)._task_index["probe_one"]["type"] == "task"

    (folder / "two.yaml").write_text(task.read_text().replace("probe_one", "probe_two"))
    third = TaskManager("WARNING", include_path=[str(folder)], include_defaults=False)
    assert len(parsed) == 2 and third.all_tasks == ["probe_one", "probe_two"]
    task.write_text(task.read_text().replace("probe_one", "probe_uno"))  # same folder, other content
    os.utime(task, ns=(task.stat().st_atime_ns, task.stat().st_mtime_ns + 10**9))
    assert TaskManager("WARNING", include_path=[str(folder)], include_defaults=False).all_tasks == ["probe_two", "probe_uno"]
    assert len(parsed) == 3


def test_importing_the_plugin_first_still_registers_the_edited_model(tmp_path):
    """lmms-eval builds its model registry when lmms_eval.models is first imported, calling our entry
    point; if that import came from this module's own top level, the half-initialised module had no
    ``manifests`` yet, lmms-eval only logged it, and ``--model edited`` was "not found"."""
    code = ("import mmke_eval.lmms.plugin\n"
            "import lmms_eval.models as models\n"
            "names = models.MODEL_REGISTRY_V2.list_model_names()\n"
            "print(sorted(n for n in ('edited', 'blip2_hf', 'minigpt4') if n in names))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['blip2_hf', 'edited', 'minigpt4']", done.stderr[-2000:]


def test_our_task_reader_finds_a_package_include_from_any_folder(tmp_path, monkeypatch):
    """README, "Adding a task": a task written anywhere includes our template by package path; the
    checks mmke-eval makes before loading (source cards for --data, --cases) read it as lmms-eval does."""
    from mmke_eval.lmms.taskfiles import source_cards, task_config

    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "my_entity.yaml").write_text("include: mmke_tasks/mmke/_default_template_yaml\ntask: my_entity\n"
                                            "dataset_kwargs:\n  data_files: {eval: my_entity.json}\n")
    card = {"benchmark": "my_bench", "family": "mmke", "knowledge_type": "entity_level", "split": "eval", "data_env": "X"}
    (folder / "my_entity.json").write_text(json.dumps(card))
    monkeypatch.chdir(tmp_path)
    assert task_config(folder / "my_entity.yaml")["output_type"] == "generate_until"
    assert source_cards("my_entity", [str(folder)]) == [card]
