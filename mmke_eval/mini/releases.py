"""The mmke_mini world written in the release layouts of the other benchmark families.

``generate.py`` writes MMKE-Bench's layout; this module writes the same world (same subjects, same
kinds of pictures, drawn from seeded streams of their own) as

* **VLKEB** (``vlkeb``): ``train.json``, ``eval.json``, ``eval_multihop.json`` (1- to 4-hop
  portability), ``eval_edit_onehop.json`` ("edit twice") and ``VLKEB_images/``. A case edits which
  entity a picture shows (``src`` = "What is the name of the thing in the image?", ``alt`` =
  another entity's name); the k-hop questions follow the new entity's chain: home city, its
  country, the country's ruler, the ruler's job (``world.py: ENTITY_HOP_Q``).
* **MMEdit** (``mmedit``): ``vqa/vqa_{train,eval}.json`` (a new answer to one picture question,
  rephrased by ``IMAGE_Q_REPHRASE``) and ``caption/caption_{train,eval}_edit.json`` (a new
  free-form description), images in ``val2014/`` and ``val2014_image_rephrase/``.
* **MIKE** (``mike``): ``mike_{train,eval}.json`` in the local format of ``mmke_eval.data.mike``:
  an entity's pictures given another name, that of an entity of the other split (MIKE's entities
  are new to the model it edits, but a word the world model never saw is made of tokens it never
  produced, which no editor could write in: docs/mmke-mini.md), five pictures per entity (edit,
  generality, three more for multi-step editing) and two framed, off-centre "scenes" (the mini's
  stand-in for MIKE's complex scenes, which show several entities).

Every record keeps the ``mini`` key of generate.py: the subject and the ORIGINAL answers, which
``knowledge_probes`` turns into the probes an unedited model should answer (the world model's
knowledge bar, docs/mmke-mini.md).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W

FAMILIES = ("vlkeb", "mmedit", "mike")
SPLITS = G.SPLITS


def generate_family(family: str, root: Path, seed: int = 0, n_eval: int = 40, n_train: int = 40) -> Path:
    """Write the mini version of ``family`` under ``root`` (same bytes for the same arguments)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: choose one of {', '.join(FAMILIES)} (mmke: generate.py)")
    root = Path(root)
    world = W.build_world(seed, n_eval=n_eval, n_train=n_train)
    files, images = {"vlkeb": vlkeb_files, "mmedit": mmedit_files, "mike": mike_files}[family](world)
    for rel, records in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    G.write_images(root, images)
    (root / "mmke_mini.json").write_text(json.dumps(G.world_summary(world), indent=1) + "\n", encoding="utf-8")
    return root


def _rng(world: W.World, *parts) -> random.Random:
    return random.Random("/".join(["mmke_mini", "release", str(world.seed), *map(str, parts)]))


def _locality(world: W.World, subject, rng: random.Random, image_dir: str, name: str, images: dict) -> dict:
    """The EasyEdit locality fields: a text fact and a picture question, never about ``subject``."""
    loc, loc_ans = G.text_locality(world, subject, rng)
    m_loc_q, m_loc_a, look = G.image_locality(world, subject, rng)
    m_loc = f"{image_dir}{name}.png"
    images[m_loc] = (look, W.sample_style(rng, look[0], "any"))
    return {"loc": loc, "loc_ans": loc_ans, "m_loc": m_loc, "m_loc_q": m_loc_q, "m_loc_a": m_loc_a}


# -- VLKEB ------------------------------------------------------------------------------------
def vlkeb_files(world: W.World) -> tuple[dict, dict]:
    files, images = {}, {}
    for split in SPLITS:
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
    rng = _rng(world, "vlkeb", split, index)
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
        **_locality(world, entity, rng, "VLKEB_images/loc/", f"{split}_{index:03d}", images),
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


# -- MMEdit -----------------------------------------------------------------------------------
def mmedit_files(world: W.World) -> tuple[dict, dict]:
    """E-VQA: the first half of each knowledge type's subjects; E-IC: the second half (the
    mmke_mini edits of those subjects, their free-form descriptions as captions)."""
    files, images = {}, {}
    mmke_records, _ = G.build_records(world)
    kinds = (("entity", world.entities), ("visual", world.signs), ("user", world.items))
    for split in SPLITS:
        vqa, caption = [], []
        for stem, subjects in kinds:
            pool = subjects[split]
            half = len(pool) // 2 or 1
            for index, subject in enumerate(pool):
                rng = _rng(world, "mmedit", stem, split, index)
                name = f"COCO_val2014_mini_{stem}_{split}_{index:03d}"
                images[f"val2014/{name}.png"] = (subject.look, W.sample_style(rng, subject.look[0], "mild"))
                images[f"val2014_image_rephrase/{name}.png"] = (subject.look, W.sample_style(rng, subject.look[0], "strong"))
                record = {"image": f"val2014/{name}.png", "image_rephrase": f"val2014_image_rephrase/{name}.png"}
                if index < half:
                    question, old = rng.choice([qa for qa in G.image_facts(world, subject) if qa[0] in W.IMAGE_Q_REPHRASE])
                    record = {"src": question, "pred": old, "alt": _new_answer(world, question, old, rng),
                              "rephrase": W.IMAGE_Q_REPHRASE[question], **record}
                    target = vqa
                else:
                    mmke = mmke_records[(stem, split)][index]
                    record = {"src": mmke["src"], "pred": mmke["pred"], "alt": mmke["alt"], "rephrase": mmke["rephrase"], **record}
                    target = caption
                record.update(_locality(world, subject, rng, "val2014/", f"COCO_val2014_mini_loc_{stem}_{split}_{index:03d}", images))
                record[G.EXTRA_KEY] = {"type": stem, "original_answers": {"src": record["pred"]}}
                target.append(record)
        files[f"vqa/vqa_{split}.json"] = vqa
        files[f"caption/caption_{split}_edit.json"] = caption
    return files, images


def _new_answer(world: W.World, question: str, old: str, rng: random.Random) -> str:
    return rng.choice([v for v in G.answer_pool(world, question) if v != old])


# -- MIKE -------------------------------------------------------------------------------------
def _cycle(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def mike_files(world: W.World) -> tuple[dict, dict]:
    files, images = {}, {}
    for split in SPLITS:
        # An eval entity takes the name of the train entity at its index, and the other way round.
        names = iter(e.name for e in _cycle(world.entities["train" if split == "eval" else "eval"], len(world.entities[split])))
        records = []
        for index, entity in enumerate(world.entities[split]):
            rng = _rng(world, "mike", split, index)
            folder = f"entities/{split}_{index:03d}"
            strengths = ("mild", "strong", "mild", "mild", "mild")  # [0] edit, [1] generality, [2:] multi-step
            paths = []
            for k, strength in enumerate(strengths):
                paths.append(f"{folder}/{k}.png")
                images[paths[-1]] = (entity.look, W.sample_style(rng, "shape", strength))
            scenes = []
            for k in range(2):
                scenes.append(f"scenes/{split}_{index:03d}_{k}.png")
                images[scenes[-1]] = (entity.look, W.sample_style(rng, "shape", "context"))
            name = next(names)
            loc, loc_ans = G.text_locality(world, entity, rng)
            records.append({
                "name": name, "images": paths, "caption": entity.description().replace(entity.name, name, 1),
                "scene_images": scenes, "loc": loc, "loc_ans": loc_ans,
                G.EXTRA_KEY: {"subject": {"name": entity.name, "shape": entity.shape, "colour": entity.colour,
                                          "pattern": entity.pattern},
                              "original_answers": {"name": entity.name, "caption": entity.description()}},
            })
        files[f"mike_{split}.json"] = records
    return files, images


# -- What an unedited model should know ---------------------------------------------------------
def knowledge_probes(family: str, root: Path, split: str = "eval") -> list[dict]:
    """The probes of a generated mini ``family`` under ``root`` answered with the ORIGINAL facts:
    {"type", "kind", "case", "question", "answer", "image"} (image: a path or "")."""
    from mmke_eval.data import mike

    root = Path(root)
    probes = []

    def add(kind, case, question, answer, image="", type_="all"):
        probes.append({"type": type_, "kind": kind, "case": case, "question": question, "answer": answer, "image": image})

    def loc(record, case, image_root, short=False):
        add("t_loc", case, record["loc"], record["loc_ans"])
        question = f"Question: {record['m_loc_q']} Short answer:" if short else record["m_loc_q"]
        add("i_loc", case, question, record["m_loc_a"], str(image_root / record["m_loc"]))

    if family == "vlkeb":
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
    elif family == "mmedit":
        for subset, pattern in (("vqa", "vqa/vqa_{split}.json"), ("caption", "caption/caption_{split}_edit.json")):
            for i, rec in enumerate(json.loads((root / pattern.format(split=split)).read_text())):
                case, type_ = f"{subset}/{split}/{i}", subset
                add("rel", case, rec["src"], rec["pred"], str(root / rec["image"]), type_)
                add("t_gen", case, rec["rephrase"], rec["pred"], str(root / rec["image"]), type_)
                add("i_gen", case, rec["src"], rec["pred"], str(root / rec["image_rephrase"]), type_)
                loc(rec, case, root, short=True)
    elif family == "mike":
        records = json.loads((root / f"mike_{split}.json").read_text())
        rng = random.Random(f"mmke_mini/mike_knowledge/{split}")
        for i, rec in enumerate(records):
            orig, case = rec[G.EXTRA_KEY]["original_answers"], f"{split}/{i}"
            add("vna", case, mike.VNA_PROMPT, orig["name"], str(root / rec["images"][0]))
            add("vna_rephrase", case, mike.REPHRASE_PROMPT, orig["name"], str(root / rec["images"][0]))
            add("vna_other_image", case, mike.VNA_PROMPT, orig["name"], str(root / rec["images"][1]))
            add("elc", case, mike.ELC_PROMPT, orig["caption"], str(root / rec["images"][1]))
            add("csr_yes", case, mike.CSR_PROMPT.format(name=orig["name"]), W.YES, str(root / rec["scene_images"][0]))
            other = rng.choice([r for r in records if r is not rec])[G.EXTRA_KEY]["original_answers"]["name"]
            add("csr_no", case, mike.CSR_PROMPT.format(name=other), W.NO, str(root / rec["scene_images"][1]))
            add("t_loc", case, rec["loc"], rec["loc_ans"])
    else:
        raise ValueError(f"unknown family {family!r}")
    return probes
