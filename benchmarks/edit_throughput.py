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
import copy
import hashlib
import json
import logging
import math
import os
import platform
import random
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_EDITORS = ("none", "ft_llm", "ft_alignment", "ike")
KNOWLEDGE_TYPE = "entity_level"
SEED = 0
MODES = ("ours", "naive")  # compared probe by probe
ALL_MODES = MODES + ("limit",)  # limit: the unavoidable work only, no responses (see run_limit)
MODELS = ("tiny", "world", "compute")
# --model compute: a random LLaVA big enough for compute, not Python overhead, to dominate on CPU.
COMPUTE_TEXT = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 12, "num_attention_heads": 8}
COMPUTE_VISION = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 6,
                  "image_size": 112, "patch_size": 14}  # 64 image tokens


# -- memory ------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> str:
    """Reset the peak-RSS counter where the kernel allows it; return the method used."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        if _status_kb("VmHWM") is not None:
            return "VmHWM after clear_refs"
    except OSError:
        pass
    return "ru_maxrss (includes the loading peak)"


def rss_kb() -> int:
    now = _status_kb("VmRSS")
    if now is not None:
        return now
    import psutil  # non-Linux fallback

    return psutil.Process().memory_info().rss // 1024


def peak_rss_kb(method: str) -> int:
    if method.startswith("VmHWM"):
        return _status_kb("VmHWM") or 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, kB on Linux


# -- models ------------------------------------------------------------------------------------
def build_compute_llava(path: Path) -> Path:
    """A random LlavaForConditionalGeneration of COMPUTE_TEXT / COMPUTE_VISION size, written to
    ``path`` with the tiny model's tokenizer and (resized) processor; seeded, offline."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from mmke_eval.testing import tiny_llava as T

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = T.build_tokenizer()
    processor = T.build_processor(tokenizer, image_size=COMPUTE_VISION["image_size"], patch_size=COMPUTE_VISION["patch_size"])
    vision = CLIPVisionConfig(projection_dim=COMPUTE_VISION["hidden_size"], **COMPUTE_VISION)
    text = LlamaConfig(
        vocab_size=len(tokenizer), num_key_value_heads=COMPUTE_TEXT["num_attention_heads"],
        max_position_embeddings=T.MAX_POSITIONS, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **COMPUTE_TEXT,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(T.IMAGE_TOKEN),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlavaForConditionalGeneration(config).eval()
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def prepare_model_and_data(model: str, tmp: Path, n_cases: int) -> tuple[Path, Path]:
    """(model folder, MMKE-style data root) for ``--model``."""
    from mmke_eval.testing.mmke_fixture import write_mmke_fixture

    if model == "world":
        from mmke_eval.mini import WORLD_MODEL_DIR
        from mmke_eval.mini.generate import generate

        return WORLD_MODEL_DIR, generate(tmp / "mmke_mini", seed=0)
    if model == "compute":
        model_dir = build_compute_llava(tmp / "compute_llava")
    else:
        from mmke_eval.testing.tiny_llava import build_tiny_llava

        model_dir = build_tiny_llava(tmp / "tiny_llava")
    return model_dir, write_mmke_fixture(tmp / "data", n_cases=n_cases)


# -- the worker (one editor, one path, fresh process) --------------------------------------------
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
    from mmke_eval.data.mmke import load_cases
    from mmke_eval.direct import probe_requests

    cases, _ = load_cases(Path(data_dir), KNOWLEDGE_TYPE, "eval")
    if len(cases) < n_cases:
        raise SystemExit(f"the fixture holds {len(cases)} cases, {n_cases} asked for")
    grouped = probe_requests(cases[:n_cases])
    return grouped, sum(len(probes) for probes in grouped)


class CallCounter:
    """Counts adapter calls, the model batches they run (chunks) and the queries they carry."""

    OPS = ("teacher_forced", "generate")

    def __init__(self, *adapters):
        self.counts = {f"{op}_{what}": 0 for op in self.OPS for what in ("calls", "batches", "queries")}
        self._current = None
        for adapter in adapters:
            self.wrap(adapter)

    def wrap(self, adapter) -> None:
        for op in self.OPS:
            original = getattr(adapter, op)

            def counted(queries, *args, _original=original, _op=op, **kwargs):
                self.counts[f"{_op}_calls"] += 1
                self.counts[f"{_op}_queries"] += len(queries)
                self._current = _op
                try:
                    return _original(queries, *args, **kwargs)
                finally:
                    self._current = None

            setattr(adapter, op, counted)
        chunks = adapter._chunks

        def counted_chunks(queries, indices=None, _chunks=chunks):
            found = _chunks(queries, indices)
            if self._current:
                self.counts[f"{self._current}_batches"] += len(found)
            return found

        adapter._chunks = counted_chunks
        # Rows answered on a reused prefix (inside reusing_prefixes()) run one at a time: a batch each.
        for name in ("_teacher_forced_reusing", "_generate_reusing"):
            if hasattr(adapter, name):
                reusing = getattr(adapter, name)

                def counted_row(*args, _reusing=reusing, **kwargs):
                    out = _reusing(*args, **kwargs)
                    if out is not None and self._current:
                        self.counts[f"{self._current}_batches"] += 1
                    return out

                setattr(adapter, name, counted_row)


def run_ours(adapter, editor, cases, n_probes, counter, generate=True):
    from mmke_eval.wrapper import CaseEvaluator, Protocol

    evaluator = CaseEvaluator(adapter, editor, Protocol(generate=generate))
    results: list = [None] * n_probes
    evaluator.answer_cases(cases, results, progress=False)
    return {i: json.loads(r) for i, r in enumerate(results)}


def run_naive(adapter, editor, cases, n_probes, counter, generate=True):
    """Per case: deepcopy, edit the copy, every probe alone, pre-edit locality per probe, discard."""
    from mmke_eval import families, metrics
    from mmke_eval.adapters.llava_hf import LlavaHFAdapter
    from mmke_eval.wrapper import CaseEvaluator, Protocol

    protocol = Protocol(generate=generate)
    span = editor.reference_locality_span if protocol.loc_span == "auto" else protocol.loc_span
    k = max(protocol.t_loc_k, protocol.i_loc_k)
    out = {}
    for probes in cases:
        edited = LlavaHFAdapter(copy.deepcopy(adapter.model), adapter.processor, device=adapter.device, batch_size=1)
        counter.wrap(edited)
        handle = editor.apply(edited, CaseEvaluator(adapter, editor, protocol).edit_request(probes[0].doc))
        for probe in probes:
            gen = probe.gen_kwargs
            max_new, until = int(gen.get("max_new_tokens", 32)), list(gen.get("until") or [])
            query = replace(probe.query, prefix=handle.prefix)
            post = edited.teacher_forced([query], k=k)[0]
            generated = edited.generate([replace(query, target="")], max_new_tokens=max_new, until=until)[0] if generate else ""
            kind = families.kind_of(probe.doc)
            response = {"probe": kind.name, "generated": generated}
            if kind.is_locality:
                pre = adapter.teacher_forced([probe.query], k=k)[0]
                response["pre_generated"] = adapter.generate(
                    [replace(probe.query, target="")], max_new_tokens=max_new, until=until
                )[0] if generate else None
                top = getattr(protocol, kind.locality)
                if span == "answer":
                    response["score"] = metrics.topk_agreement(pre.topk[pre.answer_positions], post.topk[post.answer_positions], top)
                else:
                    response["score"] = metrics.topk_agreement(pre.topk, post.topk, top)
            else:
                response["score"] = post.token_acc
            out[probe.index] = response
        del edited, handle  # the copy is discarded; nothing to restore
    return out


def run_limit(adapter, editor, cases, n_probes, counter, prepared):
    """The unavoidable work of each case, with no evaluator and no generation (a lower bound):

    * the pre-edit forward of the case's locality probes, one batch;
    * the edit's optimisation: for FT ``steps`` x (forward + backward of the edit query, only the
      edited tensors requiring grad, one AdamW step), then the edited tensors copied back; for
      none and IKE no edit work (IKE's prefix was retrieved before the clock, see ``prepare_limit``);
    * one teacher-forced forward of all the case's probes (with IKE's prefix), one batch.

    Inputs are encoded before the clock; mixed text-only and image rows share a batch (LLaVA
    scatters image features into the image-token positions only).
    """
    import torch
    import torch.nn.functional as F

    model = adapter.model
    for case in prepared:
        with torch.no_grad():
            if case["pre"] is not None:
                model(**case["pre"], use_cache=False)
        edit = case["edit"]
        if edit is not None:
            params = list(edit["params"].values())
            saved = [p.detach().clone() for p in params]
            flags = [(p, p.requires_grad) for p in model.parameters()]
            wanted = {id(p) for p in params}
            for p, _ in flags:
                p.requires_grad_(id(p) in wanted)
            optimizer = torch.optim.AdamW(params, lr=edit["lr"], weight_decay=edit["weight_decay"])
            for _ in range(edit["steps"]):
                logits = model(**edit["inputs"], use_cache=False).logits[0]
                loss = F.cross_entropy(logits[edit["start"] - 1 : -1].float(), edit["labels"])
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            del optimizer
            for p, flag in flags:
                p.requires_grad_(flag)
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        with torch.no_grad():
            model(**case["post"], use_cache=False)
    return {}


def _inputs(adapter, queries) -> dict:
    """One right-padded model batch of ``queries`` (text-only and image rows may mix)."""
    with_image = [q for q in queries if q.image is not None]
    image_inputs, counts = adapter._image_inputs(with_image) if with_image else ({}, [])
    counts = iter(counts)
    encoded = [adapter._encode(q, next(counts) if q.image is not None else 0) for q in queries]
    ids, mask = adapter._padded(encoded, left=False)
    return {"input_ids": ids, "attention_mask": mask, **image_inputs}


def prepare_limit(adapter, editor, cases) -> list[dict]:
    """Encoded inputs of every case for ``run_limit`` (off the clock)."""
    import torch

    from editors.ft import FTEditor
    from editors.ike import IKEEditor
    from mmke_eval import families
    from mmke_eval.adapters.base import Query
    from mmke_eval.wrapper import CaseEvaluator, Protocol

    evaluator = CaseEvaluator(adapter, editor, Protocol())
    prepared = []
    for probes in cases:
        request = evaluator.edit_request(probes[0].doc)
        prefix, edit = "", None
        if isinstance(editor, IKEEditor):
            handle = editor.apply(adapter, request)
            prefix = handle.prefix
            editor.restore(adapter, handle)
        if isinstance(editor, FTEditor):
            query = Query(request.prompt, request.image, request.target)
            image_inputs, counts = adapter._image_inputs([query]) if query.image is not None else ({}, [0])
            enc = adapter._encode(query, counts[0])
            ids = torch.tensor([enc.ids], dtype=torch.long, device=adapter.device)
            edit = {
                "params": adapter.parameter_group(editor.config.target), "steps": editor.config.steps,
                "lr": editor.config.lr, "weight_decay": editor.config.weight_decay,
                "inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids), **image_inputs},
                "start": enc.answer_start, "labels": ids[0, enc.answer_start :],
            }
        loc = [p.query for p in probes if families.kind_of(p.doc).is_locality]
        post = [replace(p.query, prefix=prefix) for p in probes]
        prepared.append({"pre": _inputs(adapter, loc) if loc else None, "edit": edit, "post": _inputs(adapter, post),
                         "prefix": prefix})
    return prepared


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


# -- the driver --------------------------------------------------------------------------------
# Imported once by the fork server; every worker is a fresh fork of it that has run no model yet.
PRELOAD = [
    "__main__", "numpy", "torch", "transformers", "transformers.models.llava.modeling_llava",
    "transformers.models.llava.processing_llava", "transformers.models.clip.image_processing_pil_clip",
    "mmke_eval.wrapper", "mmke_eval.adapters.llava_hf", "mmke_eval.data.mmke", "mmke_tasks.mmke.utils",
    "editors.ft", "editors.ike",
]


def _worker_entry(spec: dict, out: str) -> None:
    Path(out).write_text(json.dumps(worker(spec)))


def spawn(ctx, spec: dict, workdir: Path) -> dict:
    out = workdir / f"{spec['editor']}-{spec['mode']}.json"
    process = ctx.Process(target=_worker_entry, args=(spec, str(out)), name=f"{spec['editor']}-{spec['mode']}")
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
                r = results[mode]
                c = r["calls"]
                if mode == "limit":
                    w = r["limit_work"]
                    print(f"  {name:13s} {mode:5s} {r['seconds']:7.2f} s  {r['cases_per_s']:6.2f} cases/s  "
                          f"peak RSS +{r['peak_rss_increase_mb']:5.1f} MB  edit steps {w['edit_steps']}, "
                          f"no-grad forwards {w['forwards_no_grad']}", flush=True)
                    continue
                extra = f"  retriever {r['editor_config']['retriever_used']}" if "retriever_used" in r["editor_config"] else ""
                print(f"  {name:13s} {mode:5s} {r['seconds']:7.2f} s  {r['cases_per_s']:6.2f} cases/s  "
                      f"peak RSS +{r['peak_rss_increase_mb']:5.1f} MB  model batches: teacher-forced "
                      f"{c['teacher_forced_batches']}, generate {c['generate_batches']}{extra}", flush=True)
            check = compare(results["ours"], results["naive"])
            rows.append({"editor": name, **check, **results})

    o = rows[0]["ours"] if rows else {}
    print()
    print(f"{args.model} LLaVA ({o.get('model_mb', 0):.2f} MB of fp32 weights), {args.cases} entity cases x "
          f"{o.get('probes', 0) // max(args.cases, 1)} probes, CPU, {args.threads} torch thread(s) per worker, "
          f"FT steps {'registry default' if args.steps is None else args.steps}"
          f"{', no generations (--no-generate)' if args.no_generate else ''}")
    print(f"memory: {o.get('memory_method', '?')}; each (editor, path) in its own fresh worker process ({ctx.get_start_method()})")
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
    print(f"total {time.perf_counter() - started:.0f} s")

    if args.json:
        def figures(r: dict) -> dict:
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

        summary = {
            "machine": {"cpus": os.cpu_count(), "threads_per_worker": args.threads, "platform": sys.platform,
                        "processor": platform.processor() or platform.machine()},
            "model": args.model, "cases": args.cases, "steps": args.steps, "generate": not args.no_generate,
            "scores_identical": ok,
            "editors": {r["editor"]: figures(r) for r in rows},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if not ok:
        raise AssertionError("ours and the naive loop disagree on some probe scores (listed above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
