"""mmke-eval report --plot: radar per editor, bars per knowledge type, metrics over the sequential gap."""

from __future__ import annotations

from mmke_eval import cli
from mmke_eval.report.plots import figures
from mmke_eval.report.runs import load_runs
from mmke_eval.testing.results import write_run

M = ("t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port")


def scores(level: float) -> dict:
    return {task: {c: {m: min(1.0, level + 0.1 * c + 0.05 * i) for i, m in enumerate(M)} for c in range(2)}
            for task in ("mmke_mini_entity", "mmke_mini_user")}


def test_figures_have_one_panel_per_editor_or_metric(tmp_path):
    for i, editor in enumerate(("none", "ft_llm", "ike")):
        write_run(tmp_path / editor, scores(0.2 * i), editor=editor, stamp=f"20260101_00000{i}")
    for gap in (0, 10, 20):  # one editor over three gaps: the gap figure
        write_run(tmp_path / f"gap{gap}", scores(0.6 - gap / 100), editor="ft_llm",
                  options=f"sequential=true,sequential_gap={gap}", stamp=f"20260102_0000{gap:02d}")
    runs, _ = load_runs([tmp_path])
    made = dict(figures(runs))
    assert sorted(made) == ["bars_mmke_world_model", "gap_mmke_mini_entity_world_model", "gap_mmke_mini_user_world_model",
                            "gap_mmke_mini_world_model", "radar_mmke_world_model"]
    radar = made["radar_mmke_world_model"]
    assert len(radar.axes) == 6 and all(ax.name == "polar" for ax in radar.axes)  # 3 editors + 3 sequential variants
    assert [ax.get_title() for ax in radar.axes[:3]] == ["none", "ft_llm\n[sequential=false, sequential_gap=0]", "ike"]
    # a polygon per knowledge type (the group mean is left out: its tasks are shown)
    assert len(radar.axes[1].lines) == 2
    bars = made["bars_mmke_world_model"]
    assert [ax.get_title() for ax in bars.axes] == ["T-Rel", "I-Rel", "I-Gen", "T-Loc", "I-Loc", "Port"]
    assert len(bars.axes[0].patches) == 6 * 2  # editor variants x knowledge types
    gap = made["gap_mmke_mini_entity_world_model"]
    assert len(gap.axes) == 6
    (line,) = gap.axes[0].lines  # one editor: one line, its points at the gaps
    assert list(line.get_xdata()) == [0, 10, 20]
    assert [round(y, 6) for y in line.get_ydata()] == [65.0, 55.0, 45.0]  # T-Rel: mean of (0.6, 0.7), (0.5, 0.6), (0.4, 0.5)


def test_plot_files_are_written_by_the_cli(tmp_path, capsys):
    for i, editor in enumerate(("ft_llm", "ike")):
        write_run(tmp_path / "out" / editor, {"mmke_mini_entity": scores(0.3 * i)["mmke_mini_entity"]}, editor=editor,
                  group=None, stamp=f"20260101_00000{i}")
    assert cli.main(["report", str(tmp_path / "out"), "--plot", str(tmp_path / "figs")]) == 0
    files = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert files == ["bars_mmke_world_model.pdf", "bars_mmke_world_model.png", "radar_mmke_world_model.pdf", "radar_mmke_world_model.png"]
    for name in files:
        head = (tmp_path / "figs" / name).read_bytes()[:8]
        assert head.startswith(b"%PDF") if name.endswith(".pdf") else head == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "figs" / "radar_mmke_world_model.png").stat().st_size > 20_000
    assert "4 figure files" in capsys.readouterr().err
