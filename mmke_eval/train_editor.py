"""`mmke-eval train-editor`: train a learned editor (SERAC, MEND, KE) on a benchmark's train split.

    mmke-eval train-editor --editor mend --tasks mmke_mini --output_path ckpt/mend
    mmke-eval train-editor --editor serac --model llava_hf --model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cuda,device_map=cuda,dtype=float32 \\
        --tasks mmke_entity --data /data/MMKE --output_path ckpt/serac_llava

The cases come from the train split of every named task (its source card with ``split: train``);
the last ``val_cases`` of them are held out for validation. One case per step, in a seeded order
that depends only on the step (so a resumed run sees the same cases); validation every
``val_every`` steps; the run stops at ``max_steps`` or after ``patience`` steps without a better
validation loss. The folder gets the best step's checkpoint (``editor.safetensors`` +
``editor.json``), ``train_log.jsonl`` (one line per validation), and ``resume.safetensors`` (the
last state: networks, optimizer, best so far, history and the random number generators), from
which an interrupted run continues when started again with the same command. A folder holding
another run (other editor, settings, model or data) is refused.

The training state is tensors (safetensors) plus JSON in the file's header: reading it runs no code,
so a folder someone hands you is safe to resume in. A pickled ``resume.pt`` (what earlier versions
wrote, loaded with a full unpickler) is refused unread, naming the file.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from editors.base import EditRequest
from editors.learned import META_FILE, LearnedEditor, TrainingExample
from mmke_eval import families
from mmke_eval.adapters.base import Query
from mmke_eval.data.images import load_optional_image
from mmke_eval.data.schema import EditCase, ProbeDoc
from mmke_eval.journal import digest, file_digest

RESUME_FILE = "resume.safetensors"
PICKLED_RESUME_FILE = "resume.pt"  # earlier versions' pickle: never loaded (unpickling can run code)
LOG_FILE = "train_log.jsonl"
STATE_FORMAT = "mmke-eval training state"
STATE_VERSION = 1


class TrainingError(RuntimeError):
    pass


# -- the data ------------------------------------------------------------------------------------
def task_sources(task_names: str, extra_dirs: list[str] = ()) -> list[tuple[str, dict, str]]:
    """(task, source card, prompt template) of every named task or group member."""
    import yaml

    from mmke_eval.cli import _IgnoreTagsLoader, task_index

    tasks, groups = task_index(extra_dirs)
    pending, found = [t.strip() for t in task_names.split(",") if t.strip()], []
    while pending:
        name = pending.pop(0)
        if name in groups:
            pending = groups[name] + pending
            continue
        if name not in tasks:
            raise TrainingError(f"--tasks: unknown task {name!r} (see `mmke-eval list`)")
        spec = _task_spec(tasks[name], _IgnoreTagsLoader, yaml)
        template = ((spec.get("lmms_eval_specific_kwargs") or {}).get("default") or {}).get("prompt_template", "mmke/probe.jinja")
        cards = ((spec.get("dataset_kwargs") or {}).get("data_files") or {}).values()
        for card in cards:
            found.append((name, json.loads((tasks[name].parent / card).read_text()), template))
    if not found:
        raise TrainingError(f"--tasks {task_names}: no task with a source card")
    return found


def _task_spec(path: Path, loader, yaml) -> dict:
    """The task YAML with its ``include`` chain resolved (later keys win)."""
    with open(path) as f:
        spec = yaml.load(f, Loader=loader) or {}
    if spec.get("include"):
        base = _task_spec((path.parent / spec["include"]).resolve(), loader, yaml)
        spec = {**base, **{k: v for k, v in spec.items() if k != "include"}}
    return spec


def training_cases(sources: list[tuple[str, dict, str]]) -> tuple[list[tuple[EditCase, str]], dict[str, Any]]:
    """The train-split cases of the tasks (each with its prompt template) and a record of the data."""
    from mmke_eval.data import source

    cases, files, seen = [], {}, set()
    for task, card, template in sources:
        family = families.of_card(card)
        train_card = family.train_card(card)
        key = json.dumps(train_card, sort_keys=True)
        if key in seen:  # VLKEB's tasks share one train.json
            continue
        seen.add(key)
        root = source.resolve_root(train_card, family)
        loaded, report = family.load(root, train_card)
        cases += [(case, template) for case in loaded]
        for path in report.files:
            if "train" in Path(path).name or "/train" in path:
                files[path] = file_digest(path)
    if not cases:
        raise TrainingError("the train splits of the tasks hold no case")
    record = {"tasks": sorted({task for task, _, _ in sources}), "files": files, "cases": len(cases),
              "sha256": digest({"files": sorted(files.values()), "cases": [c.case_id for c, _ in cases]})}
    return cases, record


# What the learned editors' edit loss is computed on (``train_objective``):
#   reference: the reference trainers' (MMKE-Bench, VLKEB, EasyEdit MultimodalTrainer) ``edit_outer``
#              (the rephrased question on the edit image) and ``edit_outer_image`` (the edit question
#              on the rephrase image), with the new target; the scored T-Rel/I-Rel probes never;
#   probes:    every scored probe that is neither locality nor portability (ours before issue 23).
# Locality probes are the locality inputs either way.
TRAIN_OBJECTIVES = ("reference", "probes")
REFERENCE_IN_SCOPE = ("edit_outer", "edit_outer_image")


def training_example(case: EditCase, template: str, objective: str = "reference") -> TrainingExample:
    """The case's in-scope inputs with the new answer (``objective``, above) and its locality probes."""
    from mmke_eval.prompts import TRAINING_PATH, edit_prompts, probe_prompt
    from mmke_eval.templates import render

    if objective not in TRAIN_OBJECTIVES:
        raise TrainingError(f"train_objective={objective!r}: expected one of {', '.join(TRAIN_OBJECTIVES)}")
    family = families.get(case.family)
    in_scope, in_scope_kinds, locality = [], [], []
    for doc in ProbeDoc.rows(case):
        kind = family.probe(doc["probe"])
        # The prompts the reference trains on (its trainer path, where a family has several).
        query = Query(probe_prompt(doc, template, TRAINING_PATH), load_optional_image(doc["image"], case.case_id), doc["answer"])
        if kind.is_locality:
            locality.append(query)
        elif not kind.portability and objective == "probes":
            in_scope.append(query)
            in_scope_kinds.append(kind.name)
    prompt, rephrase_prompt = edit_prompts(case.family, case.knowledge_type, case.prompt, case.rephrase_prompt, TRAINING_PATH)
    if objective == "reference":
        # The edit request's questions as the trainer path builds them (wrapped where the family
        # declares an edit template, as EasyEdit's E-VQA), else through the task's template.
        wrapped = (prompt, rephrase_prompt) != (case.prompt, case.rephrase_prompt)
        for name, question, image in zip(REFERENCE_IN_SCOPE, (rephrase_prompt, prompt), (case.image, case.rephrase_image)):
            if question and (image or name == "edit_outer"):
                text = question if wrapped else render(template, question=question)
                in_scope.append(Query(text, load_optional_image(image, case.case_id), case.target))
                in_scope_kinds.append(name)
        if not in_scope:
            raise TrainingError(f"case {case.case_id}: train_objective=reference trains on the rephrased question and the "
                                "rephrase image, and this case has neither; use --editor_args train_objective=probes")
    edit = EditRequest(
        case_id=case.case_id, prompt=prompt, target=case.target,
        image=load_optional_image(case.image, case.case_id), original=case.original,
        rephrase_prompt=rephrase_prompt, rephrase_image=load_optional_image(case.rephrase_image, case.case_id),
        knowledge_type=case.knowledge_type, train_file=case.train_file, family=case.family,
    )
    return TrainingExample(case.case_id, edit, in_scope, locality, in_scope_kinds)


def case_order(step: int, n: int, seed: int) -> int:
    """The train case of ``step``: a fresh seeded permutation every pass over the cases."""
    epoch, within = divmod(step, n)
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order[within]


# -- the loop ------------------------------------------------------------------------------------
def train(editor: LearnedEditor, adapter, cases: list[tuple[EditCase, str]], data: dict[str, Any], out: Path,
          command: str = "", restart: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``editor`` on ``cases``; write the checkpoint into ``out``; return the training record."""
    cfg = editor.config
    if len(cases) < cfg.val_cases + 1:
        raise TrainingError(f"{len(cases)} train cases: too few to hold out val_cases={cfg.val_cases} and train on the rest")
    n_val = cfg.val_cases
    train_cases, val_cases = cases[: len(cases) - n_val], cases[len(cases) - n_val :]

    @lru_cache(maxsize=512)
    def example(index: int) -> TrainingExample:
        return training_example(*train_cases[index], objective=cfg.train_objective)

    val_examples = [training_example(*c, objective=cfg.train_objective) for c in val_cases]
    editor.ensure_ready(adapter, for_training=True)
    for p in adapter.model.parameters():
        p.requires_grad_(False)  # the base model is frozen; editors ask for the gradients they need
    run_key = digest({"editor": editor.name, "config": cfg.architecture(), "seed": cfg.seed, "val_cases": n_val,
                      **({"train_objective": cfg.train_objective} if cfg.train_objective != "probes" else {}),
                      "base": editor.checkpoint_meta(adapter, {}, {})["base_model"], "data": data["sha256"]})
    optimizer, scheduler = editor.build_optimizer()
    state = {"step": 0, "best_loss": float("inf"), "best_step": 0, "history": [], "seconds": 0.0, "finished": False}
    best = {k: v.detach().clone() for k, v in editor.learned.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    resume_path = out / RESUME_FILE
    pickled = out / PICKLED_RESUME_FILE
    if restart:
        pickled.unlink(missing_ok=True)
    elif pickled.is_file():
        raise TrainingError(f"{pickled}: a pickled training state (written by an earlier mmke-eval, or put there by someone "
                            "else); it is not loaded, because unpickling a file can run any code. Use --restart to train "
                            f"afresh in {out} (the file is deleted), or another --output_path")
    if resume_path.is_file() and not restart:
        saved = read_training_state(resume_path)
        if saved["run_key"] != run_key:
            raise TrainingError(f"{out} holds another training run (other editor, settings, base model or data); "
                                "use another --output_path, or --restart to train afresh there")
        try:
            editor.learned.load_state_dict({k: v.to(adapter.device) for k, v in saved["learned"].items()})
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(saved["scheduler"])
            restore_rng_states(saved["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise TrainingError(f"{resume_path}: does not fit this run's networks ({type(err).__name__}: {str(err)[:200]}); "
                                f"run the same command with --restart to train afresh in {out}") from None
        best, state = {k: v.to(adapter.device) for k, v in saved["best"].items()}, saved["state"]
        print(f"mmke-eval train-editor: resuming {out} at step {state['step']}", file=sys.stderr)
    elif (out / META_FILE).is_file() and not restart and not resume_path.is_file():
        raise TrainingError(f"{out} already holds a checkpoint; use another --output_path, or --restart to train afresh there")
    else:  # a fresh run: Python's and NumPy's generators seeded too (torch's was, before the networks were built)
        import numpy as np

        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
    if state["finished"]:
        print(f"mmke-eval train-editor: {out} is already trained (best step {state['best_step']})", file=sys.stderr)
        return _record(state, n_val, len(train_cases))

    started = time.perf_counter() - state["seconds"]
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc=f"train {editor.name}", disable=not progress)
    running: list[float] = []
    editor.learned.train()
    while state["step"] < cfg.max_steps:
        loss, parts = editor.meta_loss(adapter, example(case_order(state["step"], len(train_cases), cfg.seed)))
        if not torch.isfinite(loss):
            raise TrainingError(f"step {state['step']}: the meta-loss is {loss.item()} ({parts}); lower meta_lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(editor.learned.parameters(), cfg.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        editor.after_step()
        state["step"] += 1
        running.append(float(loss.detach()))
        bar.update(1)
        if state["step"] % cfg.val_every == 0 or state["step"] == cfg.max_steps:
            val = validate(editor, adapter, val_examples or [example(i) for i in range(min(4, len(train_cases)))])
            score = val[editor.validation_key]
            if score < state["best_loss"]:
                state["best_loss"], state["best_step"] = score, state["step"]
                best = {k: v.detach().clone() for k, v in editor.learned.state_dict().items()}
            entry = {"step": state["step"], "train_loss": round(sum(running) / len(running), 5),
                     **{f"val_{k}": round(v, 5) for k, v in val.items()}, "seconds": round(time.perf_counter() - started, 1)}
            running.clear()
            state["history"].append(entry)
            with open(out / LOG_FILE, "a") as log:
                log.write(json.dumps(entry) + "\n")
            bar.set_postfix(train=entry["train_loss"], val=round(score, 4), best=state["best_step"])
            stop = state["step"] - state["best_step"] >= cfg.patience
            state["finished"] = stop or state["step"] >= cfg.max_steps
            state["seconds"] = time.perf_counter() - started
            write_training_state(resume_path, run_key, editor.learned.state_dict(), optimizer, best, state, scheduler)
            if stop:
                print(f"\nmmke-eval train-editor: early stop at step {state['step']} (no better validation loss "
                      f"for {cfg.patience} steps)", file=sys.stderr)
                break
    bar.close()
    editor.learned.load_state_dict(best)
    editor.learned.eval()
    record = _record(state, n_val, len(train_cases))
    record["command"] = command
    editor.save_checkpoint(out, editor.checkpoint_meta(adapter, data, record))
    return record


# -- the training state (resume.safetensors) -----------------------------------------------------
def write_training_state(path: Path, run_key: str, learned: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                         best: dict[str, torch.Tensor], state: dict[str, Any], scheduler=None) -> None:
    """Tensors under ``learned/``, ``best/``, ``optimizer/<param>/<name>`` and ``rng/``; everything
    else (the loop's state, the optimizer's and the rate scheduler's settings, Python's and NumPy's generators) as JSON in
    the header. Written to a temporary file and renamed, so a crash leaves the previous state."""
    from safetensors.torch import save_file

    def plain(t: torch.Tensor) -> torch.Tensor:  # safetensors refuses shared or strided storage
        return t.detach().to("cpu", copy=True).contiguous()

    tensors = {f"learned/{k}": plain(v) for k, v in learned.items()}
    tensors.update({f"best/{k}": plain(v) for k, v in best.items()})
    opt = optimizer.state_dict()
    other: dict[str, dict[str, Any]] = {}
    for index, entries in opt["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = plain(value)
            else:
                other.setdefault(str(index), {})[name] = value
    rng: dict[str, Any] = {"python": random.getstate(), "numpy": None, "cuda": 0}
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_states = torch.cuda.get_rng_state_all()
        rng["cuda"] = len(cuda_states)
        tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(cuda_states)})
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    rng["numpy"] = [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    header = {"run_key": run_key, "state": state, "optimizer": {"param_groups": opt["param_groups"], "state": other}, "rng": rng,
              "scheduler": scheduler.state_dict() if scheduler is not None else None}
    tmp = Path(str(path) + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT, "version": str(STATE_VERSION), "json": json.dumps(header)})
    tmp.replace(path)


def read_training_state(path: Path) -> dict[str, Any]:
    """What ``write_training_state`` wrote, tensors on the CPU: ``run_key``, ``learned``, ``best``,
    ``optimizer`` (a state dict), ``state`` and ``rng``. Nothing in the file is executed; a file that
    is not such a state is refused naming it, with the way out (``--restart``)."""
    from safetensors import SafetensorError, safe_open

    def refused(why: str) -> TrainingError:
        return TrainingError(f"{path}: not a readable mmke-eval training state ({why}); run the same command with --restart "
                             f"to train afresh in {path.parent}")

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != STATE_FORMAT or meta.get("version") != str(STATE_VERSION):
                raise refused(f"format {meta.get('format')!r} version {meta.get('version')!r}, expected {STATE_FORMAT!r} "
                              f"version {STATE_VERSION}")
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        header = json.loads(meta["json"])
        groups: dict[str, dict[str, torch.Tensor]] = {"learned": {}, "best": {}, "optimizer": {}, "rng": {}}
        for key, value in tensors.items():
            group, _, rest = key.partition("/")
            groups[group][rest] = value
        opt_state: dict[int, dict[str, Any]] = {}
        for key, value in groups["optimizer"].items():
            index, _, name = key.partition("/")
            opt_state.setdefault(int(index), {})[name] = value
        for index, entries in header["optimizer"]["state"].items():
            opt_state.setdefault(int(index), {}).update(entries)
        rng = {**header["rng"], "torch": groups["rng"]["torch"],
               "cuda_states": [groups["rng"][f"cuda/{i}"] for i in range(int(header["rng"]["cuda"]))]}
        return {"run_key": header["run_key"], "state": header["state"], "learned": groups["learned"], "best": groups["best"],
                "optimizer": {"state": opt_state, "param_groups": [_with_tuples(g) for g in header["optimizer"]["param_groups"]]},
                "rng": rng, "scheduler": header.get("scheduler")}
    except TrainingError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise refused(f"{type(err).__name__}: {str(err)[:200]}") from None


def _with_tuples(group: dict[str, Any]) -> dict[str, Any]:
    """JSON has no tuples: Adam's ``betas`` come back as the pair it saved."""
    return {k: tuple(v) if k == "betas" and isinstance(v, list) else v for k, v in group.items()}


def restore_rng_states(rng: dict[str, Any]) -> None:
    """Python's, NumPy's and torch's generators as they were when the state was saved (CUDA's where
    this machine has as many GPUs as the one that saved it)."""
    import numpy as np

    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda_states"] and torch.cuda.is_available() and torch.cuda.device_count() == len(rng["cuda_states"]):
        torch.cuda.set_rng_state_all(rng["cuda_states"])


def _record(state: dict, n_val: int, n_train: int) -> dict[str, Any]:
    return {"steps": state["step"], "best_step": state["best_step"], "best_val": state["best_loss"],
            "train_cases": n_train, "val_cases": n_val, "seconds": round(state["seconds"], 1),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def validate(editor: LearnedEditor, adapter, examples: list[TrainingExample]) -> dict[str, float]:
    """Mean meta-loss and its parts over ``examples`` (no update of the networks)."""
    editor.learned.eval()
    totals: dict[str, float] = {}
    try:
        for ex in examples:
            loss, parts = editor.meta_loss(adapter, ex)
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                totals[key] = totals.get(key, 0.0) + float(value)
    finally:
        editor.learned.train()
    return {k: v / len(examples) for k, v in totals.items()}


# -- the command ---------------------------------------------------------------------------------
def load_adapter(model: str, model_args: str | None):
    """The adapter over a loaded lmms-eval backend, as the ``edited`` model builds it."""
    from lmms_eval.models import get_model

    from mmke_eval import registry, runner
    from mmke_eval.protocol import check_device_map, check_gpu, check_pretrained

    args = runner.parse_key_values(runner.model_args_for(model, model_args), "--model_args")
    adapter_args = {k[len("adapter."):]: v for k, v in args.items() if k.startswith("adapter.")}
    base_args = {k: v for k, v in args.items() if not k.startswith("adapter.")}
    adapter_cls = registry.adapter_class(model)
    adapter_cls.check_backend(model)
    check_pretrained(base_args.get("pretrained"))
    backend_cls = get_model(model, force_simple=True)
    check_gpu(backend_cls, base_args)
    check_device_map(backend_cls, base_args)
    base = backend_cls(**base_args)
    return adapter_cls.from_lmms(base, **adapter_args)


def main(argv: list[str]) -> int:
    from mmke_eval import registry, runner

    parser = argparse.ArgumentParser(prog="mmke-eval train-editor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--editor", required=True, help="a learned editor: " + ", ".join(learned_editor_names()))
    parser.add_argument("--model", default=runner.DEFAULT_MODEL)
    parser.add_argument("--model_args", default=None)
    parser.add_argument("--tasks", default=runner.DEFAULT_TASKS, help="tasks or groups whose train split to train on")
    parser.add_argument("--data", default=None, help="local copy of the benchmark (as for evaluation)")
    parser.add_argument("--editor_args", default="", help="k=v,... (training options: max_steps, val_every, patience, val_cases, meta_lr, seed)")
    parser.add_argument("--cases", type=int, default=None, help="use only the first N train cases (a quick run)")
    parser.add_argument("--output_path", required=True, help="checkpoint folder")
    parser.add_argument("--restart", action="store_true", help="train afresh even if the folder holds a run")
    args = parser.parse_args(argv)
    note = getattr(registry.editor_class(args.editor), "training_note", "") if args.editor in registry.editor_names() else ""
    if note:
        raise TrainingError(f"--editor {args.editor}: {note}")
    if args.editor not in learned_editor_names():
        raise TrainingError(f"--editor {args.editor}: not a learned editor; learned editors: {', '.join(learned_editor_names())}")
    from mmke_eval.cli import data_variables, environment

    env: dict[str, str] = {}
    if args.data:
        data = Path(args.data).expanduser().resolve()
        if not data.is_dir():
            raise FileNotFoundError(f"--data {args.data}: no such folder")
        env = {name: str(data) for name in data_variables(args.tasks)}
    with environment(env):
        return _train_command(args, argv)


def _train_command(args: argparse.Namespace, argv: list[str]) -> int:
    from mmke_eval import registry, runner

    overrides = runner.parse_key_values(args.editor_args, "--editor_args")
    if "checkpoint" in overrides:
        raise TrainingError("--editor_args checkpoint=...: training writes a checkpoint (--output_path); it does not read one")
    registry.build_editor(args.editor, overrides=overrides)  # bad values fail before the model loads
    sources = task_sources(args.tasks)
    benchmark = training_benchmark(sources, args.tasks)
    adapter = load_adapter(args.model, args.model_args)
    # A family default may name a checkpoint to evaluate with (the world model's); training writes one.
    # The budget (max_steps, val_every, patience, val_cases) is the benchmark's reference one for this model.
    editor = registry.build_editor(args.editor, family=adapter.family, overrides={**overrides, "checkpoint": ""},
                                   benchmark=benchmark)
    cases, data = training_cases(sources)
    data = {**data, "benchmark": benchmark, "defaults_source": editor.defaults_source}
    if args.cases is not None:
        if args.cases < 2:
            raise TrainingError("--cases must be at least 2")
        cases = cases[: args.cases]
        data = {**data, "cases": len(cases), "sha256": digest([data["sha256"], args.cases])}
    command = "mmke-eval train-editor " + " ".join(shlex.quote(a) for a in argv)
    try:
        record = train(editor, adapter, cases, data, Path(args.output_path), command=command, restart=args.restart)
    except KeyboardInterrupt:
        saved = Path(args.output_path) / RESUME_FILE
        where = f"the state of the last validation step is in {saved}; run the same command to continue from it" \
            if saved.is_file() else "no validation step was reached, so nothing was saved"
        print(f"\nmmke-eval train-editor: interrupted; {where}", file=sys.stderr)
        return 130
    print(f"mmke-eval train-editor: {args.editor} trained {record['steps']} steps on {record['train_cases']} cases "
          f"(best step {record['best_step']}, validation {editor.validation_key} {record['best_val']:.4f}); checkpoint in {args.output_path}. "
          f"Use it with --editor {args.editor} --editor_args checkpoint={args.output_path}")
    return 0


def training_benchmark(sources: list[tuple[str, dict, str]], tasks: str) -> str:
    """The one benchmark family the tasks belong to: its reference budget is the default, so
    tasks of two families (each with its own budget) are refused."""
    found = sorted({families.of_card(card).name for _, card, _ in sources})
    if len(found) != 1:
        raise TrainingError(f"--tasks {tasks}: tasks of the benchmark families {', '.join(found)}; the training defaults "
                            "(budget) depend on the benchmark, so train on one family's tasks per run")
    return found[0]


def learned_editor_names() -> list[str]:
    from mmke_eval import registry

    return [name for name in registry.editor_names() if issubclass(registry.editor_class(name), LearnedEditor)]
