"""Run lmms-eval with the `edited` model and the mmke-eval tasks, in this process.

The CLI is a thin shell over ``evaluate``. Unlike lmms-eval's own CLI, failures raise (so the
process exits non-zero), the task folder is added without --include_path, and the protocol the
wrapper used plus the cases the loaders skipped are written into the results file.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmke_eval.resources import tasks_dir

# The built-in default: the generated mini benchmark and the shipped world model (issue 4).
DEFAULT_TASKS = "mmke_mini"
DEFAULT_MODEL = "llava_hf"


def default_model_args() -> str:
    from mmke_eval.mini import WORLD_MODEL_DIR as world

    if not (world / "config.json").is_file():
        raise EvaluationError(
            f"the built-in world model is missing ({world}); retrain it with "
            "`python -m mmke_eval.mini.train_world --out mmke_eval/mini/world_model`, or pass --model_args"
        )
    return f"pretrained={world},device=cpu,device_map=cpu,dtype=float32"


def model_args_for(model: str, given: str | None) -> str:
    """The backend's --model_args: the world model's by default; options without ``pretrained=``
    (``sequential=true``, ``i_loc_k=1``, ...) are added to the default instead of replacing it."""
    if model != DEFAULT_MODEL:
        return given or ""
    if given and any(part.strip().startswith("pretrained=") for part in given.split(",")):
        return given
    return ",".join(part for part in (default_model_args(), given) if part)


class EvaluationError(RuntimeError):
    pass


JOURNAL_NAME = "cases.jsonl"


@dataclass
class RunSpec:
    tasks: str = DEFAULT_TASKS
    model: str = DEFAULT_MODEL
    model_args: str = ""
    editor: str = "none"
    editor_args: dict[str, str] = field(default_factory=dict)
    output_path: str | None = None
    lmms_eval_args: list[str] = field(default_factory=list)  # passed through verbatim
    wait_for_lock: bool = False  # another run holds output_path: wait for it (else refused; mmke_eval/run_lock.py)

    @property
    def journal(self) -> Path | None:
        """Where finished cases are written as they finish (a rerun resumes from it)."""
        return Path(self.output_path) / JOURNAL_NAME if self.output_path else None

    def wrapper_model_args(self) -> str:
        parts = [f"base={self.model}", f"editor={self.editor}"]
        if self.model_args:
            parts.append(self.model_args)
        parts += [f"editor.{key}={value}" for key, value in self.editor_args.items()]
        if self.journal is not None and not any(p.strip().startswith("journal=") for p in self.model_args.split(",")):
            parts.append(f"journal={self.journal}")
        return ",".join(parts)

    def argv(self) -> list[str]:
        """lmms-eval arguments, without --include_path (see ``include_paths``)."""
        argv = ["--model", "edited", "--model_args", self.wrapper_model_args(), "--tasks", self.tasks]
        if self.output_path:
            argv += ["--output_path", self.output_path]
            # Per-case scores (lmms-eval's samples files) are what `mmke-eval compare` reads.
            if not {"--log_samples", "--predict_only"} & set(self.lmms_eval_args):
                argv.append("--log_samples")
        return argv + _without_include_paths(self.lmms_eval_args)

    def include_paths(self) -> list[str]:
        """Our task folder first, then any --include_path the user gave (lmms-eval's CLI keeps one)."""
        return [str(tasks_dir())] + _include_paths(self.lmms_eval_args)


def _include_paths(args: list[str]) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--include_path"] + [
        arg.split("=", 1)[1] for arg in args if arg.startswith("--include_path=")
    ]


def _without_include_paths(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--include_path":
            skip = True
        elif not arg.startswith("--include_path="):
            kept.append(arg)
    return kept


def parse_key_values(text: str, what: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; a malformed item names itself."""
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EvaluationError(f"{what}: expected key=value, got {item!r}")
        values[key.strip()] = value.strip()
    return values


def editor_args_for(editors: list[str], values: dict[str, str]) -> dict[str, dict[str, str]]:
    """Split --editor_args among editors: ``k=v`` goes to every editor, ``EDITOR.k=v`` to one."""
    per_editor: dict[str, dict[str, str]] = {editor: {} for editor in editors}
    for key, value in values.items():
        name, dot, field_name = key.partition(".")
        if not dot:
            for args in per_editor.values():
                args[key] = value
        elif name in per_editor:
            per_editor[name][field_name] = value
        else:
            raise EvaluationError(f"--editor_args {key}={value}: editor {name!r} is not among --editor {','.join(editors)}")
    return per_editor


def root_cause(err: BaseException) -> BaseException:
    """The error behind lmms-eval's retry wrappers (tenacity.RetryError) and re-raises."""
    seen = set()
    while id(err) not in seen and not getattr(err, "is_root_cause", False):
        seen.add(id(err))
        last_attempt = getattr(err, "last_attempt", None)  # tenacity.RetryError
        if last_attempt is not None and last_attempt.exception() is not None:
            err = last_attempt.exception()
        elif err.__cause__ is not None:
            err = err.__cause__
        else:
            break
    return err


def evaluate(spec: RunSpec) -> dict[str, Any] | None:
    """Run one evaluation; return lmms-eval's results dict (with an added "mmke" section).

    In several processes (torchrun / accelerate launch) every process calls this; process 0
    returns the results of the whole run and writes the files, the others return None.
    Process 0 holds the output folder's lock while it runs (mmke_eval/run_lock.py)."""
    from contextlib import nullcontext

    from mmke_eval import parallel, run_lock

    owner = spec.output_path and parallel.world()[0] == 0
    with run_lock.holding(spec.output_path, wait=spec.wait_for_lock) if owner else nullcontext():
        return _evaluate(spec)


def _evaluate(spec: RunSpec) -> dict[str, Any] | None:
    import lmms_eval.__main__ as lmms_main
    from loguru import logger as eval_logger

    from mmke_eval import parallel, wrapper
    from mmke_eval.data import source
    from mmke_eval.lmms_plugin import install_fixes
    from mmke_eval.report.rows import task_cards

    verbosity = os.environ.get("MMKE_VERBOSITY", "WARNING")
    eval_logger.remove()
    eval_logger.add(sys.stderr, level=verbosity)
    args = _parse_lmms_args(lmms_main, spec.argv() + ["--verbosity", verbosity])
    args.include_path = spec.include_paths()  # lmms-eval's TaskManager takes a list
    install_fixes()  # task YAMLs elsewhere can include ours by package path (README, "Adding a task")
    wrapper.RAISE_ERRORS = True  # errors reach the CLI, which reports them and exits non-zero
    wrapper.LAST_PROTOCOL.clear()
    started = time.time()
    try:
        outcome = lmms_main.cli_evaluate_single(args)
    except SystemExit as err:  # argparse inside lmms-eval
        raise EvaluationError(f"lmms-eval rejected the arguments {spec.argv()} (exit {err.code})") from None
    # Every process takes part (process 0 gets every process's cases; the others None).
    protocol = wrapper.gather_protocol()
    rank, world_size = parallel.world()
    results = outcome[0] if outcome else None
    if rank != 0:
        return None
    if results is None:
        raise EvaluationError("lmms-eval returned no results (see the log above)")
    padding = ((protocol or {}).get("data_parallel") or {}).pop("_padding_doc_ids", {})
    _without_padding(results, padding)
    for key, report in source.last_skip_reports().items():
        print(f"mmke-eval: {'/'.join(key)}: {report.summary()}", file=sys.stderr)
    results["mmke"] = {
        "model_args": spec.wrapper_model_args(),
        **json.loads(json.dumps(protocol or {}, default=str)),
        # the tasks' source cards, so that a report made on another machine knows each task's family and subset
        "cards": task_cards(results),
        "skipped_cases": {"/".join(key): asdict(report) for key, report in source.last_skip_reports().items()},
        "data": {"/".join(key): record for key, record in source.last_data_records().items()},
        "provenance": provenance(),
    }
    for task, summary in results["mmke"].get("editor_report", {}).items():
        if summary.get("note"):
            print(f"mmke-eval: {task}: {summary['note']}", file=sys.stderr)
    for warning in results["mmke"].get("editor", {}).get("warnings", []):
        print(f"mmke-eval: WARNING: {warning}", file=sys.stderr)
    if spec.output_path:
        _add_to_results_file(Path(spec.output_path), started, results["mmke"], results.get("n-samples"))
        _drop_padding_samples(Path(spec.output_path), started, padding)
    return results


def _without_padding(results: dict, padding: dict[str, list[int]]) -> None:
    """lmms-eval counts a multi-process run's filler documents (mmke_eval/parallel.py) as samples:
    count only the real ones, as one process does."""
    for task, ids in padding.items():
        counts = (results.get("n-samples") or {}).get(task)
        for key in ("original", "effective"):
            if isinstance(counts, dict) and isinstance(counts.get(key), int):
                counts[key] -= len(ids)


def _drop_padding_samples(output_path: Path, since: float, padding: dict[str, list[int]]) -> None:
    """The filler documents' lines out of lmms-eval's samples files (--log_samples)."""
    for task, ids in padding.items():
        drop = set(ids)
        for path in output_path.rglob(f"*_samples_{task}.jsonl"):
            if path.stat().st_mtime < since - 1:
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if not line.strip() or json.loads(line).get("doc_id") not in drop]
            if len(kept) != len(lines):
                path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _parse_lmms_args(lmms_main, argv: list[str]):
    saved = sys.argv
    sys.argv = ["lmms-eval"] + argv
    try:
        _, args = lmms_main.parse_eval_args()
    finally:
        sys.argv = saved
    return args


def _add_to_results_file(output_path: Path, since: float, section: dict, n_samples: dict | None = None) -> None:
    """lmms-eval has already written <output>/<model>/<date>_results.json: add our section, and
    make the file valid JSON (lmms-eval writes NaN for a metric no case scored)."""
    candidates = [p for p in output_path.rglob("*_results.json") if p.stat().st_mtime >= since - 1]
    if not candidates:
        raise EvaluationError(f"no results file was written under {output_path}")
    path = max(candidates, key=lambda p: p.stat().st_mtime)
    data = json.loads(path.read_text())
    data["mmke"] = section
    if n_samples is not None:
        data["n-samples"] = n_samples
    nulls: dict[str, str] = {}
    data = without_nan(data, nulls)
    if nulls:
        data["mmke"]["nulls"] = nulls
    path.write_text(json.dumps(data, indent=2, default=str, allow_nan=False))


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
