"""MMEdit (E-VQA, E-IC) in its EasyEdit release layout: the family loader (family.yaml ``loader``).

The records are EasyEdit's base fields (``mmke_eval.data.easyedit``); each becomes Reliability,
T/I-Generality and T/I-Locality probes.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmke_eval.data.easyedit import SKIP_EMPTY_ALT, base_case, base_probes, split_path
from mmke_eval.data.records import RecordReader, read_records
from mmke_eval.data.schema import DataError, EditCase, SkipReport

FAMILY = "mmedit"
MMEDIT_FILES = {"vqa": "vqa/vqa_{split}.json", "caption": "caption/caption_{split}_edit.json"}


def load_mmedit(root: Path, card: dict) -> tuple[list[EditCase], SkipReport]:
    """MMEdit E-VQA (``subset: vqa``) or E-IC (``subset: caption``), as EasyEdit's VQADataset /
    CaptionDataset read them: images relative to the data folder (COCO ``val2014/``, rephrase
    images in ``val2014_image_rephrase/``); records with an empty ``alt`` are skipped."""
    subset, split = card.get("subset"), card["split"]
    if subset not in MMEDIT_FILES:
        raise DataError(f"source card {card!r}: subset must be one of {sorted(MMEDIT_FILES)}")
    root = Path(os.path.abspath(root))
    layout = "PATH/vqa/vqa_{train,eval}.json, PATH/caption/caption_{train,eval}_edit.json and the images they name (val2014/, val2014_image_rephrase/)"
    json_path = split_path(root, MMEDIT_FILES[subset], split, layout)
    train_path = root / MMEDIT_FILES[subset].format(split="train")
    train_file = str(train_path) if train_path.is_file() else ""
    records = read_records(json_path)
    report = SkipReport(total=len(records), files=[str(p) for p in dict.fromkeys((json_path, train_path)) if p.is_file()])
    cases = []
    for index, record in enumerate(records):
        reader = RecordReader(record, json_path, index, f"{card['benchmark']}/{subset}/{split}/{index}", (root,), data_root=root)
        if reader.text("alt") == "":
            report.skip(SKIP_EMPTY_ALT, reader.case_id)
            continue
        image, rephrase_image = reader.image("image"), reader.image("image_rephrase")
        probes = base_probes(reader, image, rephrase_image)
        cases.append(base_case(reader, FAMILY, subset, probes, image, rephrase_image, train_file))
    return cases, report
