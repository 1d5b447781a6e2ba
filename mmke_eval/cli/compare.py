"""``mmke-eval compare A B``: what changed between two runs, per metric and case."""

from __future__ import annotations

import argparse

from mmke_eval.cli.inputs import bootstrap, bootstrap_options

DESCRIPTION = "What changed between two runs (a protocol fix, a new editor version): setup, per metric, per case."


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="results folder or file: the run before")
    parser.add_argument("b", metavar="B", help="results folder or file: the run after")
    parser.add_argument("--top", type=int, default=10, help="how many of the cases that moved most to list (default: %(default)s)")
    bootstrap_options(parser)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str], argv: list[str]) -> int:
    from mmke_eval.report.compare import compare

    print(compare(args.a, args.b, top=args.top, bootstrap=bootstrap(parser, args)), end="")
    return 0
