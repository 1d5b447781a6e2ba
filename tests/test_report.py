"""mmke-eval report: paper-style tables from saved results folders (built here from per-case scores).

The golden texts below were checked by hand against the scores in SCORES: e.g. ft_llm on
mmke_mini_entity has T-Rel (1 + 0.5) / 2 = 75.0 and Avg (75 + 100 + 75 + 95 + 70 + 25) / 6 = 73.3;
the group mmke_mini is the mean of its two tasks; ft_llm and ike tie on the user task's Avg (62.5).
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from mmke_eval import cli
from mmke_eval.report.runs import ReportError, load_runs
from mmke_eval.report.tables import build_tables, render
from mmke_eval.testing.results import write_run

M = ("t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port")


def case(*values):
    return dict(zip(M, values))


SCORES = {
    "none": {"mmke_mini_entity": {0: case(0, 0, 0, 1, 1, 0), 1: case(0, 0, 0, 1, 1, 0)},
             "mmke_mini_user": {0: case(0, 0, 0, 1, 1, 0), 1: case(0, 0, 0, 1, 1, 0)}},
    "ft_llm": {"mmke_mini_entity": {0: case(1, 1, 0.5, 0.9, 0.8, 0), 1: case(0.5, 1, 1, 1, 0.6, 0.5)},
               "mmke_mini_user": {0: case(1, 0.5, 0.5, 0.8, 0.7, 0), 1: case(1, 1, 0.5, 1, 0.5, 0)}},
    "ike": {"mmke_mini_entity": {0: case(0.5, 1, 1, 0.7, 0.3, 1), 1: case(0.5, 0.5, 1, 0.9, 0.3, 0)},
            "mmke_mini_user": {0: case(1, 1, 1, 0.6, 0.2, 0.5), 1: case(0, 1, 0.5, 0.8, 0.4, 0.5)}},
    "ft_llm_gap10": {"mmke_mini_entity": {0: case(0.5, 0.5, 0.5, 0.6, 0.4, 0), 1: case(0.5, 1, 0.5, 0.8, 0.4, 0)},
                     "mmke_mini_user": {0: case(1, 0.5, 0, 0.7, 0.5, 0), 1: case(0.5, 0.5, 0.5, 0.9, 0.3, 0)}},
}


@pytest.fixture
def folders(tmp_path):
    """A: an mmke-eval output folder with three editors; B: ft_llm again, sequentially with a gap of 10."""
    a, b = tmp_path / "A", tmp_path / "B"
    for i, editor in enumerate(("none", "ft_llm", "ike")):
        write_run(a / editor, SCORES[editor], editor=editor, stamp=f"20260101_12000{i}")
    write_run(b / "ft_llm", SCORES["ft_llm_gap10"], editor="ft_llm", options="sequential=true,sequential_gap=10",
              stamp="20260102_120000")
    return a, b


GOLDEN_MD = '''\
Best value per column in bold, among the edited rows of the same model and task (the baseline `none` is not ranked); Avg: the unweighted mean of the row's columns.

### mmke_mini_entity (mmke_mini, entity_level)

- Model: world_model (llava_hf; dtype=float32, pretrained=/models/world_model)
- Data: mmke_mini/entity_level/eval: data files cc1b186956fa, all 40 cases
- **Mixed protocols**: sequential=false, sequential_gap=0 (none, ft_llm [sequential=false, sequential_gap=0], ike); sequential=true, sequential_gap=10 (ft_llm [sequential=true, sequential_gap=10])
- loc_span=auto is each editor's reference: sequence (none, ft_llm [sequential=false, sequential_gap=0], ft_llm [sequential=true, sequential_gap=10]); answer (ike)

| Editor | T-Rel | I-Rel | I-Gen | T-Loc | I-Loc | Port | Avg |
|---|---:|---:|---:|---:|---:|---:|---:|
| none | 0.0 | 0.0 | 0.0 | 100.0 | 100.0 | 0.0 | 33.3 |
| ft_llm [sequential=false, sequential_gap=0] | **75.0** | **100.0** | 75.0 | **95.0** | **70.0** | 25.0 | **73.3** |
| ike | 50.0 | 75.0 | **100.0** | 80.0 | 30.0 | **50.0** | 64.2 |
| ft_llm [sequential=true, sequential_gap=10] | 50.0 | 75.0 | 50.0 | 70.0 | 40.0 | 0.0 | 47.5 |

### mmke_mini_user (mmke_mini, user_specific)

- Model: world_model (llava_hf; dtype=float32, pretrained=/models/world_model)
- Data: mmke_mini/user_specific/eval: data files eeef407cb9a7, all 40 cases
- **Mixed protocols**: sequential=false, sequential_gap=0 (none, ft_llm [sequential=false, sequential_gap=0], ike); sequential=true, sequential_gap=10 (ft_llm [sequential=true, sequential_gap=10])
- loc_span=auto is each editor's reference: sequence (none, ft_llm [sequential=false, sequential_gap=0], ft_llm [sequential=true, sequential_gap=10]); answer (ike)

| Editor | T-Rel | I-Rel | I-Gen | T-Loc | I-Loc | Port | Avg |
|---|---:|---:|---:|---:|---:|---:|---:|
| none | 0.0 | 0.0 | 0.0 | 100.0 | 100.0 | 0.0 | 33.3 |
| ft_llm [sequential=false, sequential_gap=0] | **100.0** | 75.0 | 50.0 | **90.0** | **60.0** | 0.0 | **62.5** |
| ike | 50.0 | **100.0** | **75.0** | 70.0 | 30.0 | **50.0** | **62.5** |
| ft_llm [sequential=true, sequential_gap=10] | 75.0 | 50.0 | 25.0 | 80.0 | 40.0 | 0.0 | 45.0 |

### mmke_mini (MMKE-Bench mini (generated), mean of its tasks)

- Model: world_model (llava_hf; dtype=float32, pretrained=/models/world_model)
- Data: mean of mmke_mini_entity, mmke_mini_user
- **Mixed protocols**: sequential=false, sequential_gap=0 (none, ft_llm [sequential=false, sequential_gap=0], ike); sequential=true, sequential_gap=10 (ft_llm [sequential=true, sequential_gap=10])
- loc_span=auto is each editor's reference: sequence (none, ft_llm [sequential=false, sequential_gap=0], ft_llm [sequential=true, sequential_gap=10]); answer (ike)

| Editor | T-Rel | I-Rel | I-Gen | T-Loc | I-Loc | Port | Avg |
|---|---:|---:|---:|---:|---:|---:|---:|
| none | 0.0 | 0.0 | 0.0 | 100.0 | 100.0 | 0.0 | 33.3 |
| ft_llm [sequential=false, sequential_gap=0] | **87.5** | **87.5** | 62.5 | **92.5** | **65.0** | 12.5 | **67.9** |
| ike | 50.0 | **87.5** | **87.5** | 75.0 | 30.0 | **50.0** | 63.3 |
| ft_llm [sequential=true, sequential_gap=10] | 62.5 | 62.5 | 37.5 | 75.0 | 40.0 | 0.0 | 46.2 |
'''

GOLDEN_LATEX = r'''% Best value per column in bold, among the edited rows of the same model and task (the baseline none is not ranked); Avg: the unweighted mean of the row's columns.
% Needs \usepackage{booktabs}.

% Model: world_model (llava_hf; dtype=float32, pretrained=/models/world_model)
% Data: mmke_mini/entity_level/eval: data files cc1b186956fa, all 40 cases
% Mixed protocols: sequential=false, sequential_gap=0 (none, ft_llm [sequential=false, sequential_gap=0], ike); sequential=true, sequential_gap=10 (ft_llm [sequential=true, sequential_gap=10])
% loc_span=auto is each editor's reference: sequence (none, ft_llm [sequential=false, sequential_gap=0], ft_llm [sequential=true, sequential_gap=10]); answer (ike)
\begin{table}[ht]
\centering
\caption{mmke\_mini\_entity (mmke\_mini, entity\_level). Mixed protocols (see the comments above).}
\begin{tabular}{lrrrrrrr}
\toprule
Editor & T-Rel & I-Rel & I-Gen & T-Loc & I-Loc & Port & Avg \\
\midrule
none & 0.0 & 0.0 & 0.0 & 100.0 & 100.0 & 0.0 & 33.3 \\
ft\_llm [sequential=false, sequential\_gap=0] & \textbf{75.0} & \textbf{100.0} & 75.0 & \textbf{95.0} & \textbf{70.0} & 25.0 & \textbf{73.3} \\
ike & 50.0 & 75.0 & \textbf{100.0} & 80.0 & 30.0 & \textbf{50.0} & 64.2 \\
ft\_llm [sequential=true, sequential\_gap=10] & 50.0 & 75.0 & 50.0 & 70.0 & 40.0 & 0.0 & 47.5 \\
\bottomrule
\end{tabular}
\end{table}

% Model: world_model (llava_hf; dtype=float32, pretrained=/models/world_model)
% Data: mmke_mini/user_specific/eval: data files eeef407cb9a7, all 40 cases
% Mixed protocols: sequential=false, sequential_gap=0 (none, ft_llm [sequential=false, sequential_gap=0], ike); sequential=true, sequential_gap=10 (ft_llm [sequential=true, sequential_gap=10])
% loc_span=auto is each editor's reference: sequence (none, ft_llm [sequential=false, sequential_gap=0], ft_llm [sequential=true, sequential_gap=10]); answer (ike)
\begin{table}[ht]
\centering
\caption{mmke\_mini\_user (mmke\_mini, user\_specific). Mixed protocols (see the comments above).}
\begin{tabular}{lrrrrrrr}
\toprule
Editor & T-Rel & I-Rel & I-Gen & T-Loc & I-Loc & Port & Avg \\
\midrule
none & 0.0 & 0.0 & 0.0 & 100.0 & 100.0 & 0.0 & 33.3 \\
ft\_llm [sequential=false, sequential\_gap=0] & \textbf{100.0} & 75.0 & 50.0 & \textbf{90.0} & \textbf{60.0} & 0.0 & \textbf{62.5} \\
ike & 50.0 & \textbf{100.0} & \textbf{75.0} & 70.0 & 30.0 & \textbf{50.0} & \textbf{62.5} \\
ft\_llm [sequential=true, sequential\_gap=10] & 75.0 & 50.0 & 25.0 & 80.0 & 40.0 & 0.0 & 45.0 \\
\bottomrule
\end{tabular}
\end{table}

% Model: world_model (llava_hf; dtype=float32, pretrained=/models/world_model)
% Data: mean of mmke_mini_entity, mmke_mini_user
% Mixed protocols: sequential=false, sequential_gap=0 (none, ft_llm [sequential=false, sequential_gap=0], ike); sequential=true, sequential_gap=10 (ft_llm [sequential=true, sequential_gap=10])
% loc_span=auto is each editor's reference: sequence (none, ft_llm [sequential=false, sequential_gap=0], ft_llm [sequential=true, sequential_gap=10]); answer (ike)
\begin{table}[ht]
\centering
\caption{mmke\_mini (MMKE-Bench mini (generated), mean of its tasks). Mixed protocols (see the comments above).}
\begin{tabular}{lrrrrrrr}
\toprule
Editor & T-Rel & I-Rel & I-Gen & T-Loc & I-Loc & Port & Avg \\
\midrule
none & 0.0 & 0.0 & 0.0 & 100.0 & 100.0 & 0.0 & 33.3 \\
ft\_llm [sequential=false, sequential\_gap=0] & \textbf{87.5} & \textbf{87.5} & 62.5 & \textbf{92.5} & \textbf{65.0} & 12.5 & \textbf{67.9} \\
ike & 50.0 & \textbf{87.5} & \textbf{87.5} & 75.0 & 30.0 & \textbf{50.0} & 63.3 \\
ft\_llm [sequential=true, sequential\_gap=10] & 62.5 & 62.5 & 37.5 & 75.0 & 40.0 & 0.0 & 46.2 \\
\bottomrule
\end{tabular}
\end{table}
'''


def report(capsys, *args) -> str:
    assert cli.main(["report", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_markdown_from_two_results_folders(folders, capsys):
    assert report(capsys, *folders) == GOLDEN_MD


def test_latex_from_two_results_folders(folders, capsys):
    assert report(capsys, *folders, "--format", "latex") == GOLDEN_LATEX


def test_csv_has_every_number_unrounded_with_the_best_flag(folders, capsys):
    rows = list(csv.DictReader(io.StringIO(report(capsys, *folders, "--format", "csv"))))
    assert len(rows) == 3 * 4 * 7  # tables x editors x (six metrics + Avg)
    ike_gen = next(r for r in rows if r["task"] == "mmke_mini_entity" and r["editor"] == "ike" and r["metric"] == "i_gen")
    assert (ike_gen["value"], ike_gen["best"]) == ("100.0", "1")
    gap = next(r for r in rows if r["editor"].startswith("ft_llm [sequential=true") and r["metric"] == "avg" and r["task"] == "mmke_mini")
    assert (gap["value"], gap["best"], gap["protocol"]) == ("46.25", "", "sequential=true;sequential_gap=10")


def test_by_editor_and_by_model(folders):
    runs, _ = load_runs(list(folders))
    by_editor = build_tables(runs, "editor")
    assert [t.title for t in by_editor] == [
        "none on world_model (MMKE-Bench)", "ft_llm [sequential=false, sequential_gap=0] on world_model (MMKE-Bench)",
        "ike on world_model (MMKE-Bench)", "ft_llm [sequential=true, sequential_gap=10] on world_model (MMKE-Bench)"]
    assert [row.labels for row in by_editor[1].rows] == [["mmke_mini_entity"], ["mmke_mini_user"], ["mmke_mini"]]
    assert not any(row.best for t in by_editor for row in t.rows)  # one editor per table: nothing to rank
    (by_model,) = build_tables(runs, "model")
    assert by_model.label_titles == ["Task", "Editor"] and len(by_model.rows) == 12
    best = {(row.labels[0], key) for row in by_model.rows for key in row.best if row.labels[1] == "ike"}
    assert ("mmke_mini_entity", "i_gen") in best and ("mmke_mini_entity", "t_rel") not in best


def test_different_data_and_models_are_never_merged(tmp_path):
    write_run(tmp_path / "full" / "ft_llm", SCORES["ft_llm"], editor="ft_llm")
    # the same editor on the first 2 cases only (--cases 2): other data
    write_run(tmp_path / "two" / "ft_llm", SCORES["ike"], editor="ft_llm", first_n=2, stamp="20260103_000000")
    # another model
    write_run(tmp_path / "big" / "ft_llm", SCORES["ike"], editor="ft_llm", model_args="pretrained=/models/llava-1.5-7b-hf",
              stamp="20260104_000000")
    runs, _ = load_runs([tmp_path])
    tables = {t.title: t for t in build_tables(runs, "task")}
    assert len(tables) == 6  # entity, user and their mean, each on two data
    data_1 = tables["mmke_mini_entity [data 1] (mmke_mini, entity_level)"]
    data_2 = tables["mmke_mini_entity [data 2] (mmke_mini, entity_level)"]
    assert "Data: mmke_mini/entity_level/eval: data files cc1b186956fa, all 40 cases" in data_1.notes
    assert "Data: mmke_mini/entity_level/eval: data files cc1b186956fa, first 2 cases" in data_2.notes
    assert data_1.label_titles == ["Model", "Editor"]  # two models, each named
    assert [row.labels for row in data_1.rows] == [["world_model", "ft_llm"], ["llava-1.5-7b-hf", "ft_llm"]]
    assert data_1.notes[0].startswith("Models: world_model (llava_hf; dtype=float32, pretrained=/models/world_model); llava-1.5-7b-hf")
    assert not any(row.best for row in data_1.rows)  # one editor per model: nothing ranked across models
    assert [row.values["t_rel"] for row in data_2.rows] == [50.0]


def test_plain_lmms_eval_results_are_read_but_kept_apart_from_recorded_data(tmp_path):
    write_run(tmp_path / "ours" / "ike", SCORES["ike"], editor="ike")
    # `lmms-eval --model edited ...`: no mmke section, protocol only in model_args
    write_run(tmp_path / "native", SCORES["ft_llm"], editor="ft_llm", options="t_loc_k=5,editor.lr=0.001", recorded=False,
              stamp="20260105_000000")
    other = tmp_path / "mme" / "llava"
    other.mkdir(parents=True)
    (other / "20260106_000000_results.json").write_text(json.dumps({
        "results": {"mme": {"alias": "mme", "mme_perception_score,none": 1510.7, "mme_cognition_score,none": 348.2,
                            "mme_perception_score_stderr,none": "N/A"}},
        "config": {"model": "llava_hf", "model_args": "pretrained=llava-hf/llava-1.5-7b-hf,device=cuda"},
        "higher_is_better": {"mme": {"mme_perception_score": True, "mme_cognition_score": True}},
        "n-samples": {"mme": {"original": 2374, "effective": 2374}}, "versions": {"mme": "Yaml"}, "configs": {"mme": {}},
    }))
    # another model's run of mme that reports one more metric: every metric gets a column
    (tmp_path / "mme" / "qwen").mkdir()
    (tmp_path / "mme" / "qwen" / "20260107_000000_results.json").write_text(json.dumps({
        "results": {"mme": {"alias": "mme", "mme_perception_score,none": 1600.0, "mme_total,none": 2000.0}},
        "config": {"model": "qwen2_vl", "model_args": {"pretrained": "Qwen/Qwen2-VL-2B"}},  # a dict: the Python API
        "n-samples": {"mme": {"original": 2374, "effective": 2374}}, "versions": {"mme": "Yaml"}, "configs": {"mme": {}},
    }))
    runs, _ = load_runs([tmp_path])
    native = next(r for r in runs if not r.recorded and r.editor)
    assert native.editor == "ft_llm" and native.editor_overrides == {"lr": "0.001"} and native.protocol["t_loc_k"] == 5
    tables = {t.title: t for t in build_tables(runs, "task")}
    entity = tables["mmke_mini_entity [data 2] (mmke_mini, entity_level)"]
    assert [row.labels for row in entity.rows] == [["ft_llm"]]
    assert "Data: mmke_mini/entity_level/eval: data not recorded (plain lmms-eval run), 12 probe documents" in entity.notes
    mme = tables["mme (lmms-eval task)"]
    assert mme.label_titles == ["Model", "Editor"] and [row.labels for row in mme.rows] == [["llava-1.5-7b-hf", "-"], ["Qwen2-VL-2B", "-"]]
    assert [key for key, _ in mme.columns] == ["mme_perception_score,none", "mme_cognition_score,none", "mme_total,none"]
    assert mme.rows[0].values == {"mme_perception_score,none": 1510.7, "mme_cognition_score,none": 348.2}
    assert mme.notes[0] == ("Models: llava-1.5-7b-hf (llava_hf; pretrained=llava-hf/llava-1.5-7b-hf); "  # device is not the model
                            "Qwen2-VL-2B (qwen2_vl; pretrained=Qwen/Qwen2-VL-2B)")
    assert "| llava-1.5-7b-hf | - | 1511 | 348.2 | - |" in render([mme], "md")
    assert not any(row.best for row in mme.rows)  # different models are not ranked against each other


def test_a_run_saved_twice_counts_once_the_newer(tmp_path, capsys):
    write_run(tmp_path / "first" / "ike", SCORES["none"], editor="ike", stamp="20260101_000000")
    newer = write_run(tmp_path / "again" / "ike", SCORES["ike"], editor="ike", stamp="20260102_000000")
    out = report(capsys, tmp_path)
    assert "| ike | 50.0 | 75.0 | 100.0 | 80.0 | 30.0 | 50.0 | 64.2 |" in out and "| ike | 0.0" not in out
    _, notes = load_runs([tmp_path])
    assert any(str(newer) in note for note in notes)


def test_a_new_version_of_an_editor_is_another_row(tmp_path):
    write_run(tmp_path / "old" / "ft_llm", SCORES["ft_llm"], editor="ft_llm", stamp="20260101_000000")
    write_run(tmp_path / "new" / "ft_llm", SCORES["ike"], editor="ft_llm", stamp="20260102_000000", version="0.2.0")
    runs, notes = load_runs([tmp_path])
    assert not notes  # not a rerun of the same thing
    entity = build_tables(runs, "task")[0]
    assert [row.labels for row in entity.rows] == [["ft_llm [version.mmke-eval=0.1.0]"], ["ft_llm [version.mmke-eval=0.2.0]"]]
    assert ("Versions differ: mmke-eval=0.1.0 (ft_llm [version.mmke-eval=0.1.0]); "
            "mmke-eval=0.2.0 (ft_llm [version.mmke-eval=0.2.0])") in entity.notes


def test_bad_inputs_fail_naming_what(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "missing")]) == 1
    assert "missing: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 1
    assert "no lmms-eval results file" in capsys.readouterr().err
    broken = tmp_path / "broken" / "x_results.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    assert cli.main(["report", str(broken.parent)]) == 1
    assert "x_results.json: not a readable results file" in capsys.readouterr().err
    bad = write_run(tmp_path / "bad" / "ft_llm", SCORES["ft_llm"], editor="ft_llm", recorded=False)
    bad.write_text(bad.read_text().replace("editor=ft_llm", "editor=ft_llm,sequential_gap=lots"))
    assert cli.main(["report", str(bad)]) == 1
    assert "sequential_gap='lots'" in capsys.readouterr().err
    for option, value in (("--format", "html"), ("--by", "hop")):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["report", str(tmp_path), option, value])
        assert exit_info.value.code == 2 and f"invalid choice: '{value}'" in capsys.readouterr().err
    with pytest.raises(ReportError, match="--by 'hop'"):
        build_tables([], "hop")
