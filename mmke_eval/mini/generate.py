"""The generated minis: the shared toy world (world.py) written in a benchmark family's release layout.

Each family that declares a mini (``mini:`` in mmke_tasks/<family>/family.yaml) names its generator
module, which gives ``files(world)``: ``{relative path: records}`` and ``{relative image path:
(look, style)}``, and ``knowledge_probes(root, split)``: the probes an unedited model should answer
(the world model's knowledge bar, docs/mmke-mini.md). ``generate_any(family, root, seed)`` writes::

    root/<the family's files and images>
    root/mmke_mini.json              (the world: cities, users, ... for people)
    root/.mmke_mini_stamp.json       (generator version, seed, sizes and, but for the default family, the family)

Records keep one extra key, ``mini`` (``EXTRA_KEY``), holding what the real benchmarks do not: the
subject, which facts the edit changes, and the ORIGINAL answers. ``ensure_generated()`` caches one
copy per family, seed and generator version. The helpers below draw what the families' records ask
(locality facts, picture questions) from the world.
"""

from __future__ import annotations

import importlib
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
SPLITS = ("train", "eval")


def _family(name: str | None):
    """The declared family ``name`` with a mini (None: the default one); an unknown name lists the known ones."""
    from mmke_eval import families

    declared = families.with_mini()
    if name is None:
        return declared[0]
    for family in declared:
        if family.name == name:
            return family
    raise ValueError(f"unknown family {name!r}: choose one of {', '.join(f.name for f in declared)}")


def _generator(name: str | None):
    return importlib.import_module(_family(name).mini)


def __getattr__(name: str):
    if name == "FAMILIES":  # the families with a mini, default first (mmke-eval make-mini --family)
        from mmke_eval import families

        return tuple(family.name for family in families.with_mini())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_root(seed: int = 0, family: str | None = None, lifelong: bool = False) -> Path:
    from mmke_eval.resources import cache_dir

    declared = _family(family)
    name = f"v{GENERATOR_VERSION}-seed{seed}"
    name = name if declared.mini_default else f"{name}-{declared.name}"
    return cache_dir() / "mmke_mini" / (f"{name}-lifelong" if lifelong else name)


def generate_any(family: str | None, root: Path, seed: int = 0, n_eval: int = 40, n_train: int = 40,
                 lifelong: bool = False) -> Path:
    """Write the mini of ``family`` (None: the default one) under ``root`` (same bytes for the same
    arguments); ``lifelong``: of the lifelong-scale world (world.py: build_world)."""
    declared = _family(family)
    root = Path(root)
    world = W.build_world(seed, n_eval=n_eval, n_train=n_train, lifelong=lifelong)
    files, images = importlib.import_module(declared.mini).files(world)
    for rel, records in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    write_images(root, images)
    (root / "mmke_mini.json").write_text(json.dumps(world_summary(world), indent=1) + "\n", encoding="utf-8")
    (root / STAMP_FILE).write_text(json.dumps(_stamp(seed, n_eval, n_train, declared.name, lifelong)) + "\n")
    return root


def generate(root: Path, seed: int = 0, n_eval: int = 40, n_train: int = 40, lifelong: bool = False) -> Path:
    """Write the default family's mini (the world's own layout) under ``root``; return root."""
    return generate_any(None, root, seed, n_eval, n_train, lifelong)


def knowledge_probes(family: str | None, root: Path, split: str = "eval") -> list[dict]:
    """The probes of the generated mini of ``family`` (None: the default one) under ``root`` answered
    with the ORIGINAL facts: {"type", "kind", "case", "question", "answer", "image"} (image: a path or "")."""
    return _generator(family).knowledge_probes(root, split)


class KnowledgeProbes(list):
    """The probes of a generated mini answered with the ORIGINAL facts, as ``knowledge_probes``
    lists them: {"type", "kind", "case", "question", "answer", "image"} (image: a path or "")."""

    def add(self, kind: str, case: str, question: str, answer: str, image: str = "", type_: str = "all") -> None:
        self.append({"type": type_, "kind": kind, "case": case, "question": question, "answer": answer, "image": image})

    def add_locality(self, record: dict, case: str, image_root: Path, short: bool = False) -> None:
        """An EasyEdit-format record's text and image locality probes (``short``: MMEdit VQA's wrapper)."""
        self.add("t_loc", case, record["loc"], record["loc_ans"])
        question = f"Question: {record['m_loc_q']} Short answer:" if short else record["m_loc_q"]
        self.add("i_loc", case, question, record["m_loc_a"], str(image_root / record["m_loc"]))


def ensure_generated(root: Path | None = None, seed: int = 0, family: str | None = None, lifelong: bool = False) -> Path:
    """The root of the generated mini of ``family`` (None: the default one) for ``seed`` (``lifelong``:
    of the lifelong-scale world); generates it if missing or stale.

    Idempotent and safe when several processes call it at once: the data is written to a temporary
    folder beside ``root`` and moved into place; a stamp file records the generator version and seed.
    """
    family = _family(family).name
    root = Path(root) if root is not None else default_root(seed, family, lifelong)
    expected = _stamp(seed, 40, 40, family, lifelong)
    if _read_stamp(root) == expected:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        generate_any(family, tmp, seed=seed, lifelong=lifelong)
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


def _stamp(seed: int, n_eval: int, n_train: int, family: str | None = None, lifelong: bool = False) -> dict:
    stamp = {"generator": "mmke_mini", "version": GENERATOR_VERSION, "seed": seed, "n_eval": n_eval, "n_train": n_train}
    declared = _family(family)
    stamp = stamp if declared.mini_default else {**stamp, "family": declared.name}
    return {**stamp, "world": "lifelong", "entities": [W.LIFELONG_N_EVAL, W.LIFELONG_N_TRAIN]} if lifelong else stamp


def _read_stamp(root: Path) -> dict | None:
    try:
        return json.loads((root / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None


def release_rng(world: W.World, *parts) -> random.Random:
    """A seeded stream of one record of a family's mini (``parts``: the family, split, index, ...)."""
    return random.Random("/".join(["mmke_mini", "release", str(world.seed), *map(str, parts)]))


def locality_fields(world: W.World, subject, rng: random.Random, image_dir: str, name: str, images: dict) -> dict:
    """The EasyEdit locality fields: a text fact and a picture question, never about ``subject``."""
    loc, loc_ans = text_locality(world, subject, rng)
    m_loc_q, m_loc_a, look = image_locality(world, subject, rng)
    m_loc = f"{image_dir}{name}.png"
    images[m_loc] = (look, W.sample_style(rng, look[0], "any"))
    return {"loc": loc, "loc_ans": loc_ans, "m_loc": m_loc, "m_loc_q": m_loc_q, "m_loc_a": m_loc_a}


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
        **({"world": "lifelong"} if world.lifelong else {}),
        "counts": {kind: {s: len(getattr(world, kind)[s]) for s in SPLITS} for kind in ("entities", "signs", "items")},
    }


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
        _, shape, colour, pattern = look[:4]
        plate = [(W.PLATE_Q, look[4])] if len(look) == 5 else []
        return [(W.SHAPE_Q, shape), (W.SHAPE_COLOUR_Q, colour), (W.SHAPE_PATTERN_Q, pattern)] + plate
    if kind == "arrows":
        _, count, colour, direction = look
        return [(W.ARROW_COUNT_Q, count), (W.ARROW_DIR_Q, direction), (W.ARROW_COLOUR_Q, colour)]
    _, item_kind, colour, pattern = look
    return [(W.ITEM_KIND_Q, item_kind), (W.ITEM_COLOUR_Q, colour), (W.ITEM_PATTERN_Q, pattern)]


def random_look(rng: random.Random, plates: bool = False) -> tuple:
    """A random drawing; ``plates``: the lifelong world's, whose shapes may stand on a plate."""
    kind = rng.choice(("shape", "arrows", "item"))
    if kind == "shape":
        look = ("shape", rng.choice(W.SHAPES), rng.choice(W.COLOUR_NAMES), rng.choice(W.PATTERNS))
        if plates:
            plate = rng.choice([p for p in W.PLATES if p != look[2]])
            return look + (plate,) if plate != "none" else look
        return look
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


def answer_pool(world: W.World, question: str) -> list[str]:
    """The answers a picture question can be edited to (MMEdit's VQA edits), the original among them."""
    pools = {
        W.ENTITY_IMAGE_Q["city"]: world.cities, W.ENTITY_IMAGE_Q["year"]: W.YEARS, W.ENTITY_IMAGE_Q["category"]: W.CATEGORIES,
        W.ITEM_IMAGE_Q["owner"]: list(world.users), W.ITEM_IMAGE_Q["place"]: W.PLACES, W.SIGN_IMAGE_Q: list(W.MEANINGS),
    }
    return list(pools[question])


def ruler_facts(world: W.World) -> list[tuple[str, str]]:
    return [(W.RULER_Q.format(country=c), u) for c, u in world.rulers.items()]


def image_locality(world: W.World, subject, rng: random.Random) -> tuple[str, str, tuple]:
    """(question, answer, look): perception of a random drawing, or a fact about another subject's picture."""
    if rng.random() < 0.6:
        look = random_look(rng, world.lifelong)
        while look == subject.look:
            look = random_look(rng, world.lifelong)
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
