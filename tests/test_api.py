"""The Python API (mmke_eval.evaluate): the command's numbers, typed values end to end (a comma in
an editor value), and runs in one process that do not see each other's data root."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import mmke_eval
import mmke_eval.api
import mmke_eval.errors
from mmke_eval import cli, run_context


def model_args(tiny_llava_dir) -> dict:
    return {"pretrained": str(tiny_llava_dir), "device": "cpu", "device_map": "cpu", "dtype": "float32"}


@pytest.mark.slow
def test_the_api_gives_the_commands_numbers_and_keeps_a_comma_in_an_editor_value(tiny_llava_dir, mmke_fixture_root, tmp_path):
    encoder = "org/encoder,revision-2"  # a value with a comma: never joined into a k=v,... string
    results = mmke_eval.evaluate(
        tasks="mmke_entity", model="llava_hf", model_args=model_args(tiny_llava_dir), editors=["none", "ft_llm"],
        editor_args={"ft_llm": {"steps": 2}}, data=mmke_fixture_root, cases=1, output_path=tmp_path / "api")
    assert list(results) == ["none", "ft_llm"]
    text = ",".join(f"{k}={v}" for k, v in model_args(tiny_llava_dir).items())
    assert cli.main(["--tasks", "mmke_entity", "--model", "llava_hf", "--model_args", text, "--editor", "none,ft_llm",
                     "--editor_args", "ft_llm.steps=2", "--data", str(mmke_fixture_root), "--cases", "1",
                     "--output_path", str(tmp_path / "cli")]) == 0
    api_rows = json.loads((tmp_path / "api" / "mmke_table.json").read_text())
    assert api_rows == json.loads((tmp_path / "cli" / "mmke_table.json").read_text())
    assert [row for name in results for row in results[name]["mmke"]["table"]] == api_rows
    assert results["ft_llm"]["mmke"]["editor"]["steps"] == 2 and results["ft_llm"]["config"]["model"] == "edited"

    with_comma = mmke_eval.evaluate(
        tasks="mmke_entity", model="llava_hf", model_args=model_args(tiny_llava_dir), editors=["ike"],
        editor_args={"ike": {"k": 1, "retriever": "lexical", "embedding_model": encoder}}, data=mmke_fixture_root, cases=1)
    assert with_comma["ike"]["mmke"]["editor"]["embedding_model"] == encoder


@pytest.mark.slow
def test_two_runs_in_one_process_read_their_own_data_root(tiny_llava_dir, mmke_fixture_root, tmp_path):
    other = shutil.copytree(mmke_fixture_root, tmp_path / "other_copy")
    records_file = other / "data_json" / "entity_eval.json"
    records = json.loads(records_file.read_text())
    records = records[1:]  # one case fewer than the first root
    records_file.write_text(json.dumps(records))
    before = dict(os.environ)

    def run(root):
        results = mmke_eval.evaluate(tasks="mmke_entity", model="llava_hf", model_args=model_args(tiny_llava_dir),
                                     editors="none", data=root, cases=1)
        return results["none"]["mmke"]

    first, second, again = run(mmke_fixture_root), run(other), run(mmke_fixture_root)
    key = "mmke/entity_level/eval"
    assert first["data"][key]["root"] == str(mmke_fixture_root) and second["data"][key]["root"] == str(other)
    assert second["skipped_cases"][key]["total"] == first["skipped_cases"][key]["total"] - 1
    assert again["data"][key] == first["data"][key] and again["skipped_cases"] == first["skipped_cases"]
    assert run_context.active() is None and dict(os.environ) == before  # nothing of a run outlives it


def test_refused_and_unknown_lmms_eval_options_fail_before_anything_loads():
    with pytest.raises(mmke_eval.errors.EvaluationError, match="--limit is not supported by mmke-eval"):
        mmke_eval.evaluate(limit=5)
    with pytest.raises(mmke_eval.errors.EvaluationError, match="'log_sample' is not forwarded.*did you mean 'log_samples'"):
        mmke_eval.evaluate(log_sample=True)
    with pytest.raises(ValueError, match="editor_args for ike: not among the editors none"):
        mmke_eval.evaluate(editor_args={"ike": {"k": 3}})


def test_a_comma_inside_an_editor_value_on_the_command_line_and_in_the_record():
    from mmke_eval.keyvalues import parse_key_values

    assert parse_key_values(r"ike.embedding_model=org/a\,b,ike.k=2", "--editor_args") == {"ike.embedding_model": "org/a,b",
                                                                                        "ike.k": "2"}
    record = mmke_eval.api._record_model_args("llava_hf", "ike", "pretrained=/m", {"embedding_model": "org/a,b"}, None, False)
    assert parse_key_values(record, "model_args")["editor.embedding_model"] == "org/a,b"  # what reports read back
