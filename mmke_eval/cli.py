"""mmke-eval: evaluate knowledge editors on multimodal models.

    mmke-eval                                   # the built-in default: mmke_mini, world model, no edit
    mmke-eval --editor none,ft_llm,ft_alignment,ike
    mmke-eval --tasks mmke_entity --model llava_hf \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cuda,device_map=cuda,dtype=float16 --editor ft_llm --output_path out/ --data /data/MMKE
    mmke-eval make-mini --out DIR [--family F]  # write a generated mini benchmark (mmke, vlkeb, mmedit, mike)
    mmke-eval train-editor --editor mend --tasks mmke_mini --output_path CKPT   # train a learned editor
    mmke-eval convert-checkpoint --editor mend --reference FILE.pt --model llava_hf \
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cuda,device_map=cuda,dtype=float16 --output_path CKPT   # a published MEND/KE checkpoint
    mmke-eval list                              # editors and tasks
    mmke-eval train-editor --editor mend --tasks mmke_mini --output_path CKPT   # train SERAC / MEND / KE
    mmke-eval report OUT1 OUT2 [--format md|latex|csv] [--by task|editor|model] [--plot DIR]
    mmke-eval compare A B                       # what changed between two runs, per metric and case

Any other option is passed to lmms-eval unchanged (--limit, --log_samples, --use_cache, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from functools import lru_cache
from pathlib import Path

import yaml

from mmke_eval import runner
from mmke_eval.protocol import PROTOCOL_FIELDS


# Every subcommand `main` dispatches (the run's --help lists them).
SUBCOMMANDS = ("list", "make-mini", "train-editor", "convert-checkpoint", "report", "compare")


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmke-eval",
        description="Knowledge-editing evaluation of multimodal models on lmms-eval tasks.",
        epilog="Other options go to lmms-eval unchanged. Subcommands (each has its own --help): " + ", ".join(SUBCOMMANDS) + ".",
    )
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
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "make-mini":
            return _make_mini(argv[1:])
        if argv and argv[0] == "train-editor":
            from mmke_eval import parallel, train_editor

            if parallel.world()[1] > 1:  # every process would train the same editor into the same folder
                raise runner.EvaluationError("train-editor runs in one process; start it without torchrun / accelerate launch")

            return train_editor.main(argv[1:])
        if argv and argv[0] == "convert-checkpoint":
            from mmke_eval import convert

            return convert.main(argv[1:])
        if argv and argv[0] == "list":
            return _list()
        if argv and argv[0] == "report":
            return _report(argv[1:])
        if argv and argv[0] == "compare":
            return _compare(argv[1:])
        args, passthrough = _run_parser().parse_known_args(argv)
        return _run(args, passthrough)
    except BrokenPipeError:  # `mmke-eval list | head`: the reader left; no traceback, the shell's SIGPIPE code
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        from mmke_eval.journal import saved_cases

        saved = saved_cases()
        if saved:
            where = "; ".join(f"{n} in {path}" for path, n in saved)
            print(f"mmke-eval: interrupted. Finished cases are saved ({where}); run the same command again to resume.", file=sys.stderr)
        else:
            print("mmke-eval: interrupted. No case was saved (pass --output_path to keep finished cases and resume).", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every failure must end in a message and a non-zero exit
        if os.environ.get("MMKE_VERBOSITY", "").upper() == "DEBUG":
            traceback.print_exc()
        cause = runner.root_cause(err)
        print(f"mmke-eval: error: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1


def lmms_eval_options(passthrough: list[str]) -> tuple[dict, list[str]]:
    """The lmms-eval options given on the command line, as ``mmke_eval.evaluate`` keywords, and the
    --include_path folders. Refused and unknown options fail, naming themselves (api.py)."""
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
            raise runner.EvaluationError(f"{name} is not supported by mmke-eval: {api.REFUSED_OPTIONS[name[2:]]}")
    known, unknown = parser.parse_known_args(passthrough)
    if unknown:
        raise runner.EvaluationError(f"unknown option {unknown[0]} (lmms-eval options mmke-eval forwards: "
                                     f"--include_path, --{', --'.join(api.FORWARDED_OPTIONS)}); see mmke-eval --help")
    options = vars(known)
    return options, options.pop("include_path")


def _run(args: argparse.Namespace, passthrough: list[str]) -> int:
    from loguru import logger as eval_logger

    from mmke_eval import api
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
    per_editor = runner.editor_args_for(editors, runner.parse_key_values(args.editor_args, "--editor_args"))
    results = api.evaluate(tasks=args.tasks, model=args.model, model_args=args.model_args, editors=editors,
                           editor_args=per_editor, data=args.data, cases=args.cases, output_path=args.output_path,
                           include_paths=include_paths, wait_for_lock=args.wait_for_lock, **options)
    from mmke_eval import parallel

    if parallel.world()[0] == 0:
        print(format_table([row for name in editors if name in results for row in results[name]["mmke"]["table"]]), flush=True)
    return 0


def _make_mini(argv: list[str]) -> int:
    from mmke_eval.mini.generate import FAMILIES, generate_any

    parser = argparse.ArgumentParser(prog="mmke-eval make-mini", description="Write a generated mini benchmark in its release layout.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--family", default="mmke", choices=FAMILIES,
                        help="mmke: MMKE-Bench's data_json/, data_image/; vlkeb: train.json, eval*.json, VLKEB_images/; "
                        "mmedit: vqa/, caption/, val2014*/; mike: mike_{train,eval}.json and images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {args.out}: exists and is not a folder")
    root = generate_any(args.family, out, seed=args.seed)
    print(f"{args.family}_mini written to {root}")
    return 0


def task_index(extra_dirs: list[str] = ()) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """Our task YAMLs (and those under ``extra_dirs``, e.g. --include_path): task name -> its YAML
    file, group name -> its members."""
    from mmke_eval.resources import tasks_dir

    tasks, groups = {}, {}
    folders = [tasks_dir()] + [Path(d).expanduser() for d in extra_dirs]
    for path in sorted(p for folder in folders for p in folder.rglob("*.yaml")):
        with open(path) as f:
            spec = yaml.load(f, Loader=_IgnoreTagsLoader) or {}
        if isinstance(spec.get("task"), str):
            tasks[spec["task"]] = path
        elif spec.get("group") and isinstance(spec.get("task"), list):
            groups[spec["group"]] = [t for t in spec["task"] if isinstance(t, str)]
    return tasks, groups


# --tasks values lmms-eval answers with a listing instead of a run.
LMMS_EVAL_LISTINGS = ("list", "list_groups", "list_tags", "list_subtasks")


class UnknownTask(ValueError):
    pass


def check_task_names(task_names: str, extra_dirs: list[str] = ()) -> None:
    """Every name of --tasks is one of our tasks or groups, one of lmms-eval's (its own task folder
    and --include_path), a task YAML file, or a wildcard matching one; else an error with the
    close name, before anything loads (lmms-eval finds out after the model has loaded, and its
    `lmms-eval --tasks list` does not show our tasks)."""
    import difflib
    import fnmatch

    tasks, groups = task_index(extra_dirs)
    ours = {*tasks, *groups}
    names = [name.strip() for name in task_names.split(",") if name.strip()]
    if not names:
        raise UnknownTask("--tasks: no task named")

    def known(name: str, among: set[str] | frozenset[str]) -> bool:
        return name in among or ("*" in name and any(fnmatch.fnmatchcase(task, name) for task in among))

    unknown = [name for name in names if not (known(name, ours) or name in LMMS_EVAL_LISTINGS or os.path.isfile(name))]
    if not unknown:
        return
    theirs = lmms_eval_task_names(tuple(extra_dirs))  # only now: indexing lmms-eval's tasks takes seconds
    unknown = [name for name in unknown if not known(name, theirs)]
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, ours, n=1) or difflib.get_close_matches(name, theirs, n=1)
    did_you_mean = f" Did you mean {close[0]!r}?" if close else ""
    others = f" (and {len(unknown) - 1} more unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    raise UnknownTask(f"--tasks {name}: no such task or group{others}.{did_you_mean} `mmke-eval list` lists ours; "
                      "lmms-eval's own are listed by `lmms-eval --tasks list`")


@lru_cache(maxsize=4)
def lmms_eval_task_names(extra_dirs: tuple[str, ...] = ()) -> frozenset[str]:
    """Names lmms-eval knows (tasks, groups, tags) from its own task folder, ours and ``extra_dirs``.
    The index is kept (mmke_eval.lmms_plugin): the run's lmms-eval, given the same folders, reuses it."""
    from loguru import logger as eval_logger

    from lmms_eval.tasks import TaskManager
    from mmke_eval.lmms_plugin import install_fixes
    from mmke_eval.resources import tasks_dir

    eval_logger.remove()  # its indexing logs every YAML it cannot read, at DEBUG
    eval_logger.add(sys.stderr, level=os.environ.get("MMKE_VERBOSITY", "WARNING"))
    install_fixes()
    return frozenset(TaskManager("ERROR", include_path=[str(tasks_dir()), *extra_dirs]).all_tasks)


def data_variables(task_names: str, extra_dirs: list[str] = ()) -> list[str]:
    """The data environment variables (``data_env`` of the source cards) of the named tasks and groups."""
    variables: list[str] = []
    for card in source_cards(task_names, extra_dirs):
        data_env = card.get("data_env")
        if data_env and data_env not in variables:
            variables.append(data_env)
    return variables


def source_cards(task_names: str, extra_dirs: list[str] = ()) -> list[dict]:
    """The source cards of the named tasks and groups (ours and those under ``extra_dirs``)."""
    tasks, groups = task_index(extra_dirs)
    pending, cards = [t.strip() for t in task_names.split(",") if t.strip()], []
    while pending:
        name = pending.pop(0)
        if name in groups:
            pending += groups[name]
        elif name in tasks:
            with open(tasks[name]) as f:
                spec = yaml.load(f, Loader=_IgnoreTagsLoader) or {}
            data_files = (spec.get("dataset_kwargs") or {}).get("data_files") or {}
            for card in data_files.values() if isinstance(data_files, dict) else []:
                card = _source_card(tasks[name].parent / str(card))
                if card is not None:
                    cards.append(card)
    return cards


def _source_card(path: Path) -> dict | None:
    """The source card at ``path``; None for a task's own data file (a task of lmms-eval's kind)."""
    try:
        if path.stat().st_size > 65536:  # a card is one short line; this is data
            return None
        card = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) and isinstance(card.get("benchmark"), str) else None


def _report(argv: list[str]) -> int:
    from mmke_eval.report import runs, tables

    parser = argparse.ArgumentParser(
        prog="mmke-eval report",
        description="Paper-style tables (and figures) from results folders: mmke-eval's and plain lmms-eval ones. "
        "Runs of different models or data are never merged; protocol differences are shown above each table.",
    )
    parser.add_argument("results", nargs="+", help="results folders (searched for *_results.json) or results files")
    parser.add_argument("--format", default="md", choices=tables.FORMATS,
                        help="md (default), latex (booktabs), csv (one line per number) or json (every table as data)")
    parser.add_argument("--by", default="task", choices=tables.BY,
                        help="one table per task (rows: editors; default), per editor (rows: tasks), or per model (rows: tasks x editors)")
    parser.add_argument("--plot", metavar="DIR", help="also write radar, bar and sequential-gap figures (PNG and PDF) into DIR")
    parser.add_argument("--ci", action="store_true",
                        help="give each benchmark cell its 95%% interval from a case-level bootstrap (needs the samples files)")
    _bootstrap_options(parser)
    args = parser.parse_args(argv)
    options = _bootstrap(parser, args) if args.ci else None
    found, notes = runs.load_runs(args.results)
    for note in notes:
        print(f"mmke-eval report: note: {note}", file=sys.stderr)
    print(tables.render(tables.build_tables(found, args.by, ci=options), args.format), end="")
    if args.plot:
        from mmke_eval.report.plots import write_plots

        written = write_plots(found, args.plot)
        print(f"mmke-eval report: {len(written)} figure files in {args.plot}" if written else
              "mmke-eval report: no figure (figures need benchmark tasks)", file=sys.stderr)
        for path in written:
            print(f"  {path}", file=sys.stderr)
    return 0


def _compare(argv: list[str]) -> int:
    from mmke_eval.report.compare import compare

    parser = argparse.ArgumentParser(
        prog="mmke-eval compare",
        description="What changed between two runs (a protocol fix, a new editor version): setup, per metric, per case.",
    )
    parser.add_argument("a", metavar="A", help="results folder or file: the run before")
    parser.add_argument("b", metavar="B", help="results folder or file: the run after")
    parser.add_argument("--top", type=int, default=10, help="how many of the cases that moved most to list (default: %(default)s)")
    _bootstrap_options(parser)
    args = parser.parse_args(argv)
    print(compare(args.a, args.b, top=args.top, bootstrap=_bootstrap(parser, args)), end="")
    return 0


def _bootstrap_options(parser: argparse.ArgumentParser) -> None:
    from mmke_eval.report.bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED

    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                        help="bootstrap resamples of the cases (default: %(default)s; at least 100)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the bootstrap (default: %(default)s)")


def _bootstrap(parser: argparse.ArgumentParser, args):
    from mmke_eval.report.bootstrap import Bootstrap

    try:
        return Bootstrap(args.resamples, args.seed)
    except ValueError as err:
        parser.error(str(err))


def _list() -> int:
    from mmke_eval import families, registry

    print("editors (defaults; per model family overrides; a benchmark's own values are listed under it):")
    for name in registry.editor_names():
        entry = registry.load_registry()["editors"][name]
        print(f"  {name:14s} {entry.get('help', '')}")
        if entry.get("defaults"):
            print(f"  {'':14s}   defaults: {_key_values(entry['defaults'])}")
        for family, values in (entry.get("families") or {}).items():
            print(f"  {'':14s}   {family}: {_key_values(values)}")
    print("benchmark families (registry.yaml; docs/benchmarks.md):")
    for name in families.names():
        family = families.get(name)
        print(f"  {name:14s} {family.title}: {', '.join(title for _, title in family.columns)}")
        # The benchmark's own hparams, over the editors' model-family values above (registry.yaml)
        declared = registry.benchmark_editor_defaults(name)
        for editor, per_model in declared.items():
            for model_family, values in per_model.items():
                print(f"  {'':14s}   {editor} on {model_family}: {_key_values(values)}")
        if not declared:
            print(f"  {'':14s}   editor values: the editors' defaults and model-family values above")
    print("tasks and groups:")
    tasks, groups = task_index()
    for name in sorted({*tasks, *groups}):
        print(f"  {name}")
    return 0


def _key_values(values: dict) -> str:
    """k=v,...; a string with spaces at its ends, a newline or a comma is quoted, so it reads unambiguously."""
    def shown(v):
        return json.dumps(v) if isinstance(v, str) and (v != v.strip() or "\n" in v or "," in v) else v
    return ",".join(f"{k}={shown(v)}" for k, v in values.items())


class _IgnoreTagsLoader(yaml.SafeLoader):
    """Reads task YAMLs without resolving lmms-eval's !function tags (nothing gets imported)."""


_IgnoreTagsLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


if __name__ == "__main__":
    sys.exit(main())
