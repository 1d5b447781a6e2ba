"""report --ci and compare's paired test: case-level bootstrap intervals, checked against numpy by hand."""

from __future__ import annotations

import csv
import io
import json
import zlib

import numpy as np
import pytest

from mmke_eval import cli
from mmke_eval.report.bootstrap import Bootstrap, NoInterval, paired_difference, task_rng
from mmke_eval.report.compare import compare
from mmke_eval.report.runs import load_runs
from mmke_eval.report.tables import build_tables
from mmke_eval.testing.results import write_run

M = ("t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port")
T_REL = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.25]  # seven cases of mmke_mini_entity
ENTITY = {c: {m: (T_REL[c] if m == "t_rel" else 0.5) for m in M} for c in range(7)}


def entity_table(tmp_path, options: Bootstrap, scores=None, **kwargs):
    write_run(tmp_path / "ft", {"mmke_mini_entity": scores or ENTITY}, editor="ft_llm", group=None, **kwargs)
    runs, _ = load_runs([tmp_path])
    (table,) = build_tables(runs, "task", ci=options)
    return table


def test_interval_is_the_percentile_of_numpy_resampled_means(tmp_path):
    table = entity_table(tmp_path, Bootstrap(resamples=1000, seed=3))
    (row,) = table.rows
    # independently: the task's generator, 1000 draws of 7 case indices, the mean T-Rel of each draw
    rng = np.random.default_rng([3, zlib.crc32(b"mmke_mini_entity")])
    draws = rng.integers(0, 7, size=(1000, 7))
    means = 100 * np.array(T_REL)[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    assert row.ci["t_rel"] == pytest.approx((low, high), abs=1e-9)
    assert 0 < low < row.values["t_rel"] < high < 100  # 53.6 is the recorded T-Rel
    assert row.ci["i_rel"] == (50.0, 50.0)  # every case 0.5: a zero-width interval
    # Avg: the mean of the six columns, from the same draws (five of them constant 50)
    avg_low, avg_high = np.percentile((means + 5 * 50) / 6, [2.5, 97.5])
    assert row.ci["avg"] == pytest.approx((avg_low, avg_high), abs=1e-9)
    # the same seed gives the same interval; another seed (very likely) another
    assert entity_table(tmp_path / "again", Bootstrap(1000, 3)).rows[0].ci == row.ci
    assert entity_table(tmp_path / "other", Bootstrap(1000, 4)).rows[0].ci["t_rel"] != row.ci["t_rel"]


def test_two_values_give_the_whole_range(tmp_path):
    # cases half 0, half 1 (and a fifth, 0.5): a resample mean runs from near 0 to near 100
    scores = {c: {m: [0.0, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0, 1.0, 0.5][c] for m in M} for c in range(10)}
    (row,) = entity_table(tmp_path, Bootstrap(2000, 0), scores=scores).rows
    low, high = row.ci["t_rel"]
    assert row.values["t_rel"] == 50.0 and 15 < low < 35 and 65 < high < 85  # sd of the mean: 15.8


def test_too_few_cases_or_no_samples_say_why(tmp_path):
    few = entity_table(tmp_path / "few", Bootstrap(), scores={c: ENTITY[c] for c in range(4)})
    assert few.rows[0].ci == {}
    assert any("has 4 scored case(s)" in note and "needs 5 or more" in note for note in few.notes)
    none = entity_table(tmp_path / "none", Bootstrap(), samples=False)
    assert none.rows[0].ci == {}
    assert any("no per-case data for mmke_mini_entity" in note and "no samples file" in note for note in none.notes)


def test_group_interval_resamples_each_task(tmp_path):
    scores = {task: ENTITY for task in ("mmke_mini_entity", "mmke_mini_user")}
    write_run(tmp_path / "ft", scores, editor="ft_llm")
    runs, _ = load_runs([tmp_path])
    tables = build_tables(runs, "task", ci=Bootstrap(1000, 3))
    group = next(t for t in tables if t.title.startswith("mmke_mini "))
    entity = next(t for t in tables if t.title.startswith("mmke_mini_entity"))
    # the mean of two tasks drawn independently is narrower than one task's interval
    (g_low, g_high), (e_low, e_high) = group.rows[0].ci["t_rel"], entity.rows[0].ci["t_rel"]
    assert e_low < g_low < group.rows[0].values["t_rel"] < g_high < e_high


def test_formats_show_and_record_the_intervals(tmp_path, capsys):
    write_run(tmp_path / "ft", {"mmke_mini_entity": ENTITY}, editor="ft_llm", group=None)
    (row,) = entity_table(tmp_path / "t", Bootstrap(500, 1)).rows
    low, high = row.ci["t_rel"]
    assert cli.main(["report", str(tmp_path / "ft"), "--ci", "--resamples", "500", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert f"| ft_llm | 53.6 [{low:.1f}, {high:.1f}] | 50.0 [50.0, 50.0] |" in out
    assert "- 95% intervals: case-level bootstrap, 500 resamples, seed 1, percentile" in out
    assert cli.main(["report", str(tmp_path / "ft"), "--ci", "--resamples", "500", "--seed", "1", "--format", "csv"]) == 0
    t_rel = next(r for r in csv.DictReader(io.StringIO(capsys.readouterr().out)) if r["metric"] == "t_rel")
    assert (float(t_rel["ci_low"]), float(t_rel["ci_high"])) == pytest.approx((low, high), abs=1e-4)
    assert cli.main(["report", str(tmp_path / "ft"), "--ci", "--resamples", "500", "--seed", "1", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ci"] == {"level": 0.95, "method": "case-level percentile bootstrap", "resamples": 500, "seed": 1}
    assert document["tables"][0]["rows"][0]["cells"]["t_rel"]["ci"] == pytest.approx([low, high])
    assert cli.main(["report", str(tmp_path / "ft"), "--format", "latex", "--ci", "--resamples", "500", "--seed", "1"]) == 0
    assert f"53.6 [{low:.1f}, {high:.1f}]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["report", str(tmp_path / "ft"), "--ci", "--resamples", "10"])
    assert "at least 100" in capsys.readouterr().err


# -- compare: paired bootstrap over the cases both runs scored ------------------------------------

def test_paired_difference_by_hand():
    a = {f"c{i}": v for i, v in enumerate([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])}
    same = paired_difference(a, dict(a), task_rng(0, "t"), 1000)
    assert (same.difference, same.low, same.high, same.p, same.beyond_noise) == (0.0, 0.0, 0.0, 1.0, False)
    shifted = paired_difference(a, {c: v + 5 for c, v in a.items()}, task_rng(0, "t"), 1000)
    assert shifted.difference == pytest.approx(5) and (shifted.low, shifted.high) == pytest.approx((5, 5))
    assert shifted.p == pytest.approx(2 / 1001) and shifted.beyond_noise
    # differences of +-10 around 0: not beyond noise
    noisy = paired_difference(a, {c: v + (10 if i % 2 else -10) for i, (c, v) in enumerate(a.items())}, task_rng(0, "t"), 1000)
    assert noisy.low < 0 < noisy.high and noisy.p > 0.05 and not noisy.beyond_noise
    with pytest.raises(NoInterval, match="4 case"):
        paired_difference({c: a[c] for c in list(a)[:4]}, a, task_rng(0, "t"), 1000)


def shifted(scores, metric: str, by: float):
    return {c: {m: min(1.0, v + by) if m == metric else v for m, v in values.items()} for c, values in scores.items()}


def test_compare_says_whether_a_change_is_beyond_noise(tmp_path):
    base = {c: {m: 0.5 for m in M} for c in range(8)}
    write_run(tmp_path / "A" / "ft_llm", {"mmke_mini_entity": base}, editor="ft_llm", group=None)
    write_run(tmp_path / "B" / "ft_llm", {"mmke_mini_entity": shifted(base, "t_rel", 0.1)}, editor="ft_llm", group=None,
              stamp="20260102_000000")
    write_run(tmp_path / "C" / "ft_llm", {"mmke_mini_entity": base}, editor="ft_llm", group=None, stamp="20260103_000000")
    out = compare(tmp_path / "A", tmp_path / "B")
    assert "- beyond noise: paired bootstrap over the 8 cases of both runs (1000 resamples, seed 0)" in out
    assert "| T-Rel | 50.0 | 60.0 | +10.0 | 8 | 8 | 8 | 0 | +10.0 [+10.0, +10.0] | 0.002 | yes |" in out
    assert "| I-Rel | 50.0 | 50.0 | +0.0 | 8 | 0 | 0 | 0 | +0.0 [+0.0, +0.0] | 1.000 | no |" in out
    same = compare(tmp_path / "A", tmp_path / "C")
    assert "| T-Rel | 50.0 | 50.0 | +0.0 | 8 | 0 | 0 | 0 | +0.0 [+0.0, +0.0] | 1.000 | no |" in same


def test_compare_never_pairs_different_cases(tmp_path):
    base = {c: {m: 0.5 for m in M} for c in range(8)}
    write_run(tmp_path / "A" / "ft_llm", {"mmke_mini_entity": base}, editor="ft_llm", group=None)
    # B scored only six of the cases (another --cases): the same data files, other cases
    write_run(tmp_path / "B" / "ft_llm", {"mmke_mini_entity": {c: base[c] for c in range(6)}}, editor="ft_llm", group=None,
              first_n=6, stamp="20260102_000000")
    out = compare(tmp_path / "A", tmp_path / "B")
    assert "- beyond noise: not tested, the runs are not on the same cases (2 only in A, 0 only in B" in out
    assert "Beyond noise |" not in out and " | yes |" not in out
    # other data files: a case id may name another case
    write_run(tmp_path / "D" / "ft_llm", {"mmke_mini_entity": shifted(base, "t_rel", 0.1)}, editor="ft_llm", group=None,
              data_files={"mmke_mini_entity": "other"}, stamp="20260104_000000")
    out = compare(tmp_path / "A", tmp_path / "D")
    assert "- beyond noise: not tested, the runs are not on the same cases (the data files differ)" in out
    assert "Beyond noise |" not in out
    # a plain lmms-eval run records no data hash: the cases cannot be shown to be the same
    write_run(tmp_path / "E" / "ft_llm", {"mmke_mini_entity": base}, editor="ft_llm", group=None, recorded=False,
              stamp="20260105_000000")
    out = compare(tmp_path / "A", tmp_path / "E")
    assert "beyond noise: not tested, a plain lmms-eval run records no data hash" in out and "Beyond noise |" not in out
