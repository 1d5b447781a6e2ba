"""One editor's evaluation through lmms-eval, in this process: ``run_editor``.

It builds the `edited` model from a typed ``EditedConfig`` (no model_args string, no
``sys.argv``), activates the run's context for the task hooks (mmke_eval/run_context.py), calls
``lmms_eval.evaluator.simple_evaluate`` with the model instance, and writes lmms-eval's results and
samples files itself (their paths are known, never searched for) with our ``mmke`` section: the
protocol the model used, the cases the loaders skipped, the data read, provenance. Failures raise.
``mmke_eval.evaluate`` (mmke_eval/api.py) runs it once per editor.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mmke_eval import parallel, run_context
from mmke_eval.config import EditedConfig
from mmke_eval.errors import EvaluationError

# The built-in default: the generated mini benchmark and the shipped world model.
DEFAULT_TASKS = "mmke_mini"
DEFAULT_MODEL = "llava_hf"
JOURNAL_NAME = "cases.jsonl"
LMMS_EVAL_TIMEZONE = "Asia/Singapore"  # lmms-eval's CLI default: the date in the results file names


def default_model_args(world: str = "base") -> str:
    """The built-in model's --model_args: the shipped world model of ``world`` ("base", or
    "lifelong": the lifelong-scale world's)."""
    from mmke_eval.mini import WORLD_MODELS

    folder = WORLD_MODELS[world]
    if not (folder / "config.json").is_file():
        if world == "lifelong":
            raise EvaluationError(
                f"the lifelong world's model is not shipped yet ({folder}): no training run has reached the knowledge "
                "bar (docs/mmke-mini.md, \"The lifelong world\"); train one with `python -m mmke_eval.mini.train_world "
                "--world lifelong ...` and pass --model_args pretrained=DIR"
            )
        raise EvaluationError(
            f"the built-in world model is missing ({folder}); retrain it with "
            "`python -m mmke_eval.mini.train_world --out mmke_eval/mini/world_model`, or pass --model_args"
        )
    return f"pretrained={folder},device=cpu,device_map=cpu,dtype=float32"


def built_in_world(task_cards: dict[str, dict]) -> str:
    """Which shipped world model the built-in default runs ``task_cards`` ({task: its source card})
    on: a card's ``world_model`` ("lifelong"), else the base world's. Tasks of both worlds at once
    are refused: no one model knows both."""
    worlds = {task: card.get("world_model", "base") for task, card in task_cards.items()}
    for task, world in worlds.items():
        if world not in ("base", "lifelong"):
            raise EvaluationError(f"task {task}: its source card's world_model {world!r} is neither base nor lifelong")
    if len(set(worlds.values())) > 1:
        lifelong = sorted(t for t, w in worlds.items() if w == "lifelong")
        raise EvaluationError(f"{', '.join(lifelong)} run on the lifelong world's model, the other tasks on the base world's: "
                              "run them separately, or pass --model_args pretrained=...")
    return next(iter(worlds.values()), "base")


def world_for(model: str, given: str | dict | None, task_cards) -> str:
    """The world whose shipped model the run uses: built_in_world's for the built-in default model
    when ``given`` (the model_args, text or dict) has no ``pretrained`` (``task_cards()``: {task:
    source card}, read only then), else "base" (unused: the model is the user's)."""
    if isinstance(given, dict):
        has_pretrained = "pretrained" in given
    else:
        has_pretrained = any(part.strip().startswith("pretrained=") for part in (given or "").split(","))
    return "base" if model != DEFAULT_MODEL or has_pretrained else built_in_world(task_cards())


def model_args_for(model: str, given: str | None, world: str = "base") -> str:
    """The backend's --model_args: the world model's by default (``world``: built_in_world's);
    options without ``pretrained=`` (``sequential=true``, ``i_loc_k=1``, ...) are added to the
    default instead of replacing it."""
    if model != DEFAULT_MODEL:
        return given or ""
    if given and any(part.strip().startswith("pretrained=") for part in given.split(",")):
        return given
    return ",".join(part for part in (default_model_args(world), given) if part)


def run_editor(config: EditedConfig, tasks: list[str], *, include_paths: list[str], output_path: Path | None,
               record_model_args: str, log_samples: bool, verbosity: str = "WARNING",
               timezone: str = LMMS_EVAL_TIMEZONE, **simple_evaluate_kwargs: Any) -> dict[str, Any] | None:
    """Evaluate ``config`` on ``tasks``; lmms-eval's results dict with our "mmke" section.

    ``record_model_args``: the model_args string the results record (lmms-eval's ``config``,
    which reports read), as ``lmms-eval --model edited`` would have it. In several processes
    every process calls this; process 0 returns the whole run's results and writes the files,
    the others return None."""
    import torch.distributed as dist
    from lmms_eval import utils as lmms_utils
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.tasks import TaskManager

    from mmke_eval.lmms import patches
    from mmke_eval.lmms.model import EditedLMM
    from mmke_eval.lmms.taskfiles import task_cards

    patches.install_task_loading()  # task YAMLs elsewhere can include ours by package path
    if log_samples and output_path is None:
        raise EvaluationError("log_samples needs an output_path")
    with run_context.activated(config.context):
        lm = EditedLMM(config)
        task_manager = TaskManager(verbosity, include_path=include_paths, model_name="edited")
        names = task_manager.match_tasks(tasks)
        missing = [task for task in tasks if task not in names and "*" not in task]
        if missing:
            raise EvaluationError(f"tasks not found by lmms-eval: {', '.join(missing)}")
        tracker = EvaluationTracker(output_path=str(output_path) if output_path else None)
        datetime_str = lmms_utils.get_datetime_str(timezone=timezone)
        results = simple_evaluate(
            model=lm, model_args=record_model_args, tasks=names, task_manager=task_manager, evaluation_tracker=tracker,
            log_samples=log_samples, verbosity=verbosity, datetime_str=datetime_str,
            distributed_executor_backend="torchrun" if dist.is_available() and dist.is_initialized() else "accelerate",
            **simple_evaluate_kwargs)
        report = lm.gather_report()  # every process takes part (process 0 gets every process's cases)
    rank, _ = parallel.world()
    if rank != 0:
        return None
    if results is None:
        raise EvaluationError("lmms-eval returned no results (see the log above)")
    results["config"]["model"] = "edited"  # the registry name, as lmms-eval's CLI records it (not the class name)
    padding = ((report or {}).get("data_parallel") or {}).pop("_padding_doc_ids", {})
    samples = results.pop("samples", None)
    _without_padding(results, samples, padding)
    context = config.context
    for key, skipped in context.skip_reports.items():
        print(f"mmke-eval: {'/'.join(key)}: {skipped.summary()}", file=sys.stderr)
    results["mmke"] = {
        "model_args": record_model_args,
        **json.loads(json.dumps(report or {}, default=str)),
        # the tasks' source cards, so that a report made on another machine knows each task's family and subset
        "cards": task_cards(results),
        "skipped_cases": {"/".join(key): asdict(skipped) for key, skipped in context.skip_reports.items()},
        "data": {"/".join(key): record for key, record in context.data_records.items()},
        "provenance": provenance(),
    }
    for task, summary in results["mmke"].get("editor_report", {}).items():
        if summary.get("note"):
            print(f"mmke-eval: {task}: {summary['note']}", file=sys.stderr)
    for warning in results["mmke"].get("editor", {}).get("warnings", []):
        print(f"mmke-eval: WARNING: {warning}", file=sys.stderr)
    if output_path is not None:
        _save(tracker, results, samples, datetime_str, log_samples)
    return results


def _without_padding(results: dict, samples: dict | None, padding: dict[str, list[int]]) -> None:
    """lmms-eval counts a multi-process run's filler documents (mmke_eval/parallel.py) as samples:
    count and keep only the real ones, as one process does."""
    for task, ids in padding.items():
        counts = (results.get("n-samples") or {}).get(task)
        for key in ("original", "effective"):
            if isinstance(counts, dict) and isinstance(counts.get(key), int):
                counts[key] -= len(ids)
        if samples and task in samples:
            drop = set(ids)
            samples[task] = [sample for sample in samples[task] if sample.get("doc_id") not in drop]


def _save(tracker, results: dict, samples: dict | None, datetime_str: str, log_samples: bool) -> None:
    """lmms-eval's results file (valid JSON: a metric no case scored is null, and ``mmke.nulls``
    says why) and, with ``log_samples``, its samples files; the tracker logs a failure and goes
    on, so the file is checked."""
    nulls: dict[str, str] = {}
    record = without_nan(results, nulls)
    if nulls:
        record["mmke"]["nulls"] = nulls
    tracker.save_results_aggregated(results=record, samples=samples if log_samples else None, datetime_str=datetime_str)
    path = Path(tracker.output_path) / tracker.general_config_tracker.model_name_sanitized / f"{tracker.date_id}_results.json"
    if not path.is_file():
        raise EvaluationError(f"lmms-eval could not write the results file {path} (see the log above)")
    if log_samples:
        for task_name in results["configs"]:
            tracker.save_results_samples(task_name=task_name, samples=samples[task_name])


def without_nan(value: Any, nulls: dict[str, str], where: str = "") -> Any:
    """``value`` with every NaN/inf number replaced by None; ``nulls`` gets each one's path and reason."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        nulls[where] = "no value: no case of the task was scored for this metric" if value != value else f"{value}"
        return None
    if isinstance(value, dict):
        return {key: without_nan(item, nulls, f"{where}/{key}" if where else str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nan(item, nulls, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def provenance() -> dict[str, Any]:
    """Package versions, and the git revision when mmke-eval runs from a checkout."""
    import subprocess

    from mmke_eval.resources import package_version

    versions = {package: package_version(package)
                for package in ("mmke-eval", "lmms-eval", "torch", "transformers", "datasets", "sentence-transformers")}
    record: dict[str, Any] = {"versions": versions, "python": sys.version.split()[0]}
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / ".git").exists():
        def git(*args: str) -> str:
            done = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=20)
            return done.stdout.strip() if done.returncode == 0 else ""

        revision = git("rev-parse", "HEAD")
        if revision:
            record["git"] = {"revision": revision, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    return record
