"""The run (``mmke-eval [options]``, no subcommand): evaluate editors on tasks with lmms-eval.

    mmke-eval                                   # the built-in default: mmke_mini, world model, no edit
    mmke-eval --editor none,ft_llm,ft_alignment,ike
    mmke-eval --tasks mmke_entity --model llava_hf \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cuda,device_map=cuda,dtype=float16 --editor ft_llm --output_path out/ --data /data/MMKE

Any other option is passed to lmms-eval unchanged (--limit, --log_samples, --use_cache, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from mmke_eval import report, runner
from mmke_eval.cli.inputs import environment
from mmke_eval.lmms.taskfiles import check_task_names, data_variables, source_cards
from mmke_eval.protocol import PROTOCOL_FIELDS

DESCRIPTION = "Knowledge-editing evaluation of multimodal models on lmms-eval tasks."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=runner.DEFAULT_TASKS, help="comma-separated tasks or groups (default: %(default)s)")
    parser.add_argument("--model", default=runner.DEFAULT_MODEL, help="lmms-eval backend to edit (default: %(default)s)")
    parser.add_argument("--model_args", default=None, help=f"backend arguments, plus protocol options ({', '.join(PROTOCOL_FIELDS)}; docs/protocol.md); default: the shipped world model on CPU, to which options without pretrained= are added")
    parser.add_argument("--editor", default="none", help="editor name, or several separated by commas (see `mmke-eval list`)")
    parser.add_argument("--editor_args", default="", help="k=v,... overriding the editor's registry defaults; with several editors, EDITOR.k=v applies to one")
    parser.add_argument("--data", default=None, help="local copy of the benchmark the tasks read (MMKE-Bench: data_json/, data_image/; VLKEB, MMEdit: their release layout); sets the data variable of their source cards (MMKE_DATA, VLKEB_DATA, MMEDIT_DATA, ...)")
    parser.add_argument("--cases", type=int, default=None, help="use only the first N edit cases of each task (a quick look; VLKEB's sequential runs use 200)")
    parser.add_argument("--output_path", default=None, help="folder for lmms-eval results (and mmke_table.md)")
    parser.add_argument("--wait_for_lock", action="store_true",
                        help="when another run is writing into the same --output_path/<editor> folder, wait for it "
                        "to end (default: refuse to start, naming the other run)")


# lmms-eval options that would give wrong numbers with edit cases, and what to use instead.
REFUSED_OPTIONS = {
    "--use_cache": "lmms-eval's response cache is keyed by the prompt text only (not the case's answers, images or "
    "edit), so it serves stale scores; finished cases are kept under --output_path and a rerun resumes from them",
    "--limit": "it counts probe documents and would split an edit case; use --cases N (the first N edit cases of each task)",
    "--config": "mmke-eval does not read lmms-eval config files (their keys would be ignored); run one with "
    "`LMMS_EVAL_PLUGINS=mmke_eval lmms-eval --config FILE` (docs/lmms-eval.md)",
}


def _check_passthrough(passthrough: list[str]) -> None:
    for arg in passthrough:
        name = arg.split("=", 1)[0]
        if name in REFUSED_OPTIONS:
            raise runner.EvaluationError(f"{name} is not supported by mmke-eval: {REFUSED_OPTIONS[name]}")
    for path in runner._include_paths(passthrough):
        if not Path(path).expanduser().is_dir():
            raise FileNotFoundError(f"--include_path {path}: no such folder")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, passthrough: list[str], argv: list[str]) -> int:
    """Evaluate; ``passthrough``: the options lmms-eval gets unchanged."""
    _check_passthrough(passthrough)
    if os.path.isdir(args.tasks):  # lmms-eval would read it as a folder of task YAMLs and find none
        raise ValueError(f"--tasks {args.tasks}: a folder of that name is in the current directory, and lmms-eval reads "
                         "--tasks as a folder of task YAMLs when one exists; run from another folder (or rename it)")
    check_task_names(args.tasks, runner._include_paths(passthrough))
    env: dict[str, str] = {}
    if args.data:
        data = Path(args.data).expanduser().resolve()
        if not data.is_dir():
            raise FileNotFoundError(f"--data {args.data}: no such folder")
        variables = data_variables(args.tasks, runner._include_paths(passthrough))
        if not variables:
            raise ValueError(f"--data {args.data}: none of the tasks {args.tasks} reads a data folder (no data_env in their source cards)")
        env.update({name: str(data) for name in variables})
    if args.cases is not None:
        if args.cases < 1:
            raise ValueError("--cases must be at least 1")
        from mmke_eval.data.source import MAX_CASES_ENV

        env[MAX_CASES_ENV] = str(args.cases)
    with environment(env):
        return _evaluate(args, passthrough)


def _evaluate(args: argparse.Namespace, passthrough: list[str]) -> int:
    editors = [e.strip() for e in args.editor.split(",") if e.strip()]
    per_editor = runner.editor_args_for(editors, runner.parse_key_values(args.editor_args, "--editor_args"))
    from mmke_eval import registry

    for editor in editors:  # a bad name or value fails now, not after the editors before it ran
        registry.build_editor(editor, overrides=per_editor[editor])
    model_args = runner.model_args_for(args.model, args.model_args)
    from mmke_eval import parallel
    from mmke_eval.protocol import check_model_args

    protocol = check_model_args(runner.parse_key_values(model_args, "--model_args"))  # fails in a second, not after loading lmms-eval
    rank, world_size = parallel.world()
    if world_size > 1 and protocol.sequential:
        raise runner.EvaluationError(parallel.SEQUENTIAL_REFUSED.format(world=world_size))
    from mmke_eval.data import source

    for card in source_cards(args.tasks, runner._include_paths(passthrough)):  # data that cannot be had fails before any model loads
        source.check_available(card)
    warning = parallel.accelerate_cpu_warning()
    if warning:
        print(f"mmke-eval: WARNING: {warning}", file=sys.stderr, flush=True)
    main_process = rank == 0  # in several processes, process 0 reports and writes (it gathers every case)
    with ExitStack() as locks:
        if args.output_path and main_process:  # every editor's folder, before the first editor runs
            from mmke_eval import run_lock

            for editor in editors:
                locks.enter_context(run_lock.holding(Path(args.output_path) / editor, wait=args.wait_for_lock))
        return _evaluate_editors(args, passthrough, editors, per_editor, model_args, main_process, world_size)


def _evaluate_editors(args, passthrough, editors, per_editor, model_args, main_process, world_size) -> int:
    rows = []
    table_error: OSError | None = None
    for editor in editors:
        spec = runner.RunSpec(
            tasks=args.tasks,
            model=args.model,
            model_args=model_args,
            editor=editor,
            editor_args=per_editor[editor],
            output_path=str(Path(args.output_path) / editor) if args.output_path else None,
            lmms_eval_args=passthrough,
            wait_for_lock=args.wait_for_lock,
        )
        if main_process:
            print(f"mmke-eval: {editor} on {args.tasks}" + (f" in {world_size} processes" if world_size > 1 else "") + " ...",
                  file=sys.stderr, flush=True)
        results = runner.evaluate(spec)
        if results is None:  # not process 0 of a multi-process run
            continue
        rows += report.table_rows(results, editor)
        if args.output_path:  # after every editor: a later failure keeps the rows done so far
            try:
                _write_table(Path(args.output_path), rows)
                table_error = None  # this write holds every row so far
            except OSError as err:  # a read-only folder: the numbers must still reach the user
                table_error = err
    if main_process:
        print(report.format_table(rows), flush=True)
    if table_error is not None:
        where = table_error.filename or Path(args.output_path) / "mmke_table.md"
        raise TableNotWritten(f"could not write {where} ({table_error.strerror or table_error}); the table is printed "
                              "above. Make the folder writable or pass another --output_path (a rerun resumes the finished cases)")
    return 0


class TableNotWritten(OSError):
    is_root_cause = True  # the CLI shows this message, not the OSError behind it


def _write_table(out: Path, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "mmke_table.md").write_text(report.format_table(rows) + "\n")
    (out / "mmke_table.json").write_text(json.dumps(rows, indent=2, allow_nan=False))
