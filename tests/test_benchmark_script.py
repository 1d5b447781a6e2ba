"""benchmarks/edit_throughput.py as a user runs it: the JSON it writes and its refusals.

The figures themselves are not checked (they depend on the machine); the score check is: ours,
the naive loop and the limit run on the same cases, and ours must score every probe as the
naive per-probe loop does (IKE: the prefix-reusing path against plain single probes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "edit_throughput.py"
FIGURES = {"cases_per_s_ours", "cases_per_s_naive", "cases_per_s_limit", "speedup_vs_naive", "ratio_to_limit",
           "peak_mb_above_weights"}


def bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_json_has_every_figure_per_editor_and_the_scores_match(tmp_path):
    out = tmp_path / "bench.json"
    done = bench("--model", "tiny", "--cases", "1", "--editors", "ike", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["model"] and figures["cases"] == 1 and figures["scores_identical"] is True
    assert set(figures["editors"]) == {"ike"}
    ike = figures["editors"]["ike"]
    assert FIGURES <= set(ike), set(ike)
    assert all(isinstance(ike[key], (int, float)) and ike[key] > 0 for key in FIGURES - {"peak_mb_above_weights"})
    ratio = ike["cases_per_s_ours"] / ike["cases_per_s_naive"]  # naive time / ours time, from rounded rates
    assert abs(ike["speedup_vs_naive"] - ratio) <= 0.05 * ratio
    assert set(ike["runs"]) == {"ours", "naive", "limit"}
    assert "scores identical: yes" in done.stdout


def test_bad_options_are_refused_before_any_work():
    for args, message in ((["--editors", "no_such_editor"], "no_such_editor"), (["--cases", "0"], "--cases"),
                          (["--model", "huge"], "invalid choice")):
        done = bench(*args, timeout=120)
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr[-500:])
