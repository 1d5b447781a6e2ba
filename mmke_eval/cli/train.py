"""`mmke-eval train-editor`: train a learned editor (SERAC, MEND, KE) on a benchmark's train split.

    mmke-eval train-editor --editor mend --tasks mmke_mini --output_path ckpt/mend
    mmke-eval train-editor --editor serac --model llava_hf --model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cuda,device_map=cuda,dtype=float32 \\
        --tasks mmke_entity --data /data/MMKE --output_path ckpt/serac_llava

The training itself (cases, loop, resumable state) is mmke_eval/training/.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mmke_eval.cli.inputs import load_adapter

DESCRIPTION = __doc__.split("\n\n")[0]


def configure(parser: argparse.ArgumentParser) -> None:
    from mmke_eval import runner
    from mmke_eval.training.loop import learned_editor_names

    parser.add_argument("--editor", required=True, help="a learned editor: " + ", ".join(learned_editor_names()))
    parser.add_argument("--model", default=runner.DEFAULT_MODEL)
    parser.add_argument("--model_args", default=None)
    parser.add_argument("--tasks", default=runner.DEFAULT_TASKS, help="tasks or groups whose train split to train on")
    parser.add_argument("--data", default=None, help="local copy of the benchmark (as for evaluation)")
    parser.add_argument("--editor_args", default="", help="k=v,... (training options: max_steps, val_every, patience, val_cases, meta_lr, seed)")
    parser.add_argument("--cases", type=int, default=None, help="use only the first N train cases (a quick run)")
    parser.add_argument("--output_path", required=True, help="checkpoint folder")
    parser.add_argument("--restart", action="store_true", help="train afresh even if the folder holds a run")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str], argv: list[str]) -> int:
    from mmke_eval import parallel, registry
    from mmke_eval.errors import EvaluationError
    from mmke_eval.training.errors import TrainingError
    from mmke_eval.training.loop import learned_editor_names

    if parallel.world()[1] > 1:  # every process would train the same editor into the same folder
        raise EvaluationError("train-editor runs in one process; start it without torchrun / accelerate launch")
    note = getattr(registry.editor_class(args.editor), "training_note", "") if args.editor in registry.editor_names() else ""
    if note:
        raise TrainingError(f"--editor {args.editor}: {note}")
    if args.editor not in learned_editor_names():
        raise TrainingError(f"--editor {args.editor}: not a learned editor; learned editors: {', '.join(learned_editor_names())}")
    data_root = None
    if args.data:
        data_root = Path(args.data).expanduser().resolve()
        if not data_root.is_dir():
            raise FileNotFoundError(f"--data {args.data}: no such folder")
    return _train(args, argv, data_root)


def _train(args: argparse.Namespace, argv: list[str], data_root: Path | None = None) -> int:
    from mmke_eval import registry, runner
    from mmke_eval.journal import digest
    from mmke_eval.keyvalues import parse_key_values
    from mmke_eval.training.data import task_sources, training_benchmark, training_cases
    from mmke_eval.training.errors import TrainingError
    from mmke_eval.training.loop import train
    from mmke_eval.training.state import RESUME_FILE

    overrides = parse_key_values(args.editor_args, "--editor_args")
    if "checkpoint" in overrides:
        raise TrainingError("--editor_args checkpoint=...: training writes a checkpoint (--output_path); it does not read one")
    registry.build_editor(args.editor, overrides=overrides)  # bad values fail before the model loads
    sources = task_sources(args.tasks)
    benchmark = training_benchmark(sources, args.tasks)
    world = runner.world_for(args.model, args.model_args, lambda: {name: card for name, card, _ in sources})
    adapter = load_adapter(args.model, args.model_args, world)
    # A family default may name a checkpoint to evaluate with (the world model's); training writes one.
    # The budget (max_steps, val_every, patience, val_cases) is the benchmark's reference one for this model.
    editor = registry.build_editor(args.editor, family=adapter.family, overrides={**overrides, "checkpoint": ""},
                                   benchmark=benchmark)
    cases, data = training_cases(sources, data_root)
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
