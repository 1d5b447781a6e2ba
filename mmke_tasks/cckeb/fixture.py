"""A small data set in CCKEB's release layout (MemEIC README), for tests: made-up texts and images,
with the variants the loader must handle: list-valued textual ``pred``/``alt`` (joined with a space),
``port_new`` with the ``comp`` entry not first, and records that are skipped (an empty ``alt``, no
``textual_edit``, no ``port_new``, no ``comp`` entry). MemEIC's ``prompt/`` copy of the eval file
(the same records plus its query decomposition) is written beside it."""

from __future__ import annotations

import json
from pathlib import Path

from mmke_eval.testing.easyedit_fixture import draw

IMAGES = "CCKEB_images/mmkb_images"


def comp(question: str, answer: str) -> dict:
    return {"port_type": "comp", "Q&A": {"Question": question, "Answer": answer}}


def write_cckeb_fixture(root: Path) -> Path:
    """``root/CCKEB_{train,eval}.json``, ``root/prompt/CCKEB_eval.json`` and
    ``root/CCKEB_images/mmkb_images/<mid>/google_N.jpg``."""
    root = Path(root)
    serial = 200

    def record() -> dict:
        nonlocal serial
        serial += 1
        mid = f"m.0{serial}c"
        image, rephrase, loc = f"{mid}/google_0.jpg", f"{mid}/bing_2.jpg", f"m.0loc{serial}/yahoo_1.jpg"
        for offset, relative in enumerate((image, rephrase, loc)):
            draw(root / IMAGES / relative, serial + offset, "JPEG")
        person = f"Person {serial}"
        return {
            "src": "Who is the person in the image?", "pred": f"Someone {serial}", "alt": person,
            "rephrase": "Which person does this picture show?", "image": image, "image_rephrase": rephrase,
            "loc": f"nq question: when did event {serial} happen", "loc_ans": f"{1900 + serial}",
            "m_loc": loc, "m_loc_q": "What is the colour of the shape?", "m_loc_a": "red",
            "textual_edit": {
                "src": f"What is the nationality of {person}?", "pred": "French", "alt": f"Land {serial}",
                "rephrase": f"Which country is {person} a citizen of?",
                "loc": f"nq question: who painted picture {serial}", "loc_ans": f"Painter {serial}",
            },
            "port_new": [comp("What is the nationality of the person in the image?", f"Land {serial}")],
        }

    (root / "CCKEB_train.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "CCKEB_train.json").write_text(json.dumps([record() for _ in range(3)], indent=1))
    evaluation = [record() for _ in range(7)]
    evaluation[1]["textual_edit"].update(pred=["North", "Land"], alt=["South", "Land"])
    evaluation[1]["port_new"] = [{"port_type": "2-hop", "Q&A": {"Question": "unused", "Answer": "unused"}},
                                 comp("Which country is the person in the image from?", "not read: the textual alt is the target")]
    evaluation[2]["alt"] = ""
    del evaluation[3]["textual_edit"]
    del evaluation[4]["port_new"]
    evaluation[5]["port_new"] = [{"port_type": "2-hop", "Q&A": {"Question": "unused", "Answer": "unused"}}]
    (root / "CCKEB_eval.json").write_text(json.dumps(evaluation, indent=1))
    prompt = [dict(r, src_q=f"Image Level: {r['src']}\nText Level: ", rephrase_q=f"Image Level: {r['rephrase']}\nText Level: ")
              for r in evaluation]
    (root / "prompt").mkdir(exist_ok=True)
    (root / "prompt" / "CCKEB_eval.json").write_text(json.dumps(prompt, indent=1))
    return root
