"""``mmke-eval make-mini --out DIR [--family F]``: write a generated mini benchmark in its release layout."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = "Write a generated mini benchmark in its release layout."


def configure(parser: argparse.ArgumentParser) -> None:
    from mmke_eval.mini.generate import FAMILIES

    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--family", default="mmke", choices=FAMILIES,
                        help="mmke: MMKE-Bench's data_json/, data_image/; vlkeb: train.json, eval*.json, VLKEB_images/; "
                        "mmedit: vqa/, caption/, val2014*/; mike: mike_{train,eval}.json and images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str], argv: list[str]) -> int:
    from mmke_eval.mini.generate import generate_any

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {args.out}: exists and is not a folder")
    root = generate_any(args.family, out, seed=args.seed)
    print(f"{args.family}_mini written to {root}")
    return 0
