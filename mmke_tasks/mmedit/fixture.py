"""A small data set in the MMEdit release layout (shared docs 1.1), for tests: made-up texts and
images, with the variants the loader must handle (an empty ``alt``: skipped)."""

from __future__ import annotations

import json
from pathlib import Path

from mmke_eval.testing.easyedit_fixture import base_record, draw


def write_mmedit_fixture(root: Path) -> Path:
    """``root/vqa/vqa_{train,eval}.json``, ``root/caption/caption_{train,eval}_edit.json`` and the images."""
    root = Path(root)
    serial = 0
    for subset, pattern, counts in (("vqa", "vqa/vqa_{split}.json", {"train": 3, "eval": 3}),
                                    ("caption", "caption/caption_{split}_edit.json", {"train": 3, "eval": 2})):
        for split, n in counts.items():
            records = []
            for i in range(n):
                serial += 1
                image = f"val2014/COCO_val2014_{serial:012d}.jpg"
                rephrase = f"val2014_image_rephrase/{serial:06d}_COCO_val2014_{serial:012d}.png"
                loc = f"val2014/COCO_val2014_{900000 + serial:012d}.jpg"
                draw(root / image, serial, "JPEG")
                draw(root / rephrase, serial + 1)
                draw(root / loc, serial + 3, "JPEG")
                records.append(base_record(serial, image, rephrase, loc, vqa=subset == "vqa"))
            if subset == "vqa" and split == "eval":
                records[1]["alt"] = ""  # EasyEdit skips these
            path = root / pattern.format(split=split)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(records, indent=1))
    return root
