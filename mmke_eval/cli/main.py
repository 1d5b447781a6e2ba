"""mmke-eval: evaluate knowledge editors on multimodal models.

    mmke-eval                                   # the built-in default: mmke_mini, world model, no edit
    mmke-eval --editor none,ft_llm,ft_alignment,ike
    mmke-eval --tasks mmke_entity --model llava_hf \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cuda,device_map=cuda,dtype=float16 --editor ft_llm --output_path out/ --data /data/MMKE
    mmke-eval make-mini --out DIR [--family F]  # write a generated mini benchmark (mmke, vlkeb, mmedit, mike, cckeb)
    mmke-eval train-editor --editor mend --tasks mmke_mini --output_path CKPT   # train a learned editor (SERAC, MEND, KE)
    mmke-eval convert-checkpoint --editor mend --reference FILE.pt --model llava_hf \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,device=cuda,device_map=cuda,dtype=float16 --output_path CKPT   # a published MEND/KE checkpoint
    mmke-eval list                              # editors and tasks
    mmke-eval report OUT1 OUT2 [--format md|latex|csv] [--by task|editor|model] [--plot DIR]
    mmke-eval compare A B                       # what changed between two runs, per metric and case

Any other option is passed to lmms-eval unchanged (--limit, --log_samples, --use_cache, ...).

Each subcommand is a module of this package with ``DESCRIPTION``, ``configure(parser)`` (its
options) and ``run(parser, args, extra, argv)`` (``extra``: the arguments it does not know, which
only a run takes, for lmms-eval; ``argv``: its own command line); ``COMMANDS`` registers them on
one parser. A command line that does not start with a subcommand's name is a run (the evaluation).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from mmke_eval.cli import compare, convert, listing, make_mini, report, run, train

# name -> module; "run" is also what a command line without a subcommand's name does.
COMMANDS = {
    "run": run,
    "list": listing,
    "make-mini": make_mini,
    "train-editor": train,
    "convert-checkpoint": convert,
    "report": report,
    "compare": compare,
}
DEFAULT_COMMAND = "run"
# Every subcommand a run's --help names (the run itself is the command line without one).
SUBCOMMANDS = tuple(name for name in COMMANDS if name != DEFAULT_COMMAND)


def parser(chosen: str) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The mmke-eval parser with every subcommand registered, and the chosen one's parser. Only the
    chosen subcommand's options are added: listing the learned editors for train-editor's help
    imports every editor (and torch), which `mmke-eval list` must not wait for."""
    top = argparse.ArgumentParser(prog="mmke-eval", add_help=False)
    commands = top.add_subparsers(dest="command")
    parsers = {}
    for name, module in COMMANDS.items():
        if name == DEFAULT_COMMAND:
            parsers[name] = commands.add_parser(
                name, prog="mmke-eval", description=module.DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="subcommands (each has its own --help):\n  " + ", ".join(SUBCOMMANDS) + "\n"
                "lmms-eval options that keep edit cases whole go to lmms-eval:\n"
                "  --include_path, --log_samples, --seed, --gen_kwargs, --batch_size, ... (mmke_eval.api.FORWARDED_OPTIONS);\n"
                "  --limit, --offset, --use_cache and --config are refused, with the reason")
        else:
            parsers[name] = commands.add_parser(name, prog=f"mmke-eval {name}", description=module.DESCRIPTION)
    COMMANDS[chosen].configure(parsers[chosen])
    return top, parsers[chosen]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        name, own = (argv[0], argv[1:]) if argv and argv[0] in SUBCOMMANDS else (DEFAULT_COMMAND, argv)
        top, chosen = parser(name)
        args, extra = top.parse_known_args([name, *own])
        if extra and name != DEFAULT_COMMAND:  # a run passes them to lmms-eval; the others take none
            chosen.error(f"unrecognized arguments: {' '.join(extra)}")  # what argparse's parse_args says
        return COMMANDS[name].run(chosen, args, extra, own)
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
        from mmke_eval.errors import root_cause

        if os.environ.get("MMKE_VERBOSITY", "").upper() == "DEBUG":
            traceback.print_exc()
        cause = root_cause(err)
        print(f"mmke-eval: error: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 1

