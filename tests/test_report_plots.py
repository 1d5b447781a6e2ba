"""mmke-eval report --plot: radar per editor, bars per knowledge type, metrics over the sequential gap."""

from __future__ import annotations

import math

import pytest

from mmke_eval import cli, families, registry
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
    assert [ax.get_title() for ax in radar.axes[:3]] == ["No edit", "FT-LLM\n(one edit at a time)", "IKE"]
    assert [ax.get_title() for ax in radar.axes[3:]] == [f"FT-LLM\n(sequential, gap {gap})" for gap in (0, 10, 20)]
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


def figure_texts(figure) -> list[str]:
    """Every text a reader sees: titles, axis and tick labels, legend entries and title, annotations."""
    texts = [figure._suptitle.get_text()] if figure._suptitle else []
    texts += [t.get_text() for t in figure.texts]
    for legend in figure.legends:
        texts += [legend.get_title().get_text()] + [t.get_text() for t in legend.get_texts()]
    for ax in figure.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
        texts += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
    return [t for t in texts if t]


@pytest.fixture
def renamed(monkeypatch):
    """Other declared names for ft_llm and mmke_mini: the figures must follow the declarations."""
    declared = registry.load_registry()
    monkeypatch.setitem(declared["editors"]["ft_llm"], "title", "Fine-Tune (LLM)")
    monkeypatch.setitem(families.declarations()["mmke"], "releases", {"mmke_mini": "Mini Bench X"})
    families.get.cache_clear()
    yield
    families.get.cache_clear()


def test_figure_names_are_the_declared_display_names(tmp_path, renamed):
    write_run(tmp_path / "none", scores(0.0), editor="none", stamp="20260101_000000")
    write_run(tmp_path / "ft", scores(0.4), editor="ft_llm", stamp="20260101_000001")
    write_run(tmp_path / "seq", scores(0.3), editor="ft_llm", options="sequential=true,sequential_gap=1", stamp="20260101_000002")
    runs, _ = load_runs([tmp_path])
    made = dict(figures(runs))
    bars, radar = made["bars_mmke_world_model"], made["radar_mmke_world_model"]
    subset = families.get("mmke").subset_title
    entity, user = subset({"knowledge_type": "entity_level"}), subset({"knowledge_type": "user_specific"})
    assert (entity, user) == ("Visual entity", "User-specific")  # as registry.yaml declares them
    legend = [t.get_text() for t in bars.legends[0].get_texts()]
    assert legend == ["No edit", "Fine-Tune (LLM) (one edit at a time)", "Fine-Tune (LLM) (sequential, gap 1)"]
    assert bars._suptitle.get_text() == radar._suptitle.get_text() == "Mini Bench X, world_model"
    assert [t.get_text() for t in bars.axes[0].get_xticklabels()] == [f"{entity}\n(n=2)", f"{user}\n(n=2)"]
    assert bars.axes[0].get_ylabel() == "Score (%)" and bars.axes[0].get_title() == "T-Rel"
    assert [t.get_text() for t in radar.legends[0].get_texts()] == [f"{entity} (n=2)", f"{user} (n=2)"]
    assert radar.legends[0].get_title().get_text() == f"Cases per task: {entity} 2; {user} 2"
    for figure in (bars, radar):  # no raw identifier is left for a reader
        for text in figure_texts(figure):
            for raw in ("ft_llm", "entity_level", "user_specific", "mmke_mini", "MMKE-Bench", "sequential=", "none"):
                assert raw not in text, (raw, text)


def test_a_missing_number_is_drawn_as_missing_and_a_zero_as_zero(tmp_path):
    # entity: Port 0 on every case; user: no Port at all (the task does not compute it: the table's "-")
    data = {"mmke_mini_entity": {c: {**{m: 0.5 for m in M}, "port": 0.0} for c in range(2)},
            "mmke_mini_user": {c: {m: 0.5 for m in M if m != "port"} for c in range(2)}}
    write_run(tmp_path / "ft", data, editor="ft_llm", group=None, stamp="20260101_000001")
    runs, _ = load_runs([tmp_path])
    bars = dict(figures(runs))["bars_mmke_world_model"]
    port = bars.axes[5]
    assert port.get_title() == "Port"
    hatched = [p for p in port.patches if p.get_hatch()]
    flat = [p for p in port.patches if not p.get_hatch()]
    assert len(hatched) == 1 and round(hatched[0].get_x() + hatched[0].get_width() / 2) == 1  # the user slot
    assert [t.get_text() for t in port.texts] == ["n/a"]
    (zero,) = flat  # the entity slot: a bar of height 0 drawn as a line in the editor's colour
    assert zero.get_height() == 0 and zero.get_linewidth() > 0 and round(zero.get_x() + zero.get_width() / 2) == 0
    assert "n/a: not computed" in [t.get_text() for t in bars.legends[0].get_texts()]
    t_rel = bars.axes[0]  # a panel with every number present: nothing marked missing
    assert not any(p.get_hatch() for p in t_rel.patches) and not t_rel.texts
    radar = dict(figures(runs))["radar_mmke_world_model"]
    user_line = radar.axes[0].lines[1]
    assert math.isnan(list(user_line.get_ydata())[5])  # the polygon breaks at Port, not drawn through 0
    assert radar.legends[0].get_texts()[1].get_text() == "User-specific (n=2); Port: n/a"


def test_radar_tick_labels_sit_between_the_spokes(tmp_path):
    write_run(tmp_path / "ft", scores(0.9), editor="ft_llm", stamp="20260101_000001")
    runs, _ = load_runs([tmp_path])
    ax = dict(figures(runs))["radar_mmke_world_model"].axes[0]
    spokes = [math.degrees(a) for a in ax.get_xticks()]
    label_angle = ax.get_rlabel_position()
    assert min(abs(label_angle - s) for s in spokes) >= 360 / len(spokes) / 2 - 1e-9  # halfway between two spokes
