"""A small data set in the local MIKE format (mmke_tasks/mike/loader.py), for tests."""

from __future__ import annotations

import json
from pathlib import Path

from mmke_eval.testing.easyedit_fixture import draw


def write_mike_fixture(root: Path, per_split: int = 4) -> Path:
    """``root/mike_{train,eval}.json`` in the local MIKE format (mmke_tasks/mike/loader.py) and its images."""
    root = Path(root)
    names = ["Ruby-throated Hummingbird", "Blue Jay", "Snowy Owl", "Scarlet Macaw", "Barn Swallow", "Golden Eagle",
             "Great Egret", "Common Loon"]
    serial = 300
    for split in ("train", "eval"):
        records = []
        for i in range(per_split):
            serial += 1
            name = names[(serial - 301) % len(names)]
            images = [f"entities/e{serial}/{n}.jpg" for n in range(4)]
            scenes = [f"scenes/s{serial}_{n}.jpg" for n in range(2)]
            for n, relative in enumerate(images + scenes):
                draw(root / relative, serial + n, "JPEG")
            records.append({
                "name": name, "images": images, "scene_images": scenes,
                "caption": f"A {name} perched on a branch number {serial}.",
                "loc": f"nq question: how tall is tower {serial}", "loc_ans": f"{serial} metres",
                **({"rephrase": "Question: Which bird is this? Short answer:"} if i % 2 else {}),
            })
        (root / f"mike_{split}.json").write_text(json.dumps(records, indent=1))
    return root
