"""``mmke-eval make-mini --out DIR [--family F]``: write a generated mini benchmark in its release layout."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = "Write a generated mini benchmark in its release layout."


def configure(parser: argparse.ArgumentParser) -> None:
    from mmke_eval import families
    from mmke_eval.mini.generate import FAMILIES

    layouts = "; ".join(f"{name}: {families.get(name).layout}" for name in FAMILIES)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--family", default=FAMILIES[0], choices=FAMILIES,  # the families with a mini, the default first
                        help=f"the benchmark family whose release layout to write ({layouts.replace('%', '%%')}) (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str], argv: list[str]) -> int:
    from mmke_eval.mini.generate import generate_any

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {args.out}: exists and is not a folder")
    root = generate_any(args.family, out, seed=args.seed)
    print(f"{args.family}_mini written to {root}")
    return 0
