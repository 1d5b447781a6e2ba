"""The VLKEB mini (vlkeb_mini): the shared world (mmke_eval/mini/world.py) in VLKEB's release layout.

``train.json``, ``eval.json``, ``eval_multihop.json`` (1- to 4-hop portability),
``eval_edit_onehop.json`` ("edit twice") and ``VLKEB_images/``. A case edits which entity a picture
shows (``src`` = "What is the name of the thing in the image?", ``alt`` = another entity's name);
the k-hop questions follow the new entity's chain: home city, its country, the country's ruler,
the ruler's job (``world.py: ENTITY_HOP_Q``). Every record keeps the ``mini`` key (the subject and
the ORIGINAL answers, which ``knowledge_probes`` asks).
"""

from __future__ import annotations

import json
from pathlib import Path

from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W

FAMILY = "vlkeb"


def ensure_mini() -> Path:
    """The source cards' generator (called with no arguments): the cached mini of seed 0."""
    return G.ensure_generated(family=FAMILY)


def files(world: W.World) -> tuple[dict, dict]:
    files, images = {}, {}
    for split in G.SPLITS:
        records = [_vlkeb_record(world, e, split, i, images) for i, e in enumerate(world.entities[split])]
        if split == "train":
            files["train.json"] = [_with(r) for r in records]
            continue
        files["eval.json"] = [_with(r) for r in records]
        files["eval_multihop.json"] = [_with(r, port_new=r["port_new"]) for r in records]
        files["eval_edit_onehop.json"] = [_with(r, port_new=[r["edit_twice"]]) for r in records]
    return files, images


def _with(record: dict, **fields) -> dict:
    """The base fields of a VLKEB record, then ``fields``, then the ``mini`` key."""
    base = {k: v for k, v in record.items() if k not in ("port_new", "edit_twice", G.EXTRA_KEY)}
    return {**base, **fields, G.EXTRA_KEY: record[G.EXTRA_KEY]}


def _vlkeb_record(world: W.World, entity: W.Entity, split: str, index: int, images: dict) -> dict:
    rng = G.release_rng(world, "vlkeb", split, index)
    folder = f"m.mini_{split}_{index:03d}"
    images[f"VLKEB_images/{folder}/google_0.png"] = (entity.look, W.sample_style(rng, "shape", "mild"))
    images[f"VLKEB_images/{folder}/google_1.png"] = (entity.look, W.sample_style(rng, "shape", "strong"))
    old = world.entity_hops(entity)
    # The new entity lives in another country (so every hop's answer changes but, at times, the job).
    new = rng.choice([e for e in world.all_entities() if world.city_country[e.city] != old[2]])
    hops = world.entity_hops(new)
    record = {
        "src": W.ENTITY_NAME_Q, "pred": entity.name, "alt": new.name, "rephrase": W.ENTITY_NAME_Q2,
        "image": f"{folder}/google_0.png", "image_rephrase": f"{folder}/google_1.png",
        **G.locality_fields(world, entity, rng, "VLKEB_images/loc/", f"{split}_{index:03d}", images),
    }
    record["m_loc"] = record["m_loc"].removeprefix("VLKEB_images/")
    order = list(range(1, 5))
    rng.shuffle(order)  # entries in any order, as in the release
    record["port_new"] = [{"port_type": f"{k}-hop", "Q&A": {"Question": W.ENTITY_HOP_Q[k], "Answer": hops[k]}} for k in order]
    # Edit twice: the new entity's home city is edited again; the 2-hop question then follows it.
    second_city = rng.choice([c for c in world.cities if world.city_country[c] != hops[2]])
    record["edit_twice"] = {"port_edit_q": W.ENTITY_HOP_Q[1], "port_edit_a": second_city,
                            "port_q": W.ENTITY_HOP_Q[2], "port_a": world.city_country[second_city]}
    record[G.EXTRA_KEY] = {
        "subject": {"name": entity.name, "shape": entity.shape, "colour": entity.colour, "pattern": entity.pattern},
        "new_entity": new.name,
        "original_answers": {"name": entity.name, **{f"{k}-hop": old[k] for k in range(1, 5)}},
    }
    return record


def knowledge_probes(root: Path, split: str = "eval") -> list[dict]:
    """The probes of the generated mini under ``root`` answered with the ORIGINAL facts:
    {"type", "kind", "case", "question", "answer", "image"} (image: a path or "")."""
    root = Path(root)
    probes = G.KnowledgeProbes()
    add = probes.add
    loc = probes.add_locality

    images = root / "VLKEB_images"
    name = "train.json" if split == "train" else "eval_multihop.json"
    for i, rec in enumerate(json.loads((root / name).read_text())):
        orig, case = rec[G.EXTRA_KEY]["original_answers"], f"{split}/{i}"
        add("rel", case, rec["src"], orig["name"], str(images / rec["image"]))
        add("t_gen", case, rec["rephrase"], orig["name"], str(images / rec["image"]))
        add("i_gen", case, rec["src"], orig["name"], str(images / rec["image_rephrase"]))
        for k in range(1, 5):
            add(f"port_{k}hop", case, W.ENTITY_HOP_Q[k], orig[f"{k}-hop"], str(images / rec["image"]))
        loc(rec, case, images)
    return list(probes)
