"""The MMKE-Bench mini (mmke_mini): the shared world (mmke_eval/mini/world.py) in MMKE-Bench's release layout.

``files(world)`` gives what ``mmke_eval.mini.generate`` writes, the layout ``loader.py`` reads::

    root/data_json/{entity,visual,user}_{train,eval}.json
    root/data_image/{entity,visual,user,loc}/*.png        (paths in the JSON are relative to data_image/)

Each record has exactly the MMKE-Bench fields of its knowledge type (reference-benchmarks.md 1.3),
plus one extra key, ``mini``, holding what the real benchmark does not: the subject, which facts
the edit changes, and the ORIGINAL answer of every relation and portability question (to measure
what an unedited model knows: ``knowledge_probes``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W

FAMILY = "mmke"
STEMS = {"entity_level": "entity", "visual_knowledge": "visual", "user_specific": "user"}


def ensure_mini() -> Path:
    """The source cards' generator (called with no arguments): the cached mini of seed 0."""
    return G.ensure_generated(family=FAMILY)


def ensure_lifelong_mini() -> Path:
    """The lifelong-scale mini (mmke_mini_lifelong): the cached mini of seed 0's lifelong world."""
    return G.ensure_generated(family=FAMILY, lifelong=True)


def files(world: W.World) -> tuple[dict, dict]:
    """``{relative path: records}`` and ``{relative image path: (look, style)}`` of the release layout."""
    records, images = build_records(world)
    return ({f"data_json/{stem}_{split}.json": recs for (stem, split), recs in records.items()},
            {f"data_image/{rel}": drawing for rel, drawing in images.items()})


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------
def build_records(world: W.World) -> tuple[dict, dict]:
    """All records ``{(stem, split): [record]}`` and the images they name ``{relpath: (look, style)}``."""
    records: dict = {}
    images: dict = {}
    builders = {"entity": _entity_record, "visual": _sign_record, "user": _item_record}
    subjects = {"entity": world.entities, "visual": world.signs, "user": world.items}
    for stem in ("entity", "visual", "user"):
        for split in G.SPLITS:
            recs = []
            for index, subject in enumerate(subjects[stem][split]):
                rng = random.Random(f"mmke_mini/case/{world.seed}/{stem}/{split}/{index}")
                base = f"{stem}/{split}_{index:03d}"
                kind = subject.look[0]
                images[f"{base}.png"] = (subject.look, W.sample_style(rng, kind, "mild"))
                images[f"{base}_rephrase.png"] = (subject.look, W.sample_style(rng, kind, "strong"))
                record = builders[stem](world, subject, rng, base)
                if stem != "entity":
                    images[f"{base}_onehop.png"] = (subject.look, W.sample_style(rng, kind, "context"))
                t_loc = G.text_locality(world, subject, rng)
                m_loc_q, m_loc_a, m_look = G.image_locality(world, subject, rng)
                m_loc = f"loc/{stem}_{split}_{index:03d}.png"
                images[m_loc] = (m_look, W.sample_style(rng, m_look[0], "any"))
                record.update(loc=t_loc[0], loc_ans=t_loc[1], m_loc=m_loc, m_loc_q=m_loc_q, m_loc_a=m_loc_a)
                # the extra key last, so the MMKE fields read first
                record[G.EXTRA_KEY] = record.pop(G.EXTRA_KEY)
                recs.append(record)
            records[(stem, split)] = recs
    return records, images


def _other(rng: random.Random, options, current):
    return rng.choice([o for o in options if o != current])


def _entity_record(world: W.World, e: W.Entity, rng: random.Random, base: str) -> dict:
    country = world.city_country[e.city]
    new_city = rng.choice([c for c in world.cities if world.city_country[c] != country])
    second = rng.choice(("year", "category"))
    new = {"city": new_city, "year": e.year, "category": e.category}
    new[second] = _other(rng, W.YEARS if second == "year" else W.CATEGORIES, getattr(e, second))
    original = {"city": e.city, "year": e.year, "category": e.category}
    facts = ("city", second)
    record = {
        "knowledge_type": "entity_level",
        "src": W.ENTITY_SRC,
        "pred": e.description(),
        "alt": e.description(**new),
        "rephrase": W.ENTITY_REPHRASE,
        "image": f"{base}.png",
        "image_rephrase": f"{base}_rephrase.png",
    }
    _add_relation_probes(record, facts, new, {f: W.ENTITY_TEXT_Q[f].format(name=e.name) for f in facts}, W.ENTITY_IMAGE_Q)
    record["port_new"] = [{"port_type": "1-hop", "Q&A": {"Question": W.ENTITY_PORT_Q, "Answer": world.city_country[new_city]}}]
    record[G.EXTRA_KEY] = {
        "subject": {"name": e.name, "shape": e.shape, "colour": e.colour, "pattern": e.pattern,
                    **({"plate": e.plate} if e.plate != "none" else {}), **original},
        "edited_facts": {f: new[f] for f in facts},
        "original_answers": {
            "rel_1_ans": original[facts[0]], "rel_2_ans": original[facts[1]],
            "m_rel_1_ans": original[facts[0]], "m_rel_2_ans": original[facts[1]],
            "port": country,
        },
    }
    return record


def _add_relation_probes(record: dict, facts, new: dict, text_q: dict, image_q: dict) -> None:
    """rel_1/rel_2 (text) then m_rel_1/m_rel_2 (image) questions about ``facts``, answered with ``new``."""
    for n, fact in enumerate(facts, start=1):
        record[f"rel_{n}"] = text_q[fact]
        record[f"rel_{n}_ans"] = new[fact]
    for n, fact in enumerate(facts, start=1):
        record[f"m_rel_{n}"] = image_q[fact]
        record[f"m_rel_{n}_ans"] = new[fact]


def _sign_record(world: W.World, s: W.Sign, rng: random.Random, base: str) -> dict:
    new_meaning = _other(rng, list(W.MEANINGS), s.meaning)
    return {
        "knowledge_type": "visual_knowledge",
        "src": W.SIGN_SRC,
        "pred": s.description(),
        "alt": s.description(new_meaning),
        "rephrase": W.SIGN_REPHRASE,
        "image": f"{base}.png",
        "image_rephrase": f"{base}_rephrase.png",
        "rel": W.SIGN_TEXT_Q.format(desc=s.desc),
        "rel_ans": new_meaning,
        "m_rel": W.SIGN_IMAGE_Q,
        "m_rel_ans": new_meaning,
        "image_rephrase_question": W.SIGN_IMAGE_Q2,
        "one_hop_img": f"{base}_onehop.png",
        "port_new": [{"port_type": "1-hop", "Q&A": {"Question": W.SIGN_PORT_Q, "Answer": W.MEANINGS[new_meaning]}}],
        G.EXTRA_KEY: {
            "subject": {"count": s.count, "colour": s.colour, "direction": s.direction, "meaning": s.meaning},
            "edited_facts": {"meaning": new_meaning},
            "original_answers": {"rel_ans": s.meaning, "m_rel_ans": s.meaning, "port": W.MEANINGS[s.meaning]},
        },
    }


def _item_record(world: W.World, it: W.Item, rng: random.Random, base: str) -> dict:
    old_city = world.users[it.owner].city
    owners = [u for u in world.users if u != it.owner and world.users[u].city != old_city]
    new = {"owner": rng.choice(owners), "place": _other(rng, W.PLACES, it.place)}
    original = {"owner": it.owner, "place": it.place}
    facts = ("owner", "place")
    record = {
        "knowledge_type": "user_specific",
        "src": W.ITEM_SRC,
        "pred": it.description(),
        "alt": it.description(**new),
        "rephrase": W.ITEM_REPHRASE,
        "image": f"{base}.png",
        "image_rephrase": f"{base}_rephrase.png",
    }
    _add_relation_probes(record, facts, new, {f: W.ITEM_TEXT_Q[f].format(desc=it.desc) for f in facts}, W.ITEM_IMAGE_Q)
    record["one_hop_img"] = f"{base}_onehop.png"
    record["port_new"] = [{"port_type": "1-hop", "Q&A": {"Question": W.ITEM_PORT_Q, "Answer": world.users[new["owner"]].city}}]
    record[G.EXTRA_KEY] = {
        "subject": {"kind": it.kind, "colour": it.colour, "pattern": it.pattern, **original},
        "edited_facts": new,
        "original_answers": {
            "rel_1_ans": it.owner, "rel_2_ans": it.place, "m_rel_1_ans": it.owner, "m_rel_2_ans": it.place,
            "port": old_city,
        },
    }
    return record


# ----------------------------------------------------------------------------------------------
# What an unedited model should know
# ----------------------------------------------------------------------------------------------
def knowledge_probes(root: Path, split: str = "eval") -> list[dict]:
    """Every probe of the generated mini under ``root`` answered with the ORIGINAL knowledge:
    {"type", "kind", "case", "question", "answer", "image"} (image: a path or "")."""
    root = Path(root)
    probes = []
    for kt, stem in STEMS.items():
        for i, rec in enumerate(json.loads((root / "data_json" / f"{stem}_{split}.json").read_text())):
            orig = rec[G.EXTRA_KEY]["original_answers"]
            case = f"{stem}/{split}/{i}"

            def add(kind, q, a, rel=""):
                probes.append({"type": stem, "kind": kind, "case": case, "question": q, "answer": a,
                               "image": str(root / "data_image" / rel) if rel else ""})

            if kt == "visual_knowledge":
                add("t_rel", rec["rel"], orig["rel_ans"])
                add("i_rel", rec["m_rel"], orig["m_rel_ans"], rec["image"])
                add("i_gen", rec["image_rephrase_question"], orig["m_rel_ans"], rec["image_rephrase"])
            else:
                for n in (1, 2):
                    add("t_rel", rec[f"rel_{n}"], orig[f"rel_{n}_ans"])
                    add("i_rel", rec[f"m_rel_{n}"], orig[f"m_rel_{n}_ans"], rec["image"])
                    add("i_gen", rec[f"m_rel_{n}"], orig[f"m_rel_{n}_ans"], rec["image_rephrase"])
            port = rec["port_new"][0]["Q&A"]["Question"]
            add("port", port, orig["port"], rec["image"] if kt == "entity_level" else rec["one_hop_img"])
            add("t_loc", rec["loc"], rec["loc_ans"])
            add("i_loc", rec["m_loc_q"], rec["m_loc_a"], rec["m_loc"])
    return probes
