"""A small data set in the VLKEB release layout (shared docs 1.2), for tests: made-up texts and
images, with the variants the loader must handle (an empty ``alt``: skipped; ``port_new`` entries in
any order; a record without the asked hop)."""

from __future__ import annotations

import json
from pathlib import Path

from mmke_eval.testing.easyedit_fixture import draw


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
