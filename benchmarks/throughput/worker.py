"""One (editor, path) run in a fresh worker process: load, build the requests, warm up, time the run."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import replace
from pathlib import Path

from throughput import KNOWLEDGE_TYPE, SEED
from throughput.memory import peak_rss_kb, reset_peak_rss, rss_kb
from throughput.paths import CallCounter, prepare_limit, run_limit, run_naive, run_ours


def seed_everything(seed: int = SEED) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def build_cases(data_dir: str, n_cases: int):
    """ProbeRequests grouped per case, built the way EditedLMM.generate_until builds them."""
    from mmke_tasks.mmke.loader import load_cases
    from mmke_eval.direct import probe_requests

    cases, _ = load_cases(Path(data_dir), KNOWLEDGE_TYPE, "eval")
    if len(cases) < n_cases:
        raise SystemExit(f"the fixture holds {len(cases)} cases, {n_cases} asked for")
    grouped = probe_requests(cases[:n_cases])
    return grouped, sum(len(probes) for probes in grouped)


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    seed_everything()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("editors.ike").setLevel(logging.ERROR)  # the retriever fallback; reported below
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmke_eval import registry
    from mmke_eval.adapters.llava_hf import LlavaHFAdapter

    model = LlavaForConditionalGeneration.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(spec["model_dir"])
    adapter = LlavaHFAdapter(model, processor)
    overrides = {"steps": spec["steps"]} if spec["steps"] is not None and spec["editor"].startswith("ft") else {}
    editor = registry.build_editor(spec["editor"], family=adapter.family, overrides=overrides)
    cases, n_probes = build_cases(spec["data_dir"], spec["cases"])

    # Warm-up (both paths alike): first-call costs of torch and the processor stay off the clock.
    first = cases[0][0].query
    adapter.teacher_forced([first], k=10)
    adapter.generate([replace(first, target="")], max_new_tokens=2)
    digest_before = model_digest(model)
    counter = CallCounter(adapter)
    limit_work = None
    if spec["mode"] == "limit":
        prepared = prepare_limit(adapter, editor, cases)
        limit_work = {  # what the limit ran, so that a skipped edit cannot pass unnoticed
            "edit_steps": sum(c["edit"]["steps"] for c in prepared if c["edit"] is not None),
            "forwards_no_grad": sum(1 + (c["pre"] is not None) for c in prepared),
            "ike_prefix_chars": sum(len(c["prefix"]) for c in prepared),
        }

        def run(adapter, editor, cases, n_probes, counter):
            return run_limit(adapter, editor, cases, n_probes, counter, prepared)
    else:
        path = run_ours if spec["mode"] == "ours" else run_naive

        def run(adapter, editor, cases, n_probes, counter):
            return path(adapter, editor, cases, n_probes, counter, generate=spec["generate"])

    seed_everything()
    method = reset_peak_rss()
    rss_before = rss_kb()
    started = time.perf_counter()
    responses = run(adapter, editor, cases, n_probes, counter)
    seconds = time.perf_counter() - started
    peak = peak_rss_kb(method)

    describe = editor.describe()
    return {
        "editor": spec["editor"],
        "mode": spec["mode"],
        "cases": len(cases),
        "probes": n_probes,
        "seconds": seconds,
        "cases_per_s": len(cases) / seconds,
        "rss_before_mb": rss_before / 1024,
        "peak_rss_increase_mb": max(peak - rss_before, 0) / 1024,
        "memory_method": method,
        "model_mb": sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20,
        "model_unchanged_after_run": model_digest(model) == digest_before,
        "calls": counter.counts,
        **({"limit_work": limit_work} if limit_work else {}),
        "editor_config": {k: v for k, v in describe.items() if k not in ("editor",)},
        "responses": {str(i): r for i, r in responses.items()},
        "probe_keys": {str(p.index): f"{p.doc['case_id']}:{p.doc['probe_id']}" for c in cases for p in c},
    }


def worker_entry(spec: dict, out: str) -> None:
    Path(out).write_text(json.dumps(worker(spec)))
