"""Small data sets in the MMEdit and VLKEB release layouts (shared docs 1.1, 1.2), for tests.

Field names and layout follow the releases; the texts and images are made up here (coloured
shapes drawn with PIL), so nothing is downloaded. Each holds the variants the loaders must handle:
an empty ``alt`` (skipped), ``port_new`` entries in any order, a record without the asked hop.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 30), (150, 60, 200), (30, 190, 200)]


def draw(path: Path, serial: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (48, 40), (245, 245, 240))
    colour = COLOURS[serial % len(COLOURS)]
    box = (6 + serial % 5, 6, 38, 34 - serial % 4)
    (ImageDraw.Draw(image).ellipse if serial % 2 else ImageDraw.Draw(image).rectangle)(box, fill=colour)
    image.save(path, format=fmt)


def base_record(serial: int, image: str, rephrase_image: str, loc_image: str, vqa: bool = True) -> dict:
    things = ["tennis balls", "red buses", "cats", "kites", "umbrellas", "boats"]
    thing = things[serial % len(things)]
    if vqa:
        src, alt, rephrase = f"How many {thing} are in the picture?", str(2 + serial % 4), f"What is the number of {thing} shown?"
    else:
        src, alt, rephrase = "a photo of", f"A few {thing} on a sunny street number {serial}.", "provide a brief overview of the image content,"
    return {
        "src": src, "alt": alt, "pred": "1" if vqa else f"some {thing}", "rephrase": rephrase,
        "image": image, "image_rephrase": rephrase_image,
        "loc": f"nq question: who wrote the novel number {serial}", "loc_ans": f"Author {serial}",
        "m_loc": loc_image, "m_loc_q": "What sport can you use this for?", "m_loc_a": ["riding", "surfing", "skiing"][serial % 3],
    }


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


def port(hop: int, question: str, answer: str) -> dict:
    return {"port_type": f"{hop}-hop", "Q&A": {"Question": question, "Answer": answer}}


def write_vlkeb_fixture(root: Path) -> Path:
    """``root/{train,eval,eval_multihop,eval_edit_onehop}.json`` and ``root/VLKEB_images/<mid>/google_N.jpg``."""
    root = Path(root)
    serial = 100

    def record() -> dict:
        nonlocal serial
        serial += 1
        mid = f"m.0{serial}x"
        image, rephrase, loc = f"{mid}/google_1.jpg", f"{mid}/google_7.jpg", f"m.0loc{serial}/google_3.jpg"
        for offset, relative in enumerate((image, rephrase, loc)):
            draw(root / "VLKEB_images" / relative, serial + offset, "JPEG")
        entity = f"Entity {serial}"
        return {
            "src": "What is the name of the entity in the image?", "pred": f"Old {serial}", "alt": entity,
            "rephrase": "Which entity does this picture show?", "image": image, "image_rephrase": rephrase,
            "loc": f"nq question: when did event {serial} happen", "loc_ans": f"{1900 + serial}",
            "m_loc": loc, "m_loc_q": "What is the colour of the shape?", "m_loc_a": "red",
        }

    (root / "train.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "train.json").write_text(json.dumps([record() for _ in range(3)], indent=1))
    evaluation = [record() for _ in range(3)]
    evaluation[2]["alt"] = ""
    (root / "eval.json").write_text(json.dumps(evaluation, indent=1))
    multihop = [record() for _ in range(4)]
    multihop[0]["port_new"] = [port(2, "Which country is the birthplace of Entity's founder in?", "Norway"),
                               port(1, "Who founded the entity in the image?", "Ada Berg")]
    multihop[1]["port_new"] = [port(1, "Where is the entity in the image located?", "Oslo"),
                               port(3, "What is the currency of the country where it is?", "krone"),
                               port(4, "Who designed the currency's symbol?", "Nils Ek")]
    multihop[2]["port_new"] = []
    multihop[3]["port_new"] = [port(4, "In which year was the bank of that currency founded?", "1816"),
                               port(2, "Which river flows through its city?", "Akerselva"),
                               port(2, "A second 2-hop question, never used", "unused")]
    (root / "eval_multihop.json").write_text(json.dumps(multihop, indent=1))
    onehop = [record() for _ in range(3)]
    onehop[0]["port_new"] = [{"port_type": "1-hop", "port_edit_q": "Who founded the entity in the image?", "port_edit_a": "Ada Berg",
                              "port_q": "Where was the founder of the entity in the image born?", "port_a": "Bergen"}]
    onehop[1]["port_new"] = [port(1, "Who founded it?", "Nils Ek")]  # no edit-twice entry: skipped
    onehop[2]["port_new"] = [port(2, "unused", "unused"),
                             {"port_edit_q": "Which city is the entity in the image in?", "port_edit_a": "Tromso",
                              "port_q": "Which country is the city of the entity in the image in?", "port_a": "Norway"}]
    (root / "eval_edit_onehop.json").write_text(json.dumps(onehop, indent=1))
    return root


def write_mike_fixture(root: Path, per_split: int = 4) -> Path:
    """``root/mike_{train,eval}.json`` in the local MIKE format (mmke_eval/data/mike.py) and its images."""
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
