"""``mmke-eval make-mini --out DIR [--family F] [--lifelong]``: write a generated mini benchmark in its release layout."""

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
    parser.add_argument("--lifelong", action="store_true",
                        help="the lifelong-scale world (1000 eval + 100 train entities; task mmke_mini_lifelong): MMKE-Bench's layout only")


FAMILY_OF_LIFELONG = "mmke"


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str], argv: list[str]) -> int:
    from mmke_eval.mini.generate import generate_any

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {args.out}: exists and is not a folder")
    if args.lifelong and args.family != FAMILY_OF_LIFELONG:
        parser.error(f"--lifelong: the lifelong world is written in {FAMILY_OF_LIFELONG}'s layout only (its world model learned "
                     f"MMKE-Bench's probes), not {args.family}'s")
    root = generate_any(args.family, out, seed=args.seed, lifelong=args.lifelong)
    print(f"{args.family}_mini{'_lifelong' if args.lifelong else ''} written to {root}")
    return 0
