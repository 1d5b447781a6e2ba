"""Edit throughput: mmke-eval's case evaluator against the per-probe loop of the older toolkits.

    .venv/bin/python benchmarks/edit_throughput.py [--cases 8] [--steps N] [--editors none,ike] [--json out.json]

A speed and memory benchmark, not a test: it prints figures. On a tiny random LLaVA (built
offline into a temporary folder) and the MMKE-style fixture data (entity type, eval split; IKE
draws its demonstrations from the fixture's train split), every editor is run two ways:

* ours: ``CaseEvaluator.answer_cases`` over all cases: per case the pre-edit locality outputs
  once, the edit applied once to the shared model, every probe of the case answered in batches
  (teacher forcing and greedy generation), then the touched tensors copied back.
* naive, as EasyEdit/VLKEB-style loops do it: per case ``copy.deepcopy`` of the model, the edit
  applied to the copy, then every probe on its own: one teacher-forced call and one generation
  per probe, and for each locality probe the pre-edit forward and generation recomputed on the
  original model; the copy is thrown away.

Both paths use the same adapter, editor configuration and scoring formulas, so every probe must
get the same score (checked; the script exits with status 1 if not). Generations are compared too.

Method. Each (editor, path) pair runs in its own fresh worker process, one after another, so that
neither path inherits the other's allocator state or caches. Workers are forked from a
multiprocessing fork server that has imported torch/transformers/mmke_eval but never run a model
(imports are paid once, not eight times). Inside a worker: load the model, build the requests,
one warm-up forward and generation, then reset the kernel's peak-RSS counter
(``/proc/self/clear_refs`` = 5) and time the run. "peak RSS +MB" is VmHWM after the run minus
VmRSS just before it. Without clear_refs (non-Linux) it falls back to ``ru_maxrss``, which
includes the loading peak. Image decoding and prompt rendering happen before the clock starts,
for both paths (as in lmms-eval, which hands the model ready requests). Seeds are fixed and torch
uses ``--threads`` threads (default 1, so that runs on a shared machine are comparable).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The pieces live in benchmarks/throughput/ (this folder is on sys.path when the script runs, and
# the worker processes inherit it).
from throughput import ALL_MODES, DEFAULT_EDITORS, MODELS, MODES  # noqa: E402
from throughput.models import prepare_model_and_data  # noqa: E402
from throughput.report import compare, json_summary, print_summary, progress_line  # noqa: E402
from throughput.worker import worker_entry  # noqa: E402

# Imported once by the fork server; every worker is a fresh fork of it that has run no model yet.
PRELOAD = [
    "__main__", "numpy", "torch", "transformers", "transformers.models.llava.modeling_llava",
    "transformers.models.llava.processing_llava", "transformers.models.clip.image_processing_pil_clip",
    "mmke_eval.engine.evaluator", "mmke_eval.adapters.llava_hf", "mmke_tasks.mmke.loader",
    "editors.ft", "editors.ike",
]


def spawn(ctx, spec: dict, workdir: Path) -> dict:
    out = workdir / f"{spec['editor']}-{spec['mode']}.json"
    process = ctx.Process(target=worker_entry, args=(spec, str(out)), name=f"{spec['editor']}-{spec['mode']}")
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"worker {spec['editor']}/{spec['mode']} failed with exit code {process.exitcode}")
    return json.loads(out.read_text())


def importable(module: str) -> bool:
    import importlib.util

    if module == "__main__":
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8, help="edit cases (entity type), default 8")
    parser.add_argument("--steps", type=int, default=None, help="FT steps (default: registry defaults, 40 ft_llm / 30 ft_alignment)")
    parser.add_argument("--editors", default=",".join(DEFAULT_EDITORS), help="comma-separated registry editor names")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures (and per-probe checks) here")
    parser.add_argument("--model", choices=MODELS, default="tiny",
                        help="tiny (default): 2-layer random LLaVA; world: the shipped world model with the mmke_mini data; "
                             "compute: a random 12-layer hidden-512 LLaVA (CLIP 6 layers, 112 px / 14 px patches)")
    parser.add_argument("--no-limit", action="store_true", help="skip the limit measurement")
    parser.add_argument("--no-generate", action="store_true",
                        help="ours and naive without greedy generations (protocol generate=false), as the limit: "
                             "shows how much of the gap to the limit is generation")
    args = parser.parse_args(argv)

    from mmke_eval import registry

    editors = [e.strip() for e in args.editors.split(",") if e.strip()]
    for name in editors:
        try:
            registry.editor_defaults(name)  # unknown names fail here, before any work
        except registry.RegistryError as err:
            parser.error(str(err))
    if args.cases < 1:
        parser.error("--cases must be >= 1")

    import multiprocessing

    started = time.perf_counter()
    available = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in available else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload([m for m in PRELOAD if importable(m)])
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmke-bench-") as tmp:
        tmp = Path(tmp)
        model_dir, data_dir = prepare_model_and_data(args.model, tmp, args.cases)
        modes = MODES if args.no_limit else ALL_MODES
        for name in editors:
            results = {}
            for mode in modes:
                spec = {"editor": name, "mode": mode, "cases": args.cases, "steps": args.steps, "threads": args.threads,
                        "model_dir": str(model_dir), "data_dir": str(data_dir), "generate": not args.no_generate}
                results[mode] = spawn(ctx, spec, tmp)
                print(progress_line(name, mode, results[mode]), flush=True)
            check = compare(results["ours"], results["naive"])
            rows.append({"editor": name, **check, **results})

    ok = print_summary(args, rows, ctx.get_start_method())
    print(f"total {time.perf_counter() - started:.0f} s")

    if args.json:
        summary = json_summary(args, rows, ok)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if not ok:
        raise AssertionError("ours and the naive loop disagree on some probe scores (listed above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
