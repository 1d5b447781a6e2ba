"""Case-level bootstrap: 95% intervals for the report's cells (``report --ci``) and paired
differences between two runs on the same cases (``compare``).

The unit resampled is the edit case, as the tasks aggregate: a case's score is the mean of its
probe documents, a task's number the mean over its cases (``metrics.case_mean``). One resample
draws the task's cases with replacement (as many as it has) and recomputes every column from the
same draw; a group's number is the mean of its tasks' (each task resampled on its own, as they are
different data); ``Avg`` the mean of the row's columns. The interval is the 2.5th and 97.5th
percentile of the resampled numbers (numpy's default, linear interpolation).

Random numbers: one numpy generator per (seed, task name), so a cell's interval does not depend
on which other tasks or runs a report holds. Fewer than MIN_CASES cases give no interval: a
bootstrap over 1-4 cases says nothing about noise.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from mmke_eval.report.runs import Entry

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
LEVEL = 0.95
MIN_CASES = 5
TOLERANCE = 1e-6  # the per-case data must give the recorded number (percent) to this much
CHUNK = 200  # resamples drawn at once (bounds memory: CHUNK x cases counts)


@dataclass
class Bootstrap:
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED

    def __post_init__(self):
        if self.resamples < 100:
            raise ValueError(f"--resamples {self.resamples}: at least 100 are needed for a 95% percentile interval")

    def describe(self) -> str:
        return (f"95% intervals: case-level bootstrap, {self.resamples} resamples, seed {self.seed}, "
                f"percentile; cases resampled per task (a group resamples each of its tasks)")


def task_rng(seed: int, task: str) -> np.random.Generator:
    """The generator of one task's resamples: the same for the same seed and task name."""
    return np.random.default_rng([seed, zlib.crc32(task.encode("utf-8"))])


def resample_counts(rng: np.random.Generator, cases: int, resamples: int):
    """Yield (chunk x cases) arrays: how often each case is drawn in each resample (draws of
    ``cases`` indices with replacement, ``rng.integers(0, cases, size=(chunk, cases))``)."""
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        drawn = rng.integers(0, cases, size=(size, cases))
        counts = np.zeros((size, cases))
        np.add.at(counts, (np.arange(size)[:, None], drawn), 1)
        yield counts


def resampled_means(scores: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """``scores``: cases x columns, NaN where a case has no score for a column. Returns
    resamples x columns: each column's mean over the drawn cases that have it (NaN if none)."""
    present = ~np.isnan(scores)
    values = np.where(present, scores, 0.0)
    out = []
    for counts in resample_counts(rng, scores.shape[0], resamples):
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((counts @ values) / (counts @ present))
    return np.concatenate(out)


def percentile_interval(draws: np.ndarray) -> tuple[float, float] | None:
    """The central 95% of the resampled values (NaN draws left out); None if none is a number."""
    draws = draws[~np.isnan(draws)]
    if not len(draws):
        return None
    low, high = np.percentile(draws, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(low), float(high)


class NoInterval(Exception):
    """Why a row or cell gets no interval; the message says it."""


@dataclass
class RowDraws:
    point: dict[str, float]  # column -> the number recomputed from the cases
    draws: dict[str, np.ndarray]  # column -> resampled numbers
    cases: int  # cases behind the number (a group: over its tasks)
    per_task: dict[str, int] = field(default_factory=dict)


def entry_draws(entry: Entry, keys: list[str], options: Bootstrap) -> RowDraws:
    """Resampled numbers of an entry's columns ``keys`` (a task or a group of tasks)."""
    run = entry.run
    if entry.is_group:
        members = [run.entry(task) for task in run.groups[entry.task]]
        missing = [task for task, member in zip(run.groups[entry.task], members) if member is None]
        if missing:
            raise NoInterval(f"{entry.task}: its task(s) {', '.join(missing)} are not in {run.path.parent}")
        parts = [entry_draws(member, keys, options) for member in members]
        return RowDraws({k: float(np.mean([p.point[k] for p in parts])) for k in keys},
                        {k: np.mean([p.draws[k] for p in parts], axis=0) for k in keys},
                        sum(p.cases for p in parts), {t: n for p in parts for t, n in p.per_task.items()})
    scores = run.case_scores(entry.task)
    if scores is None:
        raise NoInterval(f"no per-case data for {entry.task} in {run.path.parent}: no samples file "
                         "(mmke-eval --output_path writes it; lmms-eval: --log_samples)")
    if len(scores) < MIN_CASES:
        raise NoInterval(f"{entry.task} has {len(scores)} scored case(s) in {run.path.parent}; an interval needs {MIN_CASES} or more")
    matrix = np.array([[values.get(k, np.nan) for k in keys] for values in scores.values()], dtype=float)
    draws = resampled_means(matrix, task_rng(options.seed, entry.task), options.resamples)
    with np.errstate(invalid="ignore"):
        point = {k: float(np.nanmean(matrix[:, i])) if (~np.isnan(matrix[:, i])).any() else float("nan")
                 for i, k in enumerate(keys)}
    return RowDraws(point, {k: draws[:, i] for i, k in enumerate(keys)}, len(scores), {entry.task: len(scores)})


def row_intervals(entry: Entry, keys: list[str], avg_key: str | None, options: Bootstrap
                  ) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """column -> 95% interval for the cells of one table row, and why some cells have none.
    A cell's interval is given only where the per-case data reproduce the number in the results
    (a wrong interval is worse than none)."""
    shown = [k for k in keys if entry.values.get(k) is not None]
    if not shown:
        return {}, []
    try:
        found = entry_draws(entry, shown, options)
    except NoInterval as why:
        return {}, [str(why)]
    intervals, notes = {}, []
    for key in shown:
        recorded = float(entry.values[key])
        if not abs(found.point[key] - recorded) <= TOLERANCE:
            notes.append(f"{entry.task} {key}: the per-case data give {found.point[key]:.4f}, the results {recorded:.4f}; no interval")
            continue
        interval = percentile_interval(found.draws[key])
        if interval is not None:
            intervals[key] = interval
    if avg_key and all(k in intervals for k in keys):
        interval = percentile_interval(np.mean([found.draws[k] for k in keys], axis=0))
        if interval is not None:
            intervals[avg_key] = interval
    return intervals, notes


@dataclass
class Paired:
    cases: int  # cases in both runs with a score for the metric
    difference: float  # mean over those cases of B - A
    low: float
    high: float
    p: float  # two-sided bootstrap p-value estimate

    @property
    def beyond_noise(self) -> bool:
        return self.p < 1 - LEVEL


def paired_difference(a: dict[str, float], b: dict[str, float], rng: np.random.Generator, resamples: int) -> Paired:
    """B - A over the cases both score, with a paired bootstrap: the common cases are resampled
    together, the mean difference recomputed per resample. Interval: its 2.5th-97.5th percentile.
    p: twice the smaller share of resampled differences at or beyond zero on either side
    (add-one corrected: (k + 1) / (resamples + 1), never 0; capped at 1); it is below 0.05 exactly
    when the percentile interval leaves 0 out, up to ties."""
    common = [case for case in a if case in b]
    if len(common) < MIN_CASES:
        raise NoInterval(f"{len(common)} case(s) in both runs; a paired test needs {MIN_CASES} or more")
    d = np.array([b[case] - a[case] for case in common], dtype=float)[:, None]
    draws = resampled_means(d, rng, resamples)[:, 0]
    low, high = percentile_interval(draws)
    below, above = int(np.sum(draws <= 0)), int(np.sum(draws >= 0))
    p = min(1.0, 2 * (min(below, above) + 1) / (resamples + 1))
    return Paired(len(common), float(d.mean()), low, high, p)
