"""The Python API: ``mmke_eval.evaluate``, which the ``mmke-eval`` command is thin over.

    import mmke_eval
    results = mmke_eval.evaluate(tasks="mmke_mini", editors=["none", "ft_llm"],
                                 editor_args={"ft_llm": {"steps": 20}}, cases=5, output_path="out/")
    results["ft_llm"]["mmke"]["table"]   # the editor's rows of mmke_table.md

Everything a run needs travels in typed values: the model's configuration (mmke_eval/config.py)
and the run context the task loaders read (mmke_eval/run_context.py), activated for the run and
undone after it. No ``sys.argv``, no environment variable is written, no module global holds run
state; editor values may contain commas (they are never joined into a model_args string).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from mmke_eval import parallel, registry, runner
from mmke_eval.config import EditedConfig
from mmke_eval.errors import EvaluationError
from mmke_eval.protocol import (
    PROTOCOL_FIELDS,
    RUN_OPTIONS,
    Protocol,
    check_pretrained,
    refuse_misspelt_options,
)
from mmke_eval.run_context import RunContext

# lmms-eval's evaluation options mmke-eval forwards (``simple_evaluate`` keywords), and those it
# refuses because they would give wrong numbers with edit cases, with what to use instead.
FORWARDED_OPTIONS = ("batch_size", "max_batch_size", "device", "log_samples", "predict_only", "verbosity", "gen_kwargs",
                     "system_instruction", "apply_chat_template", "fewshot_as_multiturn", "num_fewshot", "write_out",
                     "check_integrity", "seed", "timezone", "process_docs_parallel", "bootstrap_iters")
REFUSED_OPTIONS = {
    "use_cache": "lmms-eval's response cache is keyed by the prompt text only (not the case's answers, images or "
    "edit), so it serves stale scores; finished cases are kept under --output_path and a rerun resumes from them",
    "limit": "it counts probe documents and would split an edit case; use --cases N (the first N edit cases of each task)",
    "offset": "it skips probe documents and would split an edit case; use --cases N",
    "config": "mmke-eval does not read lmms-eval config files (their keys would be ignored); run one with "
    "`LMMS_EVAL_PLUGINS=mmke_eval lmms-eval --config FILE` (docs/lmms-eval.md)",
}


def evaluate(tasks: str | list[str] = runner.DEFAULT_TASKS, model: str = runner.DEFAULT_MODEL,
             model_args: str | dict[str, Any] | None = None, editors: str | list[str] = "none",
             editor_args: dict[str, dict[str, Any]] | None = None, data: str | Path | None = None, cases: int | None = None,
             output_path: str | Path | None = None, include_paths: list[str] = (), wait_for_lock: bool = False,
             **lmms_eval_options: Any) -> dict[str, dict]:
    """Evaluate each editor on ``tasks``: {editor: lmms-eval's results dict with an "mmke" section}.

    ``model_args``: the backend's arguments and the protocol options (a dict, or lmms-eval's
    ``k=v,...`` string); for the default model without ``pretrained``, the shipped world model's.
    ``editor_args``: per editor, values overriding its registry defaults. ``data``: the data
    root of every task (over the source cards' variables); ``cases``: the first N edit cases of
    each task. With ``output_path``: ``<output_path>/<editor>/`` gets lmms-eval's results and
    samples files and the journal that a rerun resumes from, ``<output_path>/mmke_table.md`` the
    table. In several processes (torchrun) process 0 gets the results, the others {}.
    ``lmms_eval_options``: ``FORWARDED_OPTIONS`` (``seed`` as "a,b,c,d" or a number)."""
    from mmke_eval.lmms.taskfiles import cards_by_task, check_task_names, source_cards
    from mmke_eval.report.rows import format_table, table_rows

    task_list = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    editor_list = [e.strip() for e in (editors.split(",") if isinstance(editors, str) else editors) if e.strip()]
    if not editor_list:
        raise ValueError("editors: none named")
    include_paths = [str(Path(p).expanduser()) for p in include_paths]
    for path in include_paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--include_path {path}: no such folder")
    options = _lmms_eval_options(lmms_eval_options, output_path)
    check_task_names(",".join(task_list), include_paths)
    per_editor = {name: dict((editor_args or {}).get(name) or {}) for name in editor_list}
    unknown = sorted(set(editor_args or {}) - set(editor_list))
    if unknown:
        raise ValueError(f"editor_args for {', '.join(unknown)}: not among the editors {', '.join(editor_list)}")
    for name in editor_list:  # a bad name or value fails now, not after the editors before it ran
        registry.build_editor(name, overrides=per_editor[name])
    given, given_text = _model_args_dict(model, model_args, lambda: cards_by_task(",".join(task_list), include_paths))
    config_args, run_args = _split_model_args(given)
    protocol = Protocol.from_options({k: v for k, v in config_args.items() if k in PROTOCOL_FIELDS})
    check_pretrained(config_args.get("pretrained"))
    rank, world_size = parallel.world()
    refused = parallel.refusal(protocol, world_size)
    if refused:
        raise EvaluationError(refused)
    data_root = _data_root(data, task_list, include_paths, source_cards)
    from mmke_eval.data import source

    for card in source_cards(",".join(task_list), include_paths):  # data that cannot be had fails before any model loads
        source.check_available(card, data_root)
    if cases is not None and (isinstance(cases, bool) or int(cases) < 1):
        raise ValueError("cases must be at least 1")
    warning = parallel.accelerate_cpu_warning()
    if warning:
        print(f"mmke-eval: WARNING: {warning}", file=sys.stderr, flush=True)
    from mmke_eval.resources import tasks_dir

    all_include_paths = [str(tasks_dir())] + include_paths
    main_process = rank == 0  # in several processes, process 0 reports and writes (it gathers every case)
    out = Path(output_path) if output_path else None
    everything: dict[str, dict] = {}
    rows: list[dict] = []
    with ExitStack() as locks:
        if out is not None and main_process:  # every editor's folder, before the first editor runs
            from mmke_eval import run_lock

            for name in editor_list:
                locks.enter_context(run_lock.holding(out / name, wait=wait_for_lock))
        table_error: OSError | None = None
        for name in editor_list:
            folder = out / name if out is not None else None
            config = EditedConfig.from_model_args(
                {"base": model, "editor": name, **config_args, **{f"editor.{k}": v for k, v in per_editor[name].items()},
                 "batch_size": options.batch_size, **({"device": options.device} if options.device else {}),
                 **({"journal": str(folder / runner.JOURNAL_NAME)} if folder is not None and "journal" not in run_args else {}),
                 **run_args, "wait_for_lock": wait_for_lock},
                raise_errors=True, context=RunContext(data_root=data_root, max_cases=cases))
            if main_process:
                print(f"mmke-eval: {name} on {','.join(task_list)}" + (f" in {world_size} processes" if world_size > 1 else "")
                      + " ...", file=sys.stderr, flush=True)
            record = _record_model_args(model, name, given_text, per_editor[name], config.journal, "journal" in given)
            results = runner.run_editor(config, task_list, include_paths=all_include_paths, output_path=folder,
                                        record_model_args=record, **options.simple_evaluate)
            if results is None:  # not process 0 of a multi-process run
                continue
            editor_rows = table_rows(results, name)
            results.setdefault("mmke", {})["table"] = editor_rows
            rows += editor_rows
            everything[name] = results
            if out is not None:  # after every editor: a later failure keeps the rows done so far
                try:
                    write_table(out, rows)
                    table_error = None  # this write holds every row so far
                except OSError as err:  # a read-only folder: the numbers must still reach the user
                    table_error = err
    if table_error is not None:
        print(format_table(rows), flush=True)
        where = table_error.filename or out / "mmke_table.md"
        raise TableNotWritten(f"could not write {where} ({table_error.strerror or table_error}); the table is printed "
                              "above. Make the folder writable or pass another --output_path (a rerun resumes the finished cases)")
    return everything


class TableNotWritten(OSError):
    is_root_cause = True  # the CLI shows this message, not the OSError behind it


def write_table(out: Path, rows: list[dict]) -> None:
    import json

    from mmke_eval.report.rows import format_table

    out.mkdir(parents=True, exist_ok=True)
    (out / "mmke_table.md").write_text(format_table(rows) + "\n")
    (out / "mmke_table.json").write_text(json.dumps(rows, indent=2, allow_nan=False))


class _Options:
    def __init__(self, simple_evaluate: dict, batch_size: Any, device: str | None):
        self.simple_evaluate, self.batch_size, self.device = simple_evaluate, batch_size, device


def _lmms_eval_options(given: dict[str, Any], output_path) -> _Options:
    """The forwarded lmms-eval options as ``run_editor``'s keywords; a refused or unknown one fails."""
    import difflib

    for name in given:
        if name in REFUSED_OPTIONS:
            raise EvaluationError(f"--{name} is not supported by mmke-eval: {REFUSED_OPTIONS[name]}")
        if name not in FORWARDED_OPTIONS:
            close = difflib.get_close_matches(name, FORWARDED_OPTIONS, n=1)
            raise EvaluationError(f"lmms-eval option {name!r} is not forwarded by mmke-eval"
                                         + (f"; did you mean {close[0]!r}?" if close else "")
                                         + f" (forwarded: {', '.join(FORWARDED_OPTIONS)})")
    options = dict(given)
    batch_size = options.pop("batch_size", 1)
    device = options.pop("device", None)
    # Per-case scores (lmms-eval's samples files) are what `mmke-eval compare` reads.
    log_samples = bool(options.pop("log_samples", False)) or output_path is not None
    if options.pop("predict_only", False):
        options["predict_only"], log_samples = True, True
    seed = options.pop("seed", None)
    if seed is not None:
        options.update(_seeds(seed))
    return _Options({"log_samples": log_samples, **options}, batch_size, device)


def _seeds(value: Any) -> dict[str, int | None]:
    """lmms-eval's --seed: one number for all four generators, or four comma-separated ("None" skips one)."""
    parts = [value] * 4 if isinstance(value, int) else str(value).split(",")
    if len(parts) == 1:
        parts = parts * 4
    if len(parts) != 4:
        raise ValueError(f"--seed {value}: one number or four separated by commas")
    names = ("random_seed", "numpy_random_seed", "torch_random_seed", "fewshot_random_seed")
    return {name: None if str(part).strip() == "None" else int(part) for name, part in zip(names, parts)}


def _model_args_dict(model: str, model_args: str | dict | None, task_cards=dict) -> tuple[dict[str, Any], str]:
    """(model_args as a dict, as text): a string is parsed as lmms-eval parses it (typed values);
    the default model without ``pretrained`` gets the shipped world model the tasks run on
    (``task_cards()``: {task: source card}; runner.built_in_world)."""
    from lmms_eval.utils import simple_parse_args_string

    if model_args is None or isinstance(model_args, str):
        world = runner.world_for(model, model_args, task_cards)
        text = runner.model_args_for(model, model_args or None, world) or ""
        return dict(simple_parse_args_string(text)), text
    given = dict(model_args)
    if model == runner.DEFAULT_MODEL and "pretrained" not in given:
        given = {**simple_parse_args_string(runner.default_model_args(runner.world_for(model, given, task_cards))), **given}
    return given, ",".join(f"{k}={v}" for k, v in given.items())


def _split_model_args(given: dict[str, Any]) -> tuple[dict, dict]:
    """(the model's and protocol's arguments, the run options journal/wait_for_lock)."""
    for key in ("base", "editor"):
        if key in given:
            raise ValueError(f"model_args: {key}= is set by mmke-eval (--model, --editor), not in model_args")
    refuse_misspelt_options({k: v for k, v in given.items()
                             if k not in PROTOCOL_FIELDS and k not in RUN_OPTIONS and not k.startswith(("editor.", "adapter."))})
    return ({k: v for k, v in given.items() if k not in RUN_OPTIONS},
            {k: v for k, v in given.items() if k in RUN_OPTIONS and k != "wait_for_lock"})


def _record_model_args(model: str, editor: str, given_text: str, editor_args: dict, journal: str | None,
                       journal_given: bool) -> str:
    """The model_args string the results record (reports read it), as ``lmms-eval --model edited``
    would take it."""
    parts = [f"base={model}", f"editor={editor}"] + ([given_text] if given_text else [])
    parts += [f"editor.{k}={str(v).replace(',', chr(92) + ',')}" for k, v in editor_args.items()]  # a comma as \\,
    if journal and not journal_given:
        parts.append(f"journal={journal}")
    return ",".join(parts)


def _data_root(data, tasks: list[str], include_paths: list[str], source_cards) -> Path | None:
    if data is None:
        return None
    root = Path(data).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"--data {data}: no such folder")
    if not any(card.get("data_env") for card in source_cards(",".join(tasks), include_paths)):
        raise ValueError(f"--data {data}: none of the tasks {','.join(tasks)} reads a data folder (no data_env in their source cards)")
    return root
