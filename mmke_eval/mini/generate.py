"""Generate mmke_mini: a complete MMKE-Bench-format benchmark drawn from a seeded toy world.

``generate(root, seed)`` writes the release layout that ``mmke_eval.data.mmke`` reads::

    root/data_json/{entity,visual,user}_{train,eval}.json
    root/data_image/{entity,visual,user,loc}/*.png        (paths in the JSON are relative to data_image/)
    root/mmke_mini.json                                     (the world: cities, users, ... for people)

Each record has exactly the MMKE-Bench fields of its knowledge type (reference-benchmarks.md 1.3),
plus one extra key, ``mini``, holding what the real benchmark does not: the subject, which facts
the edit changes, and the ORIGINAL answer of every relation and portability question (to measure
what an unedited model knows). ``ensure_generated()`` caches one copy per seed and generator version.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from mmke_eval.mini import world as W

GENERATOR_VERSION = W.WORLD_VERSION
STAMP_FILE = ".mmke_mini_stamp.json"
EXTRA_KEY = "mini"
STEMS = {"entity_level": "entity", "visual_knowledge": "visual", "user_specific": "user"}
SPLITS = ("train", "eval")


FAMILIES = ("mmke", "vlkeb", "mmedit", "mike")  # mmke: this module; the others: releases.py


def default_root(seed: int = 0, family: str = "mmke") -> Path:
    from mmke_eval.resources import cache_dir

    name = f"v{GENERATOR_VERSION}-seed{seed}"
    return cache_dir() / "mmke_mini" / (name if family == "mmke" else f"{name}-{family}")


def generate_any(family: str, root: Path, seed: int = 0, n_eval: int = 40, n_train: int = 40) -> Path:
    """Write the mini version of a benchmark family (mmke, vlkeb, mmedit, mike) under ``root``."""
    if family == "mmke":
        return generate(root, seed, n_eval, n_train)
    from mmke_eval.mini import releases

    releases.generate_family(family, root, seed, n_eval, n_train)
    (Path(root) / STAMP_FILE).write_text(json.dumps(_stamp(seed, n_eval, n_train, family)) + "\n")
    return Path(root)


def ensure_generated(root: Path | None = None, seed: int = 0, family: str = "mmke") -> Path:
    """The root of the generated benchmark (``family``'s mini version) for ``seed``; generates it if
    missing or stale.

    Idempotent and safe when several processes call it at once: the data is written to a temporary
    folder beside ``root`` and moved into place; a stamp file records the generator version and seed.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)}")
    root = Path(root) if root is not None else default_root(seed, family)
    expected = _stamp(seed, 40, 40, family)
    if _read_stamp(root) == expected:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        generate_any(family, tmp, seed=seed)
        if _read_stamp(root) == expected:  # another process finished first
            return root
        if root.exists():
            stale = Path(tempfile.mkdtemp(prefix=f".{root.name}.stale-", dir=root.parent))
            os.replace(root, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if _read_stamp(root) != expected:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_vlkeb() -> Path:
    """The source cards' generators (called with no arguments) of the other families' minis."""
    return ensure_generated(family="vlkeb")


def ensure_mmedit() -> Path:
    return ensure_generated(family="mmedit")


def ensure_mike() -> Path:
    return ensure_generated(family="mike")


def _stamp(seed: int, n_eval: int, n_train: int, family: str = "mmke") -> dict:
    stamp = {"generator": "mmke_mini", "version": GENERATOR_VERSION, "seed": seed, "n_eval": n_eval, "n_train": n_train}
    return stamp if family == "mmke" else {**stamp, "family": family}


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None


def generate(root: Path, seed: int = 0, n_eval: int = 40, n_train: int = 40) -> Path:
    """Write the benchmark of ``seed`` under ``root`` (same bytes for the same arguments); return root."""
    root = Path(root)
    world = W.build_world(seed, n_eval=n_eval, n_train=n_train)
    records, images = build_records(world)
    (root / "data_json").mkdir(parents=True, exist_ok=True)
    for (stem, split), recs in records.items():
        text = json.dumps(recs, indent=1, ensure_ascii=False, sort_keys=False) + "\n"
        (root / "data_json" / f"{stem}_{split}.json").write_text(text, encoding="utf-8")
    write_images(root / "data_image", images)
    (root / "mmke_mini.json").write_text(json.dumps(world_summary(world), indent=1) + "\n", encoding="utf-8")
    (root / STAMP_FILE).write_text(json.dumps(_stamp(seed, n_eval, n_train)) + "\n")
    return root


def write_images(folder: Path, images: dict) -> None:
    """Draw ``{relative path: (look, style)}`` under ``folder`` as PNG."""
    for rel, (look, style) in sorted(images.items()):
        path = Path(folder) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        W.render(look, style).save(path, format="PNG", optimize=False)


def world_summary(world: W.World) -> dict:
    return {
        "seed": world.seed,
        "version": GENERATOR_VERSION,
        "countries": world.countries,
        "city_country": world.city_country,
        "users": {u.name: {"city": u.city, "job": u.job} for u in world.users.values()},
        "meaning_consequence": W.MEANINGS,
        "rulers": world.rulers,
        "counts": {kind: {s: len(getattr(world, kind)[s]) for s in SPLITS} for kind in ("entities", "signs", "items")},
    }


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
        for split in SPLITS:
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
                t_loc = text_locality(world, subject, rng)
                m_loc_q, m_loc_a, m_look = image_locality(world, subject, rng)
                m_loc = f"loc/{stem}_{split}_{index:03d}.png"
                images[m_loc] = (m_look, W.sample_style(rng, m_look[0], "any"))
                record.update(loc=t_loc[0], loc_ans=t_loc[1], m_loc=m_loc, m_loc_q=m_loc_q, m_loc_a=m_loc_a)
                # the extra key last, so the MMKE fields read first
                record[EXTRA_KEY] = record.pop(EXTRA_KEY)
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
    record[EXTRA_KEY] = {
        "subject": {"name": e.name, "shape": e.shape, "colour": e.colour, "pattern": e.pattern, **original},
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
        EXTRA_KEY: {
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
    record[EXTRA_KEY] = {
        "subject": {"kind": it.kind, "colour": it.colour, "pattern": it.pattern, **original},
        "edited_facts": new,
        "original_answers": {
            "rel_1_ans": it.owner, "rel_2_ans": it.place, "m_rel_1_ans": it.owner, "m_rel_2_ans": it.place,
            "port": old_city,
        },
    }
    return record


# ----------------------------------------------------------------------------------------------
# Locality items: other knowledge the world holds
# ----------------------------------------------------------------------------------------------
def text_facts(world: W.World, exclude=None) -> dict[str, list[tuple[str, str]]]:
    """Text-only facts of the world by family, as (question, answer); ``exclude``: a subject to leave out."""
    out = {
        "city": [(W.CITY_COUNTRY_Q.format(city=c), k) for c, k in world.city_country.items()],
        "user": [(W.USER_CITY_Q.format(user=u.name), u.city) for u in world.users.values()]
        + [(W.USER_JOB_Q.format(user=u.name), u.job) for u in world.users.values()],
        "meaning": [(W.MEANING_Q.format(meaning=m), c) for m, c in W.MEANINGS.items()],
        "entity": [
            (W.ENTITY_TEXT_Q[f].format(name=e.name), getattr(e, f))
            for e in world.all_entities() if e != exclude for f in ("city", "year", "category")
        ]
        + [(W.ENTITY_PORT_TEXT_Q.format(name=e.name), world.city_country[e.city]) for e in world.all_entities() if e != exclude],
        "sign": [(W.SIGN_TEXT_Q.format(desc=s.desc), s.meaning) for s in world.all_signs() if s != exclude],
        "item": [
            (W.ITEM_TEXT_Q[f].format(desc=it.desc), getattr(it, f))
            for it in world.all_items() if it != exclude for f in ("owner", "place")
        ],
    }
    return out


def text_locality(world: W.World, subject, rng: random.Random) -> tuple[str, str]:
    facts = text_facts(world, exclude=subject)
    family = rng.choice(sorted(facts))
    return rng.choice(facts[family])


def perception_qa(look: tuple) -> list[tuple[str, str]]:
    """What can be asked about any drawing by looking at it."""
    kind = look[0]
    if kind == "shape":
        _, shape, colour, pattern = look
        return [(W.SHAPE_Q, shape), (W.SHAPE_COLOUR_Q, colour), (W.SHAPE_PATTERN_Q, pattern)]
    if kind == "arrows":
        _, count, colour, direction = look
        return [(W.ARROW_COUNT_Q, count), (W.ARROW_DIR_Q, direction), (W.ARROW_COLOUR_Q, colour)]
    _, item_kind, colour, pattern = look
    return [(W.ITEM_KIND_Q, item_kind), (W.ITEM_COLOUR_Q, colour), (W.ITEM_PATTERN_Q, pattern)]


def random_look(rng: random.Random) -> tuple:
    kind = rng.choice(("shape", "arrows", "item"))
    if kind == "shape":
        return ("shape", rng.choice(W.SHAPES), rng.choice(W.COLOUR_NAMES), rng.choice(W.PATTERNS))
    if kind == "arrows":
        return ("arrows", rng.choice(W.COUNTS), rng.choice(W.COLOUR_NAMES), rng.choice(W.DIRECTIONS))
    return ("item", rng.choice(W.ITEM_KINDS), rng.choice(W.COLOUR_NAMES), rng.choice(W.ITEM_PATTERNS))


def image_facts(world: W.World, subject) -> list[tuple[str, str]]:
    """Questions about a world subject's picture, as (question, answer), perception excluded."""
    if isinstance(subject, W.Entity):
        return [(W.ENTITY_NAME_Q, subject.name)] + [(W.ENTITY_IMAGE_Q[f], getattr(subject, f)) for f in ("city", "year", "category")] + [
            (W.ENTITY_PORT_Q, world.city_country[subject.city])
        ]
    if isinstance(subject, W.Sign):
        return [(W.SIGN_IMAGE_Q, subject.meaning), (W.SIGN_IMAGE_Q2, subject.meaning), (W.SIGN_PORT_Q, W.MEANINGS[subject.meaning])]
    return [(W.ITEM_IMAGE_Q[f], getattr(subject, f)) for f in ("owner", "place")] + [(W.ITEM_PORT_Q, world.users[subject.owner].city)]


def more_image_facts(world: W.World, subject) -> list[tuple[str, str]]:
    """What the other benchmark families' minis ask about a subject's picture, beyond ``image_facts``
    (kept apart so that mmke_mini's locality draws stay those of earlier world versions): VLKEB's
    3- and 4-hop chain and the name rephrase, MIKE's name and caption prompts, MMEdit's rephrases."""
    from mmke_eval.data import mike

    rephrased = [(W.IMAGE_Q_REPHRASE[q], a) for q, a in image_facts(world, subject) if q in W.IMAGE_Q_REPHRASE and q != W.SIGN_IMAGE_Q]
    if not isinstance(subject, W.Entity):
        return rephrased
    hops = world.entity_hops(subject)
    return rephrased + [
        (W.ENTITY_HOP_Q[3], hops[3]), (W.ENTITY_HOP_Q[4], hops[4]), (W.ENTITY_NAME_Q2, subject.name),
        (mike.VNA_PROMPT, subject.name), (mike.REPHRASE_PROMPT, subject.name), (mike.ELC_PROMPT, subject.description()),
    ]


def answer_pool(world: W.World, question: str) -> list[str]:
    """The answers a picture question can be edited to (MMEdit's VQA edits), the original among them."""
    pools = {
        W.ENTITY_IMAGE_Q["city"]: world.cities, W.ENTITY_IMAGE_Q["year"]: W.YEARS, W.ENTITY_IMAGE_Q["category"]: W.CATEGORIES,
        W.ITEM_IMAGE_Q["owner"]: list(world.users), W.ITEM_IMAGE_Q["place"]: W.PLACES, W.SIGN_IMAGE_Q: list(W.MEANINGS),
    }
    return list(pools[question])


def scene_question(world: W.World, entity: W.Entity, rng: random.Random) -> tuple[str, str]:
    """MIKE's complex-scenario question about a picture of ``entity``: its own name or another's, yes/no."""
    from mmke_eval.data import mike

    if rng.random() < 0.5:
        return mike.CSR_PROMPT.format(name=entity.name), W.YES
    other = rng.choice([e for e in world.all_entities() if e != entity])
    return mike.CSR_PROMPT.format(name=other.name), W.NO


def ruler_facts(world: W.World) -> list[tuple[str, str]]:
    return [(W.RULER_Q.format(country=c), u) for c, u in world.rulers.items()]


def image_locality(world: W.World, subject, rng: random.Random) -> tuple[str, str, tuple]:
    """(question, answer, look): perception of a random drawing, or a fact about another subject's picture."""
    if rng.random() < 0.6:
        look = random_look(rng)
        while look == subject.look:
            look = random_look(rng)
        q, a = rng.choice(perception_qa(look))
        return q, a, look
    others = [s for s in world.all_entities() + world.all_signs() + world.all_items() if s != subject]
    other = rng.choice(others)
    q, a = rng.choice(image_facts(world, other))
    return q, a, other.look


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="output folder (default: the cache folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_eval", type=int, default=40)
    parser.add_argument("--n_train", type=int, default=40)
    args = parser.parse_args(argv)
    if args.root is None and (args.n_eval, args.n_train) == (40, 40):
        print(ensure_generated(seed=args.seed))
    else:
        print(generate(args.root or default_root(args.seed), args.seed, args.n_eval, args.n_train))


if __name__ == "__main__":
    main()
