"""``python -m mmke_eval.mini.train_world``: train the world model, or measure the one in ``--out``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmke_eval.mini import WORLD_MODEL_DIR
from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W
from mmke_eval.mini.train_world.config import Config
from mmke_eval.mini.train_world.measure import measure
from mmke_eval.mini.train_world.train import train


def _strict_bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return text.lower() == "true"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmke_eval.mini.train_world", description="Train the mmke_mini world model (deterministic).")
    parser.add_argument("--out", type=Path, default=WORLD_MODEL_DIR)
    parser.add_argument("--data", type=Path, default=None, help="a generated benchmark root (default: generate one)")
    for f in Config.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name}", type=_strict_bool if isinstance(f.default, bool) else type(f.default), default=f.default)
    parser.add_argument("--measure_only", action="store_true",
                        help="no training: measure the model already in --out and print the numbers (JSON)")
    parser.add_argument("--write_metrics", action="store_true",
                        help="with --measure_only: also replace the measured numbers in --out/metrics.json (training facts kept)")
    args = parser.parse_args(argv)
    cfg = Config(**{k: getattr(args, k) for k in Config.__dataclass_fields__})
    if args.measure_only:
        world = W.build_world(cfg.world_seed, lifelong=cfg.lifelong())
        root = args.data or G.ensure_generated(seed=cfg.world_seed, lifelong=world.lifelong)
        measured = measure(args.out, root, world, cfg, log=lambda line: print(line, file=sys.stderr))
        print(json.dumps(measured, indent=1))
        if args.write_metrics:
            path = args.out / "metrics.json"
            metrics = json.loads(path.read_text()) if path.is_file() else {}
            metrics.update(measured)
            path.write_text(json.dumps(metrics, indent=1) + "\n")
        return
    train(cfg, args.out, args.data)


if __name__ == "__main__":
    main()
