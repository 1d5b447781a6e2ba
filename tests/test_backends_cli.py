"""Every backend we serve, through lmms-eval's command line on the MMKE fixture data.

One lmms-eval process runs a list of configurations (``--config``, one start-up for all): for each
backend, the ``edited`` model on one MMKE-Bench case with FT-LLM and a plain task beside it, and
blip2_hf on the plain task on its own, reached through the entry point.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmke_eval.resources import tasks_dir
from mmke_eval.testing.plain_task import write_plain_task
from mmke_eval.testing.tiny_vlms import save_tiny

BIN = Path(sys.executable).parent
# run label -> (backend, tiny model folder to write, extra model arguments, plain task too). lmms-eval's
# Qwen backends answer plain tasks through qwen-vl-utils, which needs torchvision: not here.
PIXELS = "min_pixels=1024,max_pixels=4096"  # the tiny Qwen models' image sizes (the backends' defaults are for 14 px patches)
RUNS = {
    "blip2_hf": ("blip2_hf", "blip2", "dtype=float32", True),
    "minigpt4": ("minigpt4", "minigpt4", "dtype=float32", True),
    "instructblip": ("instructblip", "instructblip", "", True),
    "qwen2_vl": ("qwen2_vl", "qwen2_vl", f"device_map=cpu,{PIXELS}", False),
    "qwen2_5_vl": ("qwen2_5_vl", "qwen2_5_vl", f"device_map=cpu,{PIXELS}", False),
    "qwen3_vl": ("qwen3_vl", "qwen3_vl", f"device_map=cpu,{PIXELS}", False),
    # llava_hf picks the class from the checkpoint's model_type
    "llava_next": ("llava_hf", "llava_next", "device_map=cpu,dtype=float32", True),
    "llava_onevision": ("llava_hf", "llava_onevision", "device_map=cpu,dtype=float32", True),
}
# Ours (lmms-eval has none), through the entry point: blip2_hf also on its own (the edited runs
# reach minigpt4's plain generation through the same backend class).
OURS = ("blip2_hf",)


@pytest.mark.slow
def test_every_backend_runs_the_edited_model_and_ours_run_alone(mmke_fixture_root, tmp_path):
    plain = write_plain_task(tmp_path / "plain")
    include = [str(tasks_dir()), str(plain)]
    runs = []
    for label, (backend, tiny, extra, plain_too) in RUNS.items():
        folder = save_tiny(tiny, tmp_path / "models" / label)
        model_args = f"pretrained={folder},device=cpu" + (f",{extra}" if extra else "")
        runs.append({"model": "edited", "model_args": f"base={backend},editor=ft_llm,editor.steps=1,{model_args}",
                     "tasks": "mmke_entity,plain_probe" if plain_too else "mmke_entity", "include_path": include, "verbosity": "DEBUG",
                     "output_path": str(tmp_path / "out" / "edited" / label)})
        if backend in OURS:
            runs.append({"model": backend, "model_args": model_args, "tasks": "plain_probe", "include_path": include,
                         "verbosity": "DEBUG", "output_path": str(tmp_path / "out" / "alone" / label)})
    config = tmp_path / "runs.yaml"
    config.write_text(yaml.safe_dump(runs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "MMKE_DATA": str(mmke_fixture_root), "MMKE_MAX_CASES": "1"}
    result = subprocess.run([str(BIN / "lmms-eval"), "--config", str(config)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=3600)  # minutes on a free machine
    assert result.returncode == 0, result.stderr[-3000:]
    for label, (backend, _, _, plain_too) in RUNS.items():
        (results_file,) = (tmp_path / "out" / "edited" / label).rglob("*_results.json")
        results = json.loads(results_file.read_text())["results"]
        assert all(isinstance(results["mmke_entity"][f"{k},none"], float) for k in ("t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port")), label
        assert not plain_too or results["plain_probe"]["plain_answer,none"] == 1.0, label  # the base backend answered it
        if backend in OURS:
            (alone,) = (tmp_path / "out" / "alone" / label).rglob("*_results.json")
            assert json.loads(alone.read_text())["results"]["plain_probe"]["plain_answer,none"] == 1.0, label
