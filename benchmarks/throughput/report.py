"""The scores check (ours against the naive loop, probe by probe), the printed table and the JSON figures."""

from __future__ import annotations

import math
import os
import platform
import sys

from throughput import ALL_MODES


def compare(ours: dict, naive: dict) -> dict:
    keys = ours["probe_keys"]
    score_diff, gen_diff = [], []
    for i, a in ours["responses"].items():
        b = naive["responses"][i]
        sa, sb = a["score"], b["score"]
        both_nan = isinstance(sa, float) and isinstance(sb, float) and math.isnan(sa) and math.isnan(sb)
        same = sa == sb or both_nan
        if not same:
            score_diff.append(f"{keys[i]} ({a['probe']}): ours {sa!r}, naive {sb!r}")
        for field in ("generated", "pre_generated"):
            if (a.get(field) or "") != (b.get(field) or ""):
                gen_diff.append(f"{keys[i]} {field}: ours {a.get(field)!r}, naive {b.get(field)!r}")
    return {"scores_identical": not score_diff, "score_mismatches": score_diff,
            "generations_identical": not gen_diff, "generation_mismatches": gen_diff}


def table(rows: list[dict]) -> str:
    head = ["editor", "cases/s ours", "cases/s naive", "cases/s limit", "speed-up", "ours/limit", "peak RSS +MB ours",
            "peak RSS +MB naive", "ours peak / weights", "scores identical"]
    lines = [head]
    for r in rows:
        o, n, lim = r["ours"], r["naive"], r.get("limit")
        lines.append([
            r["editor"], f"{o['cases_per_s']:.2f}", f"{n['cases_per_s']:.2f}", f"{lim['cases_per_s']:.2f}" if lim else "-",
            f"{n['seconds'] / o['seconds']:.1f}x", f"{o['seconds'] / lim['seconds']:.1f}x" if lim else "-",
            f"{o['peak_rss_increase_mb']:.1f}", f"{n['peak_rss_increase_mb']:.1f}",
            f"{100 * o['peak_rss_increase_mb'] / o['model_mb']:.0f}%", "yes" if r["scores_identical"] else "NO",
        ])
    widths = [max(len(line[c]) for line in lines) for c in range(len(head))]

    def fmt(line: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |"

    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(l) for l in lines[1:]])


def progress_line(name: str, mode: str, r: dict) -> str:
    """The line printed when one (editor, path) run is done."""
    if mode == "limit":
        w = r["limit_work"]
        return (f"  {name:13s} {mode:5s} {r['seconds']:7.2f} s  {r['cases_per_s']:6.2f} cases/s  "
                f"peak RSS +{r['peak_rss_increase_mb']:5.1f} MB  edit steps {w['edit_steps']}, "
                f"no-grad forwards {w['forwards_no_grad']}")
    c = r["calls"]
    extra = f"  retriever {r['editor_config']['retriever_used']}" if "retriever_used" in r["editor_config"] else ""
    return (f"  {name:13s} {mode:5s} {r['seconds']:7.2f} s  {r['cases_per_s']:6.2f} cases/s  "
            f"peak RSS +{r['peak_rss_increase_mb']:5.1f} MB  model batches: teacher-forced "
            f"{c['teacher_forced_batches']}, generate {c['generate_batches']}{extra}")


def print_summary(args, rows: list[dict], start_method: str) -> bool:
    """The table and the checks after every run; True when ours scores every probe as naive does."""
    o = rows[0]["ours"] if rows else {}
    print()
    print(f"{args.model} LLaVA ({o.get('model_mb', 0):.2f} MB of fp32 weights), {args.cases} entity cases x "
          f"{o.get('probes', 0) // max(args.cases, 1)} probes, CPU, {args.threads} torch thread(s) per worker, "
          f"FT steps {'registry default' if args.steps is None else args.steps}"
          f"{', no generations (--no-generate)' if args.no_generate else ''}")
    print(f"memory: {o.get('memory_method', '?')}; each (editor, path) in its own fresh worker process ({start_method})")
    print(table(rows))
    ok = all(r["scores_identical"] for r in rows)
    print(f"scores identical: {'yes' if ok else 'no'}")
    print(f"generations identical: {'yes' if all(r['generations_identical'] for r in rows) else 'no'}")
    unchanged = all(r[mode]["model_unchanged_after_run"] for r in rows for mode in ALL_MODES if mode in r)
    print(f"shared model's weights unchanged after every run (restore / discarded copy): {'yes' if unchanged else 'no'}")
    for r in rows:
        for line in r["score_mismatches"][:5] + r["generation_mismatches"][:5]:
            print(f"  {r['editor']}: {line}")
        for mode in (m for m in ALL_MODES if m in r):
            if not r[mode]["model_unchanged_after_run"]:
                print(f"  {r['editor']} {mode}: the shared model was NOT left unchanged")
    return ok


def figures(r: dict) -> dict:
    """One editor's figures for ``--json``."""
    o, n, lim = r["ours"], r["naive"], r.get("limit")
    return {
        "cases_per_s_ours": o["cases_per_s"],
        "cases_per_s_naive": n["cases_per_s"],
        "cases_per_s_limit": lim["cases_per_s"] if lim else None,
        "speedup_vs_naive": n["seconds"] / o["seconds"],
        "ratio_to_limit": o["seconds"] / lim["seconds"] if lim else None,  # ours time / limit time
        "peak_mb_above_weights": o["peak_rss_increase_mb"],  # ours' peak RSS over its RSS before the run
        "weights_mb": o["model_mb"],
        "scores_identical": r["scores_identical"], "generations_identical": r["generations_identical"],
        "score_mismatches": r["score_mismatches"], "generation_mismatches": r["generation_mismatches"],
        # the full worker reports (timings, call counts, memory, editor configuration), per path
        "runs": {mode: {k: v for k, v in r[mode].items() if k not in ("responses", "probe_keys")}
                 for mode in ALL_MODES if mode in r},
    }


def json_summary(args, rows: list[dict], ok: bool) -> dict:
    """What ``--json`` writes: the machine, the options and every editor's figures."""
    return {
        "machine": {"cpus": os.cpu_count(), "threads_per_worker": args.threads, "platform": sys.platform,
                    "processor": platform.processor() or platform.machine()},
        "model": args.model, "cases": args.cases, "steps": args.steps, "generate": not args.no_generate,
        "scores_identical": ok,
        "editors": {r["editor"]: figures(r) for r in rows},
    }
