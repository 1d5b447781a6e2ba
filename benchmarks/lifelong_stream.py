"""Lifelong editing cost: a stream of T distinct edits per editor, one after another, never undone
in between; what each edit costs as the stream grows, and what the editor's memory grows to.

    .venv/bin/python benchmarks/lifelong_stream.py [--model compute|tiny|world] [--editors grace,wise,...]
                                                   [--edits 100] [--at 1,10,100] [--threads 1] [--json out.json]

A speed and memory benchmark, not a test: it prints figures. The model is the compute model of
benchmarks/edit_throughput.py (a random 12-layer LLaVA, built offline), the tiny LLaVA, or the
built-in world model. The edits are synthetic and distinct: edit i asks "What is the code of
object i?" about its own seeded picture, with its own target word; the editors run with the
registry's values for the model's family (llava: EasyEdit's / the references' hyper-parameters;
the world model: its calibrated values); MEMIT and AlphaEdit take their preserved keys from 300
synthetic sentences unrelated to the edits.

Per editor, on a fresh copy of the model:
* ``s/edit``: the mean wall time of the edits in each window (1, 2..10, 11..100, ...);
* ``limit s/edit``: a floor under any gradient editor's cost: its optimisation steps (``steps``
  in its config; MEMIT's and AlphaEdit's ``v_steps``, the fit of the target value) times one forward pass of the whole model on the edit
  input (no backward), measured on the same model. Each step needs the loss at least; the backward
  pass and the editor's bookkeeping are what the ratio adds (FT-LLM, which replays the layers
  below the edited one from a cache, can run under it);
* the growth of what the editor keeps: each edit report's ``codebook_size`` (GRACE),
  ``side_memory_params`` (WISE), ``adapter_params`` (LoRA), and the process's resident memory;
* after the stream every edit is undone in reverse order and the model's weights are checked
  bit-identical to before (exit status 1 if not).
torch uses ``--threads`` threads (default 1, comparable on a shared machine).
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
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from throughput.memory import rss_kb  # noqa: E402
from throughput.models import build_compute_llava  # noqa: E402

GROWTH_KEYS = ("codebook_size", "side_memory_params", "adapter_params", "merges")
WORDS = ("alpha", "bravo", "delta", "echo", "golf", "hotel", "india", "kilo", "lima", "mike", "oscar", "papa",
         "romeo", "sierra", "tango", "victor", "whiskey", "yankee", "zulu", "amber", "coral", "ivory", "olive")


def load(model: str, tmp: Path):
    """(adapter) for ``--model``, built or loaded offline."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmke_eval.adapters.llava_hf import LlavaHFAdapter

    if model == "world":
        from mmke_eval.mini import WORLD_MODEL_DIR as folder
    elif model == "compute":
        folder = build_compute_llava(tmp / "compute_llava")
    else:
        from mmke_eval.testing.tiny_llava import build_tiny_llava

        folder = build_tiny_llava(tmp / "tiny_llava")
    weights = LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    return LlavaHFAdapter(weights, AutoProcessor.from_pretrained(folder))


def requests(n: int):
    """``n`` distinct edits, each with its own seeded picture and target."""
    import numpy as np
    from PIL import Image

    from editors.base import EditRequest

    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        pixels = (rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8).repeat(12, 0).repeat(12, 1))
        target = f"{WORDS[i % len(WORDS)]} {WORDS[(i // len(WORDS)) % len(WORDS)]}"
        out.append(EditRequest(case_id=f"e{i}", prompt=f"What is the code of object {i}?", target=target,
                               image=Image.fromarray(pixels), original="unknown"))
    return out


def preserved_corpus(tmp: Path, n: int = 300) -> Path:
    """``n`` sentences unrelated to the edits (one per line), for MEMIT's and AlphaEdit's key statistics."""
    path = tmp / "preserved.txt"
    if not path.is_file():
        lines = [f"The {WORDS[i % len(WORDS)]} river flows past {WORDS[(i * 7) % len(WORDS)]} hill number {i}." for i in range(n)]
        path.write_text("\n".join(lines) + "\n")
    return path


def limit_seconds(adapter, editor, request) -> float:
    """The editor's optimisation steps times one forward pass on the edit input (median of 3)."""
    import torch

    from mmke_eval.adapters.base import Query

    query = Query(request.prompt, request.image, request.target)
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            adapter.target_loss(query)
            times.append(time.perf_counter() - start)
    # optimisation steps: GRACE, WISE, LoRA `steps`; MEMIT/AlphaEdit the target value's `v_steps`
    steps = getattr(editor.config, "steps", None) or getattr(editor.config, "v_steps", None) or 1
    return sorted(times)[1] * int(steps)


def windows(edits: int, at: list[int]) -> list[tuple[int, int]]:
    bounds = sorted({a for a in at if a <= edits} | {edits})
    return [(lo + 1, hi) for lo, hi in zip([0] + bounds[:-1], bounds)]


def run_editor(name: str, model: str, edits: int, at: list[int], tmp: Path) -> dict:
    import torch

    from mmke_eval import registry

    from dataclasses import fields

    adapter = load(model, tmp)
    known = {f.name for f in fields(registry.editor_class(name).config_class)}
    # MEMIT/AlphaEdit's preserved keys: the synthetic edits have no train split, so a corpus of
    # other sentences stands in for the reference's Wikipedia sample.
    overrides = {"preserved": str(preserved_corpus(tmp))} if "preserved" in known else {}
    editor = registry.build_editor(name, family=adapter.family, overrides=overrides)
    if hasattr(editor, "ensure_ready"):
        editor.ensure_ready(adapter)
    before = {k: v.detach().clone() for k, v in adapter.model.state_dict().items()}
    stream = requests(edits)
    limit = limit_seconds(adapter, editor, stream[0])
    rss_start = rss_kb()
    handles, seconds, growth = [], [], []
    started = time.perf_counter()
    try:
        for request in stream:
            t0 = time.perf_counter()
            handles.append(editor.apply(adapter, request))
            seconds.append(time.perf_counter() - t0)
            stats = handles[-1].stats
            growth.append({key: stats[key] for key in GROWTH_KEYS if key in stats})
            if len(handles) in at:
                growth[-1]["rss_mb"] = (rss_kb() - rss_start) / 1024
    finally:
        total = time.perf_counter() - started
        for handle in reversed(handles):
            editor.restore(adapter, handle)
    after = adapter.model.state_dict()
    identical = after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    rows = []
    for lo, hi in windows(edits, at):
        window = seconds[lo - 1 : hi]
        rows.append({"edits": f"{lo}-{hi}" if lo != hi else str(hi), "s_per_edit": sum(window) / len(window),
                     **growth[hi - 1]})
    return {"editor": name, "model": model, "edits": edits, "total_s": total, "limit_s_per_edit": limit,
            "windows": rows, "restored_bit_identical": identical}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("compute", "tiny", "world"), default="compute")
    parser.add_argument("--editors", default="lora,grace,wise,alphaedit,memit")
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--at", default="1,10,100,1000", help="the checkpoints the windows end at")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    at = [int(a) for a in args.at.split(",") if a.strip()]
    print(f"Lifelong stream: {args.edits} distinct edits on the {args.model} model, {args.threads} thread(s)\n")
    print("| editor | edits | s/edit | limit s/edit | x limit | " + " | ".join(GROWTH_KEYS) + " | RSS +MB |")
    print("|---|---|---|---|---|" + "---|" * len(GROWTH_KEYS) + "---|", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [e.strip() for e in args.editors.split(",") if e.strip()]:
            print(f"{name}: {args.edits} edits on the {args.model} model ...", file=sys.stderr, flush=True)
            result = run_editor(name, args.model, args.edits, at, Path(tmp))
            results.append(result)
            for row in result["windows"]:  # each editor's rows as soon as it finishes
                cells = [result["editor"], row["edits"], f"{row['s_per_edit']:.3f}", f"{result['limit_s_per_edit']:.3f}",
                         f"{row['s_per_edit'] / result['limit_s_per_edit']:.2f}"]
                cells += [str(row.get(key, "-")) for key in GROWTH_KEYS]
                cells.append(f"{row['rss_mb']:.0f}" if "rss_mb" in row else "-")
                print("| " + " | ".join(cells) + " |", flush=True)
    print()
    for result in results:
        print(f"{result['editor']}: {result['edits']} edits in {result['total_s']:.1f} s; restored bit-identical: "
              f"{'yes' if result['restored_bit_identical'] else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["restored_bit_identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
