"""mmke-eval compare: what changed between two runs, per metric and per case."""

from __future__ import annotations

import pytest

from mmke_eval import cli
from mmke_eval.report.compare import case_scores, compare
from mmke_eval.report.runs import ReportError
from mmke_eval.testing.results import write_run

M = ("t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port")
BEFORE = {"mmke_mini_entity": {c: {m: 0.5 for m in M} for c in range(4)}}
# case 2 gains T-Rel and Port, case 3 loses I-Loc, the others stay
AFTER = {"mmke_mini_entity": {c: {m: 1.0 if (c, m) in ((2, "t_rel"), (2, "port")) else 0.25 if (c, m) == (3, "i_loc") else 0.5
                                  for m in M} for c in range(4)}}


def test_compare_lists_the_changed_cases_and_the_setup_change(tmp_path, capsys):
    write_run(tmp_path / "A" / "ft_llm", BEFORE, editor="ft_llm", group=None)
    write_run(tmp_path / "B" / "ft_llm", AFTER, editor="ft_llm", group=None, options="editor.lr=0.001", stamp="20260102_000000")
    assert cli.main(["compare", str(tmp_path / "A"), str(tmp_path / "B")]) == 0
    out = capsys.readouterr().out
    assert "- editor option lr: (none) -> 0.001" in out
    assert "- beyond noise: not tested, 4 case(s) in both runs; a paired test needs 5 or more" in out
    assert "Beyond noise |" not in out
    assert "| T-Rel | 50.0 | 62.5 | +12.5 | 4 | 1 | 1 | 0 |" in out
    assert "| I-Rel | 50.0 | 50.0 | +0.0 | 4 | 0 | 0 | 0 |" in out
    assert "| I-Loc | 50.0 | 43.8 | -6.2 | 4 | 1 | 0 | 1 |" in out
    moved = out.split("### Cases that moved most")[1]
    assert "(top 2 of 2 changed; B - A per metric)" in moved
    rows = [line for line in moved.splitlines() if line.startswith("| mmke_mini_entity |")]
    assert rows == ["| mmke_mini_entity | mmke_mini_entity/2 | +50.0 |  |  |  |  | +50.0 | 100.0 |",
                    "| mmke_mini_entity | mmke_mini_entity/3 |  |  |  |  | -25.0 |  | 25.0 |"]


def test_identical_runs_show_no_moved_case(tmp_path):
    write_run(tmp_path / "A" / "ike", BEFORE, editor="ike", group=None)
    write_run(tmp_path / "B" / "ike", BEFORE, editor="ike", group=None, stamp="20260102_000000")
    out = compare(tmp_path / "A", tmp_path / "B")
    assert "- same model, editor, protocol and data" in out and "moved most" not in out


def test_cases_are_not_matched_across_different_data(tmp_path):
    write_run(tmp_path / "A" / "ft_llm", BEFORE, editor="ft_llm", group=None)
    write_run(tmp_path / "B" / "ft_llm", AFTER, editor="ft_llm", group=None, data_files={"mmke_mini_entity": "other"},
              stamp="20260102_000000")
    out = compare(tmp_path / "A", tmp_path / "B")
    assert "- data of mmke_mini_entity: " in out
    assert "per case: left out, the data files differ" in out and "moved most" not in out


def test_several_editors_are_paired_by_name(tmp_path):
    for side in ("A", "B"):
        for editor in ("none", "ft_llm"):
            write_run(tmp_path / side / editor, AFTER if (side, editor) == ("B", "ft_llm") else BEFORE, editor=editor, group=None)
    write_run(tmp_path / "A" / "ike", BEFORE, editor="ike", group=None)
    out = compare(tmp_path / "A", tmp_path / "B")
    assert "- only in A: ike" in out and "## none" in out and "## ft_llm" in out
    assert out.count("moved most") == 1  # only ft_llm changed
    # another ft_llm configuration in B: which one to compare is the user's call
    write_run(tmp_path / "B" / "ft_llm_lr", BEFORE, editor="ft_llm", group=None, options="editor.lr=0.1", stamp="20260109_000000")
    with pytest.raises(ReportError, match="B holds 2 runs of ft_llm"):
        compare(tmp_path / "A", tmp_path / "B")


def test_missing_samples_are_said(tmp_path):
    write_run(tmp_path / "A" / "ft_llm", BEFORE, editor="ft_llm", group=None, samples=False)
    write_run(tmp_path / "B" / "ft_llm", AFTER, editor="ft_llm", group=None, stamp="20260102_000000")
    out = compare(tmp_path / "A", tmp_path / "B")
    assert "per case: no samples file in A" in out and "| T-Rel | 50.0 | 62.5 | +12.5 |" in out


def test_case_scores_average_a_cases_documents_and_skip_nan(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"t_rel": {"case": "c1", "score": 1.0}}\n{"t_rel": {"case": "c1", "score": 0.0}}\n'
                    '{"t_rel": {"case": "c1", "score": NaN}, "doc_id": 3}\n{"port": {"case": "c2", "score": 0.5}}\n')
    assert case_scores(path) == {"c1": {"t_rel": 50.0}, "c2": {"port": 50.0}}
    path.write_text("{broken\n")
    with pytest.raises(ReportError, match="line 1: not JSON"):
        case_scores(path)
