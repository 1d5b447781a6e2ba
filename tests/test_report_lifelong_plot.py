"""mmke-eval report --plot on lifelong results: retention curves, one line per editor, per task.

The results files are hand-made in the format the lifelong schedule writes
(``results["mmke"]["lifelong"][task] = {edits, checkpoints, rows}``, values in percent).
"""

from __future__ import annotations

import json
import math

import pytest

from mmke_eval import cli
from mmke_eval.report.plots import figures
from mmke_eval.report.runs import ReportError, load_runs
from mmke_eval.testing.results import write_run

M = ("t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port")
CHECKPOINTS = [1, 10, 20]  # lifelong=20: LiveEdit's 1 and 10, then T


def stream(level: float, immediate: float | None = 90.0, **missing) -> dict:
    """A stream of 20 edits whose T-Rel falls from ``level`` by 10 points per checkpoint; every
    other metric is T-Rel + 2 per column; ``missing``: metric -> checkpoint left null."""
    rows = []
    for i, n in enumerate(CHECKPOINTS):
        rows.append({"edits": n, "score": "retention",
                     **{m: None if missing.get(m) == n else level - 10 * i + 2 * j for j, m in enumerate(M)}})
    if immediate is not None:
        rows.append({"edits": 20, "score": "immediate", **{m: immediate - j for j, m in enumerate(M)}})
    return {"edits": 20, "checkpoints": CHECKPOINTS, "rows": rows}


def scores() -> dict:
    return {"mmke_mini_entity": {c: {m: 0.5 for m in M} for c in range(2)}}


def write_lifelong(folder, editor: str, section: dict, stamp: str):
    return write_run(folder / editor, scores(), editor=editor, group=None, stamp=stamp, lifelong={"mmke_mini_entity": section})


def test_retention_curves_one_line_per_editor_at_the_checkpoints(tmp_path):
    write_lifelong(tmp_path, "none", stream(60.0, immediate=None), "20260101_000000")
    write_lifelong(tmp_path, "ft_llm", stream(80.0, t_rel=10), "20260101_000001")
    write_lifelong(tmp_path, "ike", stream(70.0, immediate=95.0), "20260101_000002")
    # a run of one edit at a time beside them: its figures as before, without the lifelong runs
    write_run(tmp_path / "align", scores(), editor="ft_alignment", group=None, stamp="20260101_000003")
    runs, _ = load_runs([tmp_path])
    made = dict(figures(runs))
    assert sorted(made) == ["bars_mmke_world_model", "radar_mmke_world_model", "retention_mmke_mini_entity_world_model"]
    assert [ax.get_title() for ax in made["radar_mmke_world_model"].axes] == ["FT-Alignment"]
    assert len(made["bars_mmke_world_model"].axes[0].patches) == 1

    figure = made["retention_mmke_mini_entity_world_model"]
    assert [ax.get_title() for ax in figure.axes] == ["T-Rel", "I-Rel", "I-Gen", "T-Loc", "I-Loc", "Port"]
    t_rel, i_rel = figure.axes[0], figure.axes[1]
    assert t_rel.get_xscale() == "log" and [t.get_text() for t in t_rel.get_xticklabels()] == ["1", "10", "20"]
    assert [line.get_label() for line in t_rel.lines] == ["No edit", "FT-LLM", "IKE"]
    for line in t_rel.lines + i_rel.lines:
        assert list(line.get_xdata()) == CHECKPOINTS
    none, ft, ike = t_rel.lines
    assert list(none.get_ydata()) == [60.0, 50.0, 40.0]
    assert list(ike.get_ydata()) == [70.0, 60.0, 50.0]
    # FT-LLM's T-Rel after 10 edits is null: the line breaks there and the slot says n/a
    ft_y = list(ft.get_ydata())
    assert ft_y[0] == 80.0 and math.isnan(ft_y[1]) and ft_y[2] == 60.0
    assert [(t.get_text(), t.get_position()[0]) for t in t_rel.texts] == [("n/a", 10)]
    assert [list(line.get_ydata()) for line in i_rel.lines] == [[62.0, 52.0, 42.0], [82.0, 72.0, 62.0], [72.0, 62.0, 52.0]]
    # immediate: a hollow marker at T per editor that has one (No edit's stream has none)
    offsets = [[tuple(p) for p in c.get_offsets()] for c in t_rel.collections]
    assert offsets == [[(20.0, 90.0)], [(20.0, 95.0)]]
    assert [[tuple(p) for p in c.get_offsets()] for c in i_rel.collections] == [[(20.0, 89.0)], [(20.0, 94.0)]]
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend[:3] == ["No edit", "FT-LLM", "IKE"] and legend[3].startswith("hollow: immediate")
    assert "T): 20" in figure.legends[0].get_title().get_text().replace("\n", " ")


def test_the_table_shows_a_stream_after_all_its_edits_and_the_cli_writes_the_curves(tmp_path, capsys):
    write_lifelong(tmp_path / "out", "ft_llm", stream(80.0), "20260101_000001")
    assert cli.main(["report", str(tmp_path / "out"), "--plot", str(tmp_path / "figs")]) == 0
    files = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert files == ["retention_mmke_mini_entity_world_model.pdf", "retention_mmke_mini_entity_world_model.png"]
    out = capsys.readouterr().out
    # T-Rel after all 20 edits is 60 (not the 50 the task's lmms-eval number says): the retention at T
    row = next(line for line in out.splitlines() if line.startswith("| ft_llm"))
    assert [cell.strip() for cell in row.strip("|").split("|")][1:7] == ["60.0", "62.0", "64.0", "66.0", "68.0", "70.0"]


def broken(section: dict, **change) -> dict:
    return {**section, **change}


MALFORMED = {
    "not a mapping": ([1, 2], "results['mmke']['lifelong']['mmke_mini_entity'] is list"),
    "edits": (broken(stream(80.0), edits=0), "['edits'] is 0"),
    "checkpoints end before T": (broken(stream(80.0), checkpoints=[1, 10]), "['checkpoints'] is [1, 10]"),
    "unknown score": (broken(stream(80.0), rows=[{"edits": 1, "score": "final", "t_rel": 1.0}]), "['rows'][0]['score'] is 'final'"),
    "a checkpoint without its row": (broken(stream(80.0), rows=stream(80.0)["rows"][1:]), "no retention row at edits=1"),
    "a value that is not a percentage": (
        broken(stream(80.0), rows=[{**stream(80.0)["rows"][0], "t_rel": "high"}] + stream(80.0)["rows"][1:]),
        "['rows'][0]['t_rel'] is 'high'"),
    "no metric of the family": (
        broken(stream(80.0), rows=[{"edits": n, "score": "retention", "t_rel,none": 5.0} for n in CHECKPOINTS]),
        "no row has a metric of the mmke family"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_lifelong_section_is_an_error_naming_the_file_and_the_key(tmp_path, case):
    section, expected = MALFORMED[case]
    path = write_lifelong(tmp_path, "ft_llm", section, "20260101_000001")
    with pytest.raises(ReportError) as error:
        load_runs([tmp_path])
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message, message
    assert "docs/reports.md" in message or "family" in message


def test_a_lifelong_section_for_a_task_the_file_does_not_have_is_refused(tmp_path):
    path = write_run(tmp_path / "ft", scores(), editor="ft_llm", group=None, lifelong={"mmke_mini_user": stream(80.0)})
    with pytest.raises(ReportError, match="mmke_mini_user.* is not a task of this results file") as error:
        load_runs([tmp_path])
    assert str(error.value).startswith(str(path))
    json.loads(path.read_text())  # the file itself is valid JSON: the section is what is wrong
