"""The command line as a new user runs it: tiny LLaVA, a small MMKE-format data set, offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(args, tmp_path, **env):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"), **env}
    return subprocess.run(args, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)


PLAIN_TASK = """
task: plain_probe
dataset_path: json
dataset_kwargs: {data_files: {test: data.jsonl}}
test_split: test
output_type: generate_until
doc_to_visual: !function hooks.no_visual
doc_to_text: question
doc_to_target: answer
generation_kwargs: {max_new_tokens: 4, until: ["\\n"]}
process_results: !function hooks.plain_answer
metric_list: [{metric: plain_answer, aggregation: mean, higher_is_better: true}]
"""

PLAIN_HOOKS = """
def no_visual(doc):
    return []

def plain_answer(doc, results):
    # 1 when the base model's own generation came back, not an edited-model JSON response
    return {"plain_answer": float(not results[0].startswith('{"mmke_probe"'))}
"""


def write_plain_task(folder: Path) -> Path:
    folder.mkdir()
    (folder / "plain_probe.yaml").write_text(PLAIN_TASK)
    (folder / "hooks.py").write_text(PLAIN_HOOKS)
    (folder / "data.jsonl").write_text('{"question": "What colour is the sky?", "answer": "blue"}\n')
    return folder


@pytest.mark.slow
def test_mmke_eval_runs_editors_and_writes_the_table_and_protocol(tiny_llava_dir, mmke_fixture_root, tmp_path):
    model_args = f"pretrained={tiny_llava_dir},device=cpu,device_map=cpu,dtype=float32"
    out = tmp_path / "out"
    other_tasks = write_plain_task(tmp_path / "other_tasks")
    result = run(
        [BIN / "mmke-eval", "--tasks", "mmke_entity,plain_probe", "--include_path", str(other_tasks),
         "--model", "llava_hf", "--model_args", model_args, "--editor", "none,ft_llm",
         "--editor_args", "ft_llm.steps=2", "--data", str(mmke_fixture_root), "--output_path", str(out)],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| mmke_entity | none |" in result.stdout and "| mmke_entity | ft_llm |" in result.stdout
    rows = json.loads((out / "mmke_table.json").read_text())
    assert [r["editor"] for r in rows] == ["none", "ft_llm"]
    # The unedited model agrees with itself: locality 100 by construction.
    assert rows[0]["t_loc"] == 100.0 and rows[0]["i_loc"] == 100.0
    (results_file,) = (out / "ft_llm").rglob("*_results.json")
    results = json.loads(results_file.read_text())
    assert set(k.split(",")[0] for k in results["results"]["mmke_entity"]) >= {"t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port"}
    # a task that is not an edit benchmark went to the base model untouched
    assert results["results"]["plain_probe"]["plain_answer,none"] == 1.0
    protocol = results["mmke"]
    assert protocol["editor"]["editor"] == "ft_llm" and protocol["editor"]["steps"] == 2
    assert protocol["protocol"]["loc_span_resolved"] == "sequence" and protocol["protocol"]["i_loc_k"] == 10
    assert protocol["skipped_cases"]["mmke/entity_level/eval"]["total"] == 3


@pytest.mark.slow
def test_lmms_eval_cli_reaches_the_edited_model_through_the_entry_point(tiny_llava_dir, mmke_fixture_root, tmp_path):
    from mmke_eval.resources import tasks_dir

    model_args = f"base=llava_hf,editor=none,pretrained={tiny_llava_dir},device=cpu,device_map=cpu,dtype=float32"
    result = run(
        [BIN / "lmms-eval", "--model", "edited", "--model_args", model_args, "--tasks", "mmke_user",
         "--include_path", str(tasks_dir()), "--output_path", str(tmp_path / "out"), "--verbosity", "DEBUG"],
        tmp_path,
        MMKE_DATA=str(mmke_fixture_root),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("*_results.json")
    assert json.loads(results_file.read_text())["results"]["mmke_user"]["t_loc,none"] == 100.0


def test_failures_exit_non_zero_with_a_clear_message(tmp_path):
    result = run([BIN / "mmke-eval", "--tasks", "mmke_entity", "--editor", "ft_lm", "--editor_args", "steps"], tmp_path)
    assert result.returncode == 1
    assert "--editor_args: expected key=value, got 'steps'" in result.stderr

    stray = run([BIN / "mmke-eval", "--editor", "none", "--editor_args", "ike.k=3"], tmp_path)
    assert stray.returncode == 1 and "editor 'ike' is not among --editor none" in stray.stderr

    bad_value = run([BIN / "mmke-eval", "--editor", "none,ft_llm", "--editor_args", "ft_llm.target=everything"], tmp_path)
    assert bad_value.returncode == 1 and "target must be one of" in bad_value.stderr
    assert "none on" not in bad_value.stderr  # checked before any editor ran

    missing = run([BIN / "mmke-eval", "--tasks", "mmke_entity", "--data", str(tmp_path / "nowhere")], tmp_path)
    assert missing.returncode == 1 and "nowhere" in missing.stderr


@pytest.mark.slow
def test_bad_data_fails_with_the_file_case_and_field(tiny_llava_dir, mmke_fixture_root, tmp_path):
    import shutil

    data = Path(shutil.copytree(mmke_fixture_root, tmp_path / "data"))
    record = json.loads((data / "data_json" / "user_eval.json").read_text())[1]
    (data / "data_image" / record["one_hop_img"]).unlink()
    model_args = f"pretrained={tiny_llava_dir},device=cpu,device_map=cpu,dtype=float32"
    result = run([BIN / "mmke-eval", "--tasks", "mmke_user", "--model", "llava_hf", "--model_args", model_args, "--data", str(data)], tmp_path)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("mmke-eval: error: DataError:")
    assert "user_eval.json" in message and "mmke/user_specific/eval/1" in message and "one_hop_img" in message


@pytest.mark.slow
def test_default_run_edits_the_world_model_and_adds_protocol_options_to_its_arguments(tmp_path):
    """No --model_args: the shipped world model; options without pretrained= are added to it."""
    out = tmp_path / "out"
    env = {"MMKE_CACHE": str(tmp_path / "cache")}  # the generated benchmark, written afresh
    result = run(
        [BIN / "mmke-eval", "--tasks", "mmke_mini_semantic", "--editor", "none,ft_llm", "--cases", "20",
         "--model_args", "sequential=true", "--output_path", str(out)],
        tmp_path, **env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    none, ft_llm = json.loads((out / "mmke_table.json").read_text())
    assert none["i_rel"] <= 10 and ft_llm["i_rel"] >= 60  # measured: 0 and 100 (docs/mmke-mini.md)
    assert ft_llm["i_loc"] < none["i_loc"] == 100
    (results_file,) = (out / "ft_llm").rglob("*_results.json")
    protocol = json.loads(results_file.read_text())["mmke"]
    assert protocol["protocol"]["sequential"] is True
    assert protocol["editor"]["lr"] == 3e-4  # the world model's own family defaults (registry.yaml)
    assert protocol["adapter"]["family"] == "mmke_mini_world"
    assert protocol["skipped_cases"]["mmke_mini/visual_knowledge/eval"]["first_n"] == 20
    assert "the first 20 used (--cases)" in result.stderr


@pytest.mark.slow
def test_an_editor_failing_at_run_time_keeps_the_rows_of_the_editors_before_it(tiny_llava_dir, mmke_fixture_root, tmp_path):
    model_args = f"pretrained={tiny_llava_dir},device=cpu,device_map=cpu,dtype=float32"
    out = tmp_path / "out"
    result = run(
        [BIN / "mmke-eval", "--tasks", "mmke_semantic", "--model", "llava_hf", "--model_args", model_args,
         "--editor", "none,ike", "--editor_args", "ike.retriever=embedding,ike.embedding_model=/no/such/encoder",
         "--data", str(mmke_fixture_root), "--output_path", str(out)],
        tmp_path,
    )
    assert result.returncode == 1
    assert "embedding model folder '/no/such/encoder' does not exist" in result.stderr.strip().splitlines()[-1]
    assert [r["editor"] for r in json.loads((out / "mmke_table.json").read_text())] == ["none"]
    assert "| mmke_semantic | none |" in (out / "mmke_table.md").read_text()
