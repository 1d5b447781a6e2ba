"""The run (``mmke-eval [options]``, no subcommand): evaluate editors on tasks with lmms-eval.

    mmke-eval                                   # the built-in default: mmke_mini, world model, no edit
    mmke-eval --editor none,ft_llm,ft_alignment,ike
    mmke-eval --tasks mmke_entity --model llava_hf \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cuda,device_map=cuda,dtype=float16 --editor ft_llm --output_path out/ --data /data/MMKE

The lmms-eval options that keep edit cases whole are forwarded (``api.FORWARDED_OPTIONS``:
--log_samples, --seed, --gen_kwargs, ...); --limit, --offset, --use_cache and --config are refused
with the reason.
"""

from __future__ import annotations

import argparse
import os
import sys

from mmke_eval import runner
from mmke_eval.errors import EvaluationError
from mmke_eval.keyvalues import editor_args_for, parse_key_values
from mmke_eval.protocol import options_help

DESCRIPTION = "Knowledge-editing evaluation of multimodal models on lmms-eval tasks."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default=runner.DEFAULT_TASKS, help="comma-separated tasks or groups (default: %(default)s)")
    parser.add_argument("--model", default=runner.DEFAULT_MODEL, help="lmms-eval backend to edit (default: %(default)s)")
    parser.add_argument("--model_args", default=None, help="backend arguments, plus protocol options (docs/protocol.md): " + options_help().replace("%", "%%")
                        + "; default: the shipped world model on CPU, to which options without pretrained= are added")
    parser.add_argument("--editor", default="none", help="editor name, or several separated by commas (see `mmke-eval list`)")
    parser.add_argument("--editor_args", default="", help="k=v,... overriding the editor's registry defaults; with several editors, EDITOR.k=v applies to one; "
                        "a comma inside a value is written \\, (or pass values with commas through mmke_eval.evaluate)")
    parser.add_argument("--data", default=None, help="local copy of the benchmark the tasks read (MMKE-Bench: data_json/, data_image/; VLKEB, MMEdit: their release layout); over the data variables of their source cards (MMKE_DATA, VLKEB_DATA, MMEDIT_DATA, ...)")
    parser.add_argument("--cases", type=int, default=None, help="use only the first N edit cases of each task (a quick look; VLKEB's sequential runs use 200)")
    parser.add_argument("--output_path", default=None, help="folder for lmms-eval results (and mmke_table.md)")
    parser.add_argument("--wait_for_lock", action="store_true",
                        help="when another run is writing into the same --output_path/<editor> folder, wait for it "
                        "to end (default: refuse to start, naming the other run)")


def lmms_eval_options(passthrough: list[str]) -> tuple[dict, list[str]]:
    """The lmms-eval options given on the command line, as ``mmke_eval.evaluate`` keywords, and the
    --include_path folders. Refused and unknown options fail, naming themselves (mmke_eval/api.py)."""
    from mmke_eval import api

    parser = argparse.ArgumentParser(prog="mmke-eval", add_help=False)
    parser.add_argument("--include_path", action="append", default=[])
    for name in ("batch_size", "device", "verbosity", "gen_kwargs", "system_instruction", "seed", "timezone"):
        parser.add_argument(f"--{name}", default=argparse.SUPPRESS)
    for name in ("max_batch_size", "num_fewshot", "process_docs_parallel"):
        parser.add_argument(f"--{name}", type=int, default=argparse.SUPPRESS)
    for name in ("log_samples", "predict_only", "apply_chat_template", "fewshot_as_multiturn", "write_out", "check_integrity"):
        parser.add_argument(f"--{name}", action="store_const", const=True, default=argparse.SUPPRESS)
    for arg in passthrough:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name[2:] in api.REFUSED_OPTIONS:
            raise EvaluationError(f"{name} is not supported by mmke-eval: {api.REFUSED_OPTIONS[name[2:]]}")
    known, unknown = parser.parse_known_args(passthrough)
    if unknown:
        raise EvaluationError(f"unknown option {unknown[0]} (lmms-eval options mmke-eval forwards: "
                              f"--include_path, --{', --'.join(api.FORWARDED_OPTIONS)}); see mmke-eval --help")
    options = vars(known)
    return options, options.pop("include_path")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, passthrough: list[str], argv: list[str]) -> int:
    """Evaluate with ``mmke_eval.evaluate``; ``passthrough``: the lmms-eval options it forwards."""
    from loguru import logger as eval_logger

    from mmke_eval import api, parallel
    from mmke_eval.report.rows import format_table

    options, include_paths = lmms_eval_options(passthrough)
    if os.path.isdir(args.tasks):  # lmms-eval would read it as a folder of task YAMLs and find none
        raise ValueError(f"--tasks {args.tasks}: a folder of that name is in the current directory, and lmms-eval reads "
                         "--tasks as a folder of task YAMLs when one exists; run from another folder (or rename it)")
    # The command owns its process: lmms-eval's log goes to stderr at MMKE_VERBOSITY (or --verbosity).
    verbosity = options.setdefault("verbosity", os.environ.get("MMKE_VERBOSITY", "WARNING"))
    eval_logger.remove()
    eval_logger.add(sys.stderr, level=verbosity)
    editors = [e.strip() for e in args.editor.split(",") if e.strip()]
    per_editor = editor_args_for(editors, parse_key_values(args.editor_args, "--editor_args"))
    results = api.evaluate(tasks=args.tasks, model=args.model, model_args=args.model_args, editors=editors,
                           editor_args=per_editor, data=args.data, cases=args.cases, output_path=args.output_path,
                           include_paths=include_paths, wait_for_lock=args.wait_for_lock, **options)
    if parallel.world()[0] == 0:  # in several processes, process 0 reports (it gathered every case)
        print(format_table([row for name in editors if name in results for row in results[name]["mmke"]["table"]]), flush=True)
    return 0
