"""The CCKEB mini (cckeb_mini): the shared world (mmke_eval/mini/world.py) in CCKEB's release layout.

``CCKEB_train.json``, ``CCKEB_eval.json`` and ``CCKEB_images/mmkb_images/``. A case is a chain of
two edits, as in CCKEB:

* the visual edit (VLKEB's, as in vlkeb_mini): the picture of an entity is said to show another
  entity (``src`` "What is the name of the thing in the image?", ``alt`` the other entity's name);
* the textual edit, about that other entity, by name and without a picture: its home city changes
  (``textual_edit.src`` "Where is <alt> from?", ``pred`` its city, ``alt`` a new city);
* the compositional question (``port_new``, type ``comp``), on the first picture: "Where is the
  thing in the image from?", whose answer needs both edits (picture -> new entity -> new city).

The locality questions of both edits are about neither entity. Every fifth record gives the textual
``pred``/``alt`` as one-word lists (the release has list-valued ones; the loader joins them). Every
record keeps the ``mini`` key (the subject and the ORIGINAL answers, which ``knowledge_probes`` asks).
"""

from __future__ import annotations

import json
from pathlib import Path

from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W

FAMILY = "cckeb"
IMAGES = "CCKEB_images/mmkb_images"
TEXT_CITY_Q2 = "Which city does {name} come from?"  # a rephrase of ENTITY_TEXT_Q["city"]
COMP_Q = W.ENTITY_IMAGE_Q["city"]  # "Where is the thing in the image from?"


def ensure_mini() -> Path:
    """The source cards' generator (called with no arguments): the cached mini of seed 0."""
    return G.ensure_generated(family=FAMILY)


def files(world: W.World) -> tuple[dict, dict]:
    files, images = {}, {}
    for split in G.SPLITS:
        files[f"CCKEB_{split}.json"] = [_record(world, e, split, i, images) for i, e in enumerate(world.entities[split])]
    return files, images


def _record(world: W.World, entity: W.Entity, split: str, index: int, images: dict) -> dict:
    rng = G.release_rng(world, FAMILY, split, index)
    folder = f"m.mini_{split}_{index:03d}"
    images[f"{IMAGES}/{folder}/google_0.png"] = (entity.look, W.sample_style(rng, "shape", "mild"))
    images[f"{IMAGES}/{folder}/google_1.png"] = (entity.look, W.sample_style(rng, "shape", "strong"))
    new = rng.choice([e for e in world.all_entities() if e != entity and e.city != entity.city])
    # The new home city is neither entity's: the compositional answer changes whatever the model guesses.
    city = rng.choice([c for c in world.cities if c not in (new.city, entity.city)])
    names = (entity.name, new.name)
    loc, loc_ans = _text_locality(world, rng, names)
    m_loc_q, m_loc_a, look = _image_locality(world, rng, (entity, new))
    m_loc = f"loc/{split}_{index:03d}.png"
    images[f"{IMAGES}/{m_loc}"] = (look, W.sample_style(rng, look[0], "any"))
    t_loc, t_loc_ans = _text_locality(world, rng, names)
    listed = index % 5 == 4
    record = {
        "src": W.ENTITY_NAME_Q, "pred": entity.name, "alt": new.name, "rephrase": W.ENTITY_NAME_Q2,
        "image": f"{folder}/google_0.png", "image_rephrase": f"{folder}/google_1.png",
        "loc": loc, "loc_ans": loc_ans, "m_loc": m_loc, "m_loc_q": m_loc_q, "m_loc_a": m_loc_a,
        "textual_edit": {
            "src": W.ENTITY_TEXT_Q["city"].format(name=new.name), "pred": [new.city] if listed else new.city,
            "alt": [city] if listed else city, "rephrase": TEXT_CITY_Q2.format(name=new.name),
            "loc": t_loc, "loc_ans": t_loc_ans,
        },
        "port_new": [{"port_type": "comp", "Q&A": {"Question": COMP_Q, "Answer": city}}],
        G.EXTRA_KEY: {
            "subject": {"name": entity.name, "shape": entity.shape, "colour": entity.colour, "pattern": entity.pattern},
            "new_entity": new.name,
            "original_answers": {"name": entity.name, "new_entity_city": new.city, "comp": entity.city},
        },
    }
    return record


def _text_locality(world: W.World, rng, names: tuple[str, ...]) -> tuple[str, str]:
    """A text fact of the world that names neither entity of the case (G.text_locality, redrawn)."""
    while True:
        question, answer = G.text_locality(world, None, rng)
        if not any(name in question for name in names):
            return question, answer


def _image_locality(world: W.World, rng, subjects) -> tuple[str, str, tuple]:
    """A picture question about neither entity of the case (G.image_locality, redrawn)."""
    while True:
        question, answer, look = G.image_locality(world, subjects[0], rng)
        if look not in {s.look for s in subjects}:
            return question, answer, look


def knowledge_probes(root: Path, split: str = "eval") -> list[dict]:
    """The probes of the generated mini under ``root`` answered with the ORIGINAL facts:
    {"type", "kind", "case", "question", "answer", "image"} (image: a path or "")."""
    root = Path(root)
    probes = G.KnowledgeProbes()
    add = probes.add
    images = root / IMAGES
    for i, rec in enumerate(json.loads((root / f"CCKEB_{split}.json").read_text())):
        orig, case, textual = rec[G.EXTRA_KEY]["original_answers"], f"{split}/{i}", rec["textual_edit"]
        add("rel", case, rec["src"], orig["name"], str(images / rec["image"]))
        add("t_gen", case, rec["rephrase"], orig["name"], str(images / rec["image"]))
        add("i_gen", case, rec["src"], orig["name"], str(images / rec["image_rephrase"]))
        probes.add_locality(rec, case, images)
        add("text_rel", case, textual["src"], orig["new_entity_city"])
        add("text_gen", case, textual["rephrase"], orig["new_entity_city"])
        add("text_loc", case, textual["loc"], textual["loc_ans"])
        add("comp_rel", case, rec["port_new"][0]["Q&A"]["Question"], orig["comp"], str(images / rec["image"]))
    return list(probes)
