"""Results folders as mmke-eval and lmms-eval write them, from per-case scores (for report tests).

``write_run`` lays a run out as a real one (``<out>/<model>/<stamp>_results.json`` beside
``<stamp>_samples_<task>.jsonl``): lmms-eval's keys, our ``mmke`` section when ``recorded``, one
probe document per (case, metric) in the samples, and every task's number aggregated from those
documents by the tasks' own aggregation (``metrics.case_mean``), so a report's numbers can be
checked against the scores given here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmke_eval import metrics
from mmke_eval.data.source import card_key

MMKE_MINI = {
    "mmke_mini_entity": {"benchmark": "mmke_mini", "family": "mmke", "knowledge_type": "entity_level", "split": "eval",
                         "generator": "mmke_eval.mini.generate:ensure_generated", "data_env": "MMKE_MINI_DATA"},
    "mmke_mini_semantic": {"benchmark": "mmke_mini", "family": "mmke", "knowledge_type": "visual_knowledge", "split": "eval",
                           "generator": "mmke_eval.mini.generate:ensure_generated", "data_env": "MMKE_MINI_DATA"},
    "mmke_mini_user": {"benchmark": "mmke_mini", "family": "mmke", "knowledge_type": "user_specific", "split": "eval",
                       "generator": "mmke_eval.mini.generate:ensure_generated", "data_env": "MMKE_MINI_DATA"},
}

# scores[task][case index][metric] = score in [0, 1]
Scores = dict[str, dict[int, dict[str, float]]]


def write_run(
    out: Path,
    scores: Scores,
    *,
    editor: str = "none",
    model_args: str = "pretrained=/models/world_model,dtype=float32",
    options: str = "",
    group: str | None = "mmke_mini",
    cards: dict[str, dict] | None = None,
    stamp: str = "20260101_120000",
    recorded: bool = True,
    samples: bool = True,
    first_n: int | None = None,
    data_files: dict[str, str] | None = None,
    resolved: dict[str, Any] | None = None,
    version: str = "0.1.0",
    lifelong: dict[str, Any] | None = None,
) -> Path:
    """Write one run's results (and samples) under ``out``; return the results file. ``lifelong``:
    the ``mmke.lifelong`` section of a lifelong run (task -> edits, checkpoints, rows)."""
    cards = cards or MMKE_MINI
    full_args = ",".join(part for part in (f"base=llava_hf,editor={editor}", model_args, options) if part)
    folder = out / ("models__" + Path(model_args.split("pretrained=")[-1].split(",")[0]).name)
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    configs, n_samples, better = {}, {}, {}
    for task, cases in scores.items():
        docs = [{"doc_id": i, metric: {"case": f"{task}/{case}", "score": score}}
                for i, (case, metric, score) in enumerate((c, m, s) for c, values in cases.items() for m, s in values.items())]
        names = sorted({m for values in cases.values() for m in values})
        results[task] = {"alias": task}
        for name in names:
            results[task][f"{name},none"] = metrics.case_mean(doc[name] for doc in docs if name in doc)
            results[task][f"{name}_stderr,none"] = "N/A"
        # the path on the machine that ran it: a report elsewhere must not need it
        configs[task] = {"task": task, "dataset_path": "json", "dataset_kwargs": {"data_files": {"eval": f"/elsewhere/mmke_tasks/x/sources/{task}.json"}}}
        n_samples[task] = {"original": len(docs), "effective": len(docs)}
        better[task] = {name: True for name in names}
        if samples:
            with open(folder / f"{stamp}_samples_{task}.jsonl", "w") as f:
                for doc in docs:
                    f.write(json.dumps(doc) + "\n")
    groups = {}
    if group:
        members = list(scores)
        groups[group] = members
        names = sorted({key for task in members for key in results[task] if key.endswith(",none") and "_stderr" not in key})
        results[group] = {"alias": group, **{name: sum(results[t][name] for t in members) / len(members) for name in names}}
    data = {}
    skipped = {}
    for task in scores:
        card = cards[task]
        key = "/".join(card_key(card))
        files = (data_files or {}).get(task, f"sha-{task}")
        data[key] = {"root": "/data", "origin": "test", "files": {f"data_json/{task}.json": files}, "images": 0,
                     "images_sha256": "x", "sha256": f"{files}-{first_n}"}
        skipped[key] = {"total": 40, "skipped": {}, "first_n": first_n, "edit_only": 0, "files": []}
    document = {
        "results": results, "groups": {g: results[g] for g in groups}, "group_subtasks": groups, "configs": configs,
        "versions": {task: 0.1 for task in scores}, "n-samples": n_samples, "higher_is_better": better,
        "config": {"model": "edited", "model_args": full_args, "batch_size": 1, "limit": None},
        "lmms_eval_version": "0.7.3", "date": stamp,
    }
    if recorded:
        from dataclasses import asdict

        from mmke_eval.protocol import protocol_from_options
        from mmke_eval.keyvalues import parse_key_values

        given = parse_key_values(options, "options")
        protocol = asdict(protocol_from_options(**{k: v for k, v in given.items() if not k.startswith(("editor.", "adapter."))}))
        document["mmke"] = {
            "model_args": full_args, "base": "llava_hf", "editor": {"editor": editor},
            "protocol": {**protocol, **(resolved or {"loc_span_resolved": "answer" if editor == "ike" else "sequence",
                                                     "port_image_resolved": {"default": "data"}})},
            "cards": {task: cards[task] for task in scores}, "skipped_cases": skipped, "data": data,
            "provenance": {"versions": {"mmke-eval": version, "lmms-eval": "0.7.3"}},
        }
        if lifelong is not None:  # a lifelong run's section, as given (report tests: also malformed ones)
            document["mmke"]["lifelong"] = lifelong
    path = folder / f"{stamp}_results.json"
    path.write_text(json.dumps(document, indent=2))
    return path
