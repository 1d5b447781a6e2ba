"""The training loop of a learned editor.

The cases come from the train split of every named task (its source card with ``split: train``);
the last ``val_cases`` of them are held out for validation. One case per step, in a seeded order
that depends only on the step (so a resumed run sees the same cases); validation every
``val_every`` steps; the run stops at ``max_steps`` or after ``patience`` steps without a better
validation loss. The folder gets the best step's checkpoint (``editor.safetensors`` +
``editor.json``), ``train_log.jsonl`` (one line per validation), and ``resume.safetensors`` (the
last state: networks, optimizer, best so far, history and the random number generators), from
which an interrupted run continues when started again with the same command. A folder holding
another run (other editor, settings, model or data) is refused.
"""

from __future__ import annotations

import json
import random
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from editors.learned import META_FILE, LearnedEditor, TrainingExample
from mmke_eval.data.schema import EditCase
from mmke_eval.journal import digest
from mmke_eval.training.data import case_order, training_example
from mmke_eval.training.errors import TrainingError
from mmke_eval.training.state import (PICKLED_RESUME_FILE, RESUME_FILE, read_training_state, restore_rng_states,
                                      write_training_state)

LOG_FILE = "train_log.jsonl"


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


def learned_editor_names() -> list[str]:
    from mmke_eval import registry

    return [name for name in registry.editor_names() if issubclass(registry.editor_class(name), LearnedEditor)]
