"""Several processes (mmke_eval/parallel.py): whole edit cases per process, each edited once, the
one-process numbers, restore bit-identical; sequential editing refused."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmke_eval import parallel
from mmke_eval.engine.run_report import merge_protocols

BIN = Path(sys.executable).parent


def case_docs(sizes: list[int]) -> list[dict]:
    return [{"case_id": f"c{c}", "probe_id": f"p{k}", "probe": "t_rel"} for c, n in enumerate(sizes) for k in range(n)]


def shards(docs: list[dict], world: int) -> list[list[dict]]:
    """What lmms-eval gives each rank: document i to rank i % world (utils.create_iterator)."""
    return [docs[rank::world] for rank in range(world)]


@pytest.mark.parametrize("world", [2, 3, 4, 8])
def test_every_rank_gets_whole_cases_in_their_order_and_equal_shares(world):
    docs = case_docs([3, 5, 2, 4, 4, 1, 6])
    ordered = parallel.order_for_ranks(docs, world)
    parts = shards(ordered, world)
    assert len({len(part) for part in parts}) == 1  # equal shares: lmms-eval adds no padding of its own
    owner: dict[str, int] = {}
    for rank, part in enumerate(parts):
        real = [d for d in part if not parallel.is_padding(d)]
        for doc in real:
            assert owner.setdefault(doc["case_id"], rank) == rank  # a case never spans two ranks
        assert real == sorted(real, key=docs.index)  # in their original order
        for doc in part:
            if parallel.is_padding(doc):
                assert doc["case_id"].startswith(f"padding/rank{rank}/")
    assert sorted((d for d in ordered if not parallel.is_padding(d)), key=docs.index) == docs  # each probe once
    assert len(owner) == 7


def test_one_process_keeps_the_documents_and_cases_are_balanced_by_probes():
    docs = case_docs([3, 5, 2, 4])
    assert parallel.order_for_ranks(docs, 1) is docs
    parts = shards(parallel.order_for_ranks(docs, 2), 2)
    loads = [sum(not parallel.is_padding(d) for d in part) for part in parts]
    assert sorted(loads) == [7, 7]  # {5, 2} and {4, 3}
    assert parallel.order_for_ranks(case_docs([2] * 4), 2)[:4] == [
        {"case_id": "c0", "probe_id": "p0", "probe": "t_rel"}, {"case_id": "c1", "probe_id": "p0", "probe": "t_rel"},
        {"case_id": "c0", "probe_id": "p1", "probe": "t_rel"}, {"case_id": "c1", "probe_id": "p1", "probe": "t_rel"}]


def test_user_number_groups_stay_on_one_rank_as_one_process_forms_them():
    docs = case_docs([2, 2, 2, 2, 2])
    parts = shards(parallel.order_for_ranks(docs, 2, block=2), 2)
    cases = [list(dict.fromkeys(d["case_id"] for d in part if not parallel.is_padding(d))) for part in parts]
    assert cases == [["c0", "c1", "c4"], ["c2", "c3"]]  # groups (c0 c1) (c2 c3) (c4), as user_number=2 makes them


def test_backend_placement_in_several_processes(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    gpu = {"pretrained": "x", "device": "cuda", "device_map": "cuda"}
    parallel.prepare_backend(gpu, cuda_available=True)
    assert gpu == {"pretrained": "x", "device": "cuda:3", "device_map": "cuda:3"}  # one model per GPU
    assert "ACCELERATE_USE_CPU" not in os.environ
    parallel.prepare_backend({"device": "cpu", "device_map": "cpu"}, cuda_available=True)
    assert os.environ["ACCELERATE_USE_CPU"] == "true"  # accelerate counts the processes (gloo)
    with pytest.raises(ValueError, match="device_map=auto cannot be used in several processes"):
        parallel.prepare_backend({"device_map": "auto"}, cuda_available=True)


def test_accelerate_launch_cpu_running_one_process_is_said(monkeypatch):
    for name in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # accelerate launch --cpu --num_processes 2
    assert "started a single process" in parallel.accelerate_cpu_warning()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parallel.accelerate_cpu_warning() is None


def test_padding_documents_count_in_no_column():
    import importlib

    hooks = importlib.import_module("mmke_tasks.hooks")
    doc = {"case_id": "padding/rank1/0", "family": "mmke", "probe": "t_rel", "answer": "Rome", "padding": True}
    assert hooks.process_results(doc, ["Rome"]) == {}
    assert hooks.process_results({**doc, "padding": False}, ["Rome"])["t_rel_em"]["score"] == 1.0


def test_a_process_answers_its_padding_unedited_and_refuses_a_case_split_across_processes(monkeypatch):
    from test_wrapper import FakeEditor, make_lmm, make_requests, probe_docs

    editor = FakeEditor()
    lm = make_lmm(editor)
    lm._rank, lm._world_size = 1, 2
    docs = probe_docs("c1", "Rome")
    padding = [{**docs[0], "case_id": "padding/rank1/0", "padding": True}]
    lm.task_dict["t"] = {"eval": docs + padding}
    outputs = [json.loads(o) for o in lm.generate_until(make_requests({"t": docs + padding}))]
    assert editor.log == ["apply c1", "restore"]  # the padding document caused no edit
    assert outputs[-1]["score"] is None and outputs[-1]["unscored"].startswith("padding")
    assert lm.describe()["data_parallel"] == {"rank": 1, "edited_cases": {"t": ["c1"]}, "resumed_cases": {"t": 0},
                                              "padding_doc_ids": {"t": [3]}}
    both = docs + probe_docs("c2", "Oslo")
    lm.task_dict["t"] = {"eval": both}
    requests = make_requests({"t": both})[1::2]  # lmms-eval's i % 2 sharding of documents not ordered by case
    lm.config.raise_errors = True  # as under the mmke-eval CLI
    with pytest.raises(ValueError, match="only 1 of the 3 probes of case c1 reached process 1 of 2"):
        lm.generate_until(requests)
    # under lmms-eval's own CLI the process ends with exit code 1 (lmms-eval would log the error and exit 0)
    lm.config.raise_errors = False
    with pytest.raises(SystemExit) as ended:
        lm.generate_until(requests)
    assert ended.value.code.startswith("mmke-eval: error in process 1 of 2: ValueError: t: only 1 of the 3 probes")
    assert editor.log == ["apply c1", "restore"]


def test_merged_report_adds_up_every_process():
    ranks = [{"editor": {"editor": "ike"}, "resume": {"resumed_cases": {"t": 1}},
              "data_parallel": {"rank": 0, "edited_cases": {"t": ["a"]}, "resumed_cases": {"t": 1}, "padding_doc_ids": {}}},
             {"editor": {"editor": "ike"}, "resume": {"resumed_cases": {"t": 0}},
              "data_parallel": {"rank": 1, "edited_cases": {"t": ["b", "c"]}, "resumed_cases": {"t": 0},
                                "padding_doc_ids": {"t": [7, 9]}}}]

    class Editor:
        def summarize(self, stats):
            return {"cases": len(stats)}

    merged = merge_protocols(ranks, [{"t": [{}, {}]}, {"t": [{}, {}]}], Editor())
    assert merged["editor_report"] == {"t": {"cases": 4}}
    assert merged["resume"]["resumed_cases"] == {"t": 1}
    assert [r["cases"] for r in merged["data_parallel"]["ranks"]] == [{"t": 1}, {"t": 2}]
    assert merged["data_parallel"]["padding_docs"] == {"t": 2}


def _run_worker(report: Path, args: list[str], processes: int, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / f"hf{processes}")}
    launcher = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    return subprocess.Popen([*launcher, "-m", "mmke_eval.testing.dp_worker", str(report), "--", *args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_give_the_one_process_results_with_each_case_edited_once(tmp_path):
    """The built-in world model, 3 cases (one process gets 2, the other 1 and padding)."""
    args = ["--tasks", "mmke_mini_entity", "--cases", "3", "--editor", "ft_llm"]
    started = time.time()
    runs = {n: _run_worker(tmp_path / f"report{n}", args + ["--output_path", str(tmp_path / f"out{n}")], n, tmp_path)
            for n in (1, 2)}  # side by side
    outputs = {n: run.communicate(timeout=600) for n, run in runs.items()}
    for n, run in runs.items():
        assert run.returncode == 0, outputs[n][1][-3000:]
    assert time.time() - started < 300
    table = {n: json.loads((tmp_path / f"out{n}" / "mmke_table.json").read_text()) for n in (1, 2)}
    assert table[1] == table[2]
    assert outputs[1][0] == outputs[2][0]  # the printed table, once (process 0 prints)
    results = {n: json.loads(next((tmp_path / f"out{n}" / "ft_llm").rglob("*_results.json")).read_text()) for n in (1, 2)}
    assert results[1]["results"] == results[2]["results"]  # every number, lmms-eval's standard errors included
    assert results[1]["n-samples"] == results[2]["n-samples"] == {"mmke_mini_entity": {"original": 27, "effective": 27}}
    samples = {n: next((tmp_path / f"out{n}" / "ft_llm").rglob("*_samples_mmke_mini_entity.jsonl")).read_text().splitlines()
               for n in (1, 2)}
    assert len(samples[1]) == len(samples[2]) == 27  # padding documents left out
    # each case edited on exactly one process; the model restored bit-identical on each
    reports = [json.loads((tmp_path / "report2" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(reports[0]["applied"] + reports[1]["applied"]) == [f"mmke_mini/entity_level/eval/{i}" for i in range(3)]
    assert len(reports[0]["applied"]) == 2 and len(reports[1]["applied"]) == 1
    assert all(r["restored"] is True for r in reports)
    assert json.loads((tmp_path / "report1" / "rank0.json").read_text())["restored"] is True
    parallel_run = results[2]["mmke"]["data_parallel"]
    assert [r["edited_cases"]["mmke_mini_entity"] for r in parallel_run["ranks"]] == [r["applied"] for r in reports]
    assert parallel_run["padding_docs"] == {"mmke_mini_entity": 9}
    assert "data_parallel" not in results[1]["mmke"]
    # one journal for both processes: a rerun in one process resumes every case
    assert len((tmp_path / "out2" / "ft_llm" / "cases.jsonl").read_text().splitlines()) == 3


def test_sequential_editing_in_two_processes_is_refused(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "mmke_eval.cli",
                             "--tasks", "mmke_mini_entity", "--cases", "2", "--editor", "ft_llm", "--model_args", "sequential=true"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "sequential=true cannot run in several processes (2 here)" in result.stderr


@pytest.mark.slow
def test_a_failure_in_one_process_fails_the_whole_lmms_eval_run(tiny_llava_dir, mmke_fixture_root, tmp_path):
    """lmms-eval's CLI logs errors and exits 0; in several processes the failed process would also
    leave the others waiting. Case 1 (process 1's only case) has an unreadable image."""
    import shutil

    from mmke_eval.resources import tasks_dir

    data = Path(shutil.copytree(mmke_fixture_root, tmp_path / "data"))
    record = json.loads((data / "data_json" / "entity_eval.json").read_text())[1]
    (data / "data_image" / record["image"]).write_bytes(b"not an image")
    model_args = f"base=llava_hf,editor=none,pretrained={tiny_llava_dir},device=cpu,device_map=cpu,dtype=float32"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf"), "MMKE_DATA": str(data)}
    result = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "lmms_eval",
                             "--model", "edited", "--model_args", model_args, "--tasks", "mmke_entity",
                             "--include_path", str(tasks_dir()), "--output_path", str(tmp_path / "out")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stderr[-3000:]
    assert "mmke-eval: error in process 1 of 2:" in result.stderr
    assert record["image"].split("/")[-1] in result.stderr
    assert not list((tmp_path / "out").rglob("*_results.json"))
