"""The command line as a new user runs it: tiny LLaVA, a small MMKE-format data set, offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmke_eval.resources import tasks_dir
from mmke_eval.testing.plain_task import write_plain_task

BIN = Path(sys.executable).parent


def run(args, tmp_path, **env):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"), **env}
    return subprocess.run(args, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_mmke_eval_runs_editors_and_writes_the_table_and_protocol(tiny_llava_dir, mmke_fixture_root, tmp_path, capsys):
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
    assert [(r["task"], r["editor"]) for r in rows] == [
        ("mmke_entity", "none"), ("plain_probe", "none"), ("mmke_entity", "ft_llm"), ("plain_probe", "ft_llm")]
    # The unedited model agrees with itself: locality 100 by construction.
    assert rows[0]["t_loc"] == 100.0 and rows[0]["i_loc"] == 100.0
    # the other task's metric is in the printed table and the files too
    assert rows[1]["metrics"] == {"plain_answer,none": 1.0}
    assert "| plain_probe | ft_llm | plain_answer,none | 1 |" in result.stdout
    assert "| plain_probe | ft_llm | plain_answer,none | 1 |" in (out / "mmke_table.md").read_text()
    (results_file,) = (out / "ft_llm").rglob("*_results.json")
    results = json.loads(results_file.read_text())
    assert set(k.split(",")[0] for k in results["results"]["mmke_entity"]) >= {"t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port"}
    # a task that is not an edit benchmark went to the base model untouched
    assert results["results"]["plain_probe"]["plain_answer,none"] == 1.0
    protocol = results["mmke"]
    assert protocol["editor"]["editor"] == "ft_llm" and protocol["editor"]["steps"] == 2
    assert protocol["protocol"]["loc_span_resolved"] == "sequence" and protocol["protocol"]["i_loc_k"] == 10
    assert protocol["skipped_cases"]["mmke/entity_level/eval"]["total"] == 3
    # traceable: the data folder, a content hash of what was read, versions, the git revision
    data = protocol["data"]["mmke/entity_level/eval"]
    assert data["root"] == str(mmke_fixture_root) and data["origin"] == f"--data {mmke_fixture_root}"
    assert set(data["files"]) == {"data_json/entity_eval.json", "data_json/entity_train.json"}
    assert len(data["sha256"]) == 64 and data["images"] > 0
    versions = protocol["provenance"]["versions"]
    assert all(versions[p] for p in ("mmke-eval", "lmms-eval", "torch", "transformers"))
    assert len(protocol["provenance"]["git"]["revision"]) == 40
    assert protocol["protocol"]["port_image_resolved"] == {"default": "data"}
    assert protocol["resume"]["journal"] == str(out / "ft_llm" / "cases.jsonl")
    assert len((out / "ft_llm" / "cases.jsonl").read_text().splitlines()) == 3  # one line per finished case
    # the source cards, for reports made elsewhere; per-case scores (lmms-eval samples) for compare
    assert protocol["cards"]["mmke_entity"] == json.loads((tasks_dir() / "mmke" / "sources" / "mmke_entity.json").read_text())
    assert len(list((out / "ft_llm").rglob("*_samples_mmke_entity.jsonl"))) == 1
    from mmke_eval import cli

    assert cli.main(["compare", str(out / "none"), str(out / "ft_llm")]) == 0
    compared = capsys.readouterr().out
    assert "## none -> ft_llm" in compared and "| T-Loc | 100.0 |" in compared and "| 3 |" in compared  # 3 cases each
    assert cli.main(["report", str(out)]) == 0
    reported = capsys.readouterr().out
    assert "### mmke_entity (mmke, entity_level)" in reported and "### plain_probe (lmms-eval task)" in reported


@pytest.mark.slow
def test_lmms_eval_cli_reaches_the_edited_model_through_the_entry_point(tiny_llava_dir, mmke_fixture_root, tmp_path):

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


def test_a_run_in_process_leaves_the_environment_as_it_found_it(mmke_fixture_root, monkeypatch, capsys):
    """--data and --cases reach the loaders as values of the run (mmke_eval/run_context.py), never as
    environment variables: a second run in the same process (a library caller, a test) must not
    inherit them: it would score the first run's case count, or read its data, without saying so."""
    from mmke_eval import cli
    from mmke_eval.run_context import MAX_CASES_ENV

    monkeypatch.delenv(MAX_CASES_ENV, raising=False)
    monkeypatch.setenv("MMKE_DATA", "/somewhere/else")
    # fails after the variables are set (the option is checked with the run's other options)
    assert cli.main(["--tasks", "mmke_entity", "--data", str(mmke_fixture_root), "--cases", "2",
                     "--model_args", "sequential=maybe"]) == 1
    assert "sequential='maybe'" in capsys.readouterr().err
    assert MAX_CASES_ENV not in os.environ and os.environ["MMKE_DATA"] == "/somewhere/else"


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


@pytest.mark.slow
def test_a_rerun_reuses_finished_cases_but_never_a_changed_one(tiny_llava_dir, mmke_fixture_root, tmp_path):
    """The same command again resumes from the journal; an answer changed in the data is rescored."""
    import shutil

    data = Path(shutil.copytree(mmke_fixture_root, tmp_path / "data"))
    model_args = f"pretrained={tiny_llava_dir},device=cpu,device_map=cpu,dtype=float32"
    out = tmp_path / "out"
    command = [BIN / "mmke-eval", "--tasks", "mmke_entity", "--model", "llava_hf", "--model_args", model_args,
               "--editor", "ft_llm", "--editor_args", "steps=2,lr=0.05", "--data", str(data), "--output_path", str(out)]

    def t_rel_and_resumed():
        result = run(command, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        (row,) = json.loads((out / "mmke_table.json").read_text())
        results_file = max((out / "ft_llm").rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
        resume = json.loads(results_file.read_text())["mmke"]["resume"]
        return row["t_rel"], resume["resumed_cases"]["mmke_entity"]

    first, resumed = t_rel_and_resumed()
    assert resumed == 0
    again, resumed = t_rel_and_resumed()
    assert (again, resumed) == (first, 3)  # every case from the journal, the same numbers
    eval_json = data / "data_json" / "entity_eval.json"
    records = json.loads(eval_json.read_text())
    for key in ("rel_ans_1", "rel_1_ans"):  # the fixture spells it both ways
        if key in records[0]:
            records[0][key] = "Totally different words now"
    eval_json.write_text(json.dumps(records))
    changed, resumed = t_rel_and_resumed()
    assert resumed == 2  # the changed case alone was edited and scored again
    assert changed != first


def test_ctrl_c_ends_in_one_line_saying_what_is_saved_and_how_to_resume(tmp_path, monkeypatch, capsys):
    from mmke_eval import cli, journal, runner

    saved = journal.CaseJournal(tmp_path / "none" / "cases.jsonl", "run")
    saved.add("case-0", {"t_rel_1": "{}"})

    def interrupted(config, tasks, **run):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_editor", interrupted)
    monkeypatch.setattr(journal, "_open_journals", [saved])
    monkeypatch.setattr(runner, "model_args_for", lambda model, given, world="base": f"pretrained={tmp_path}")
    code = cli.main(["--editor", "none", "--output_path", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130
    assert err[-1] == (f"mmke-eval: interrupted. Finished cases are saved (1 in {tmp_path / 'none' / 'cases.jsonl'}); "
                       "run the same command again to resume.")


@pytest.mark.slow
@pytest.mark.parametrize("family, tasks, writer", [
    ("vlkeb", "vlkeb,vlkeb_edit_onehop", "write_vlkeb_fixture"),
    ("mmedit", "mmedit", "write_mmedit_fixture"),
    ("mike", "mike", "write_mike_fixture"),
])
def test_each_benchmark_family_runs_end_to_end_with_its_own_columns(family, tasks, writer, tiny_llava_dir, tmp_path):
    import importlib

    data = getattr(importlib.import_module(f"mmke_tasks.{family}.fixture"), writer)(tmp_path / "data")
    model_args = f"pretrained={tiny_llava_dir},device=cpu,device_map=cpu,dtype=float32"
    out = tmp_path / "out"
    result = run([BIN / "mmke-eval", "--tasks", tasks, "--model", "llava_hf", "--model_args", model_args,
                  "--editor", "none", "--data", str(data), "--output_path", str(out)],
                 tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "mmke_table.json").read_text())
    assert {r["family"] for r in rows} == {family}
    none = [r for r in rows if r["editor"] == "none"]
    assert all(r["t_loc"] == 100.0 and r["i_loc"] == 100.0 for r in none)  # the unedited model agrees with itself
    header = "| Task | Editor | Rel (A) | T-Gen (A) | I-Gen (A) | T-Loc | I-Loc |" if family == "mike" else \
        "| Task | Editor | Rel | T-Gen | I-Gen | T-Loc | I-Loc |"
    assert header in result.stdout
    if family == "mike":
        assert {r["task"] for r in rows} >= {"mike", "mike_vna", "mike_elc", "mike_csr"}
        assert all(r["rel_entity"] is not None for r in rows)
    elif family == "vlkeb":
        tasks_seen = {r["task"] for r in rows}
        assert {"vlkeb_eval", "vlkeb_multihop", "vlkeb_hop1", "vlkeb_hop2", "vlkeb_hop3", "vlkeb_hop4"} <= tasks_seen
        hops = [next(r for r in none if r["task"] == f"vlkeb_hop{k}")["port"] for k in (1, 2, 3, 4)]
        average = next(r for r in none if r["task"] == "vlkeb_multihop")["port"]
        assert average == pytest.approx(sum(hops) / 4)  # the mean over the hops
        hop3 = next(r for r in none if r["task"] == "vlkeb_hop3")
        assert hop3["port"] is not None
        assert next(r for r in none if r["task"] == "vlkeb_eval")["port"] is None  # eval.json has no portability
        assert "vlkeb/3-hop/eval: 3 of 4 cases skipped: 3 no 3-hop portability question" in result.stderr
        assert next(r for r in none if r["task"] == "vlkeb_edit_onehop")["port"] is not None
    else:
        assert {r["task"] for r in rows} >= {"mmedit_vqa", "mmedit_caption"}
        assert "mmedit/vqa/eval: 1 of 3 cases skipped: 1 empty alt" in result.stderr


def test_help_lists_every_subcommand(capsys):
    from mmke_eval import cli

    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    for name in ("list", "make-mini", "train-editor", "convert-checkpoint", "report", "compare"):
        assert name in shown, name


def test_a_table_that_cannot_be_written_is_printed_and_the_run_fails(tmp_path, monkeypatch, capsys):
    """A read-only output folder (here: mmke_table.md is a folder, which fails as root too): the
    numbers are printed anyway, and the exit code says the run did not do everything it should."""
    from mmke_eval import cli, runner

    monkeypatch.setattr(runner, "run_editor", lambda config, tasks, **run: {"results": {"mme": {"score,none": 42.0}}})
    monkeypatch.setattr(runner, "model_args_for", lambda model, given, world="base": f"pretrained={tmp_path}")
    (tmp_path / "mmke_table.md").mkdir()
    code = cli.main(["--editor", "none", "--output_path", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert "| mme | none | score,none | 42 |" in captured.out
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("mmke-eval: error: TableNotWritten: could not write") and "mmke_table.md" in last


def test_an_unknown_task_is_refused_before_anything_loads_with_the_close_name(monkeypatch, capsys):
    from mmke_eval import cli, runner
    from mmke_eval.lmms import taskfiles

    def never(config, tasks, **run):
        raise AssertionError("evaluated")

    monkeypatch.setattr(runner, "run_editor", never)
    assert cli.main(["--tasks", "mmke_entty"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == ("mmke-eval: error: UnknownTask: --tasks mmke_entty: no such task or group. Did you mean 'mmke_entity'? "
                    "`mmke-eval list` lists ours; lmms-eval's own are listed by `lmms-eval --tasks list`")
    taskfiles.check_task_names("mmke_entity,mme,mmke_mini_*")  # lmms-eval's own tasks and wildcards are accepted
    with pytest.raises(taskfiles.UnknownTask, match="--tasks mmke_nothing_\\*: no such task"):
        taskfiles.check_task_names("mmke_nothing_*")


@pytest.mark.parametrize("task, variable", [("mmke_entity", "MMKE_DATA"), ("vlkeb_eval", "VLKEB_DATA"),
                                            ("mmedit_vqa", "MMEDIT_DATA"), ("mike_csr", "MIKE_DATA")])
def test_a_benchmark_without_data_says_how_to_give_it_before_anything_loads(task, variable, tmp_path, monkeypatch, capsys):
    """Offline, with no --data and nothing in the Hugging Face cache: our message is the last line
    (it was the Hub's OfflineModeIsEnabled, after the model had loaded)."""
    from huggingface_hub import constants

    from mmke_eval import cli, runner

    def never(config, tasks, **run):
        raise AssertionError("evaluated")

    monkeypatch.setattr(runner, "run_editor", never)
    monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert cli.main(["--tasks", task]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("mmke-eval: error: DataError:"), last
    assert "pass `mmke-eval --data PATH`" in last and f"{variable}=PATH" in last and "where PATH holds" in last
