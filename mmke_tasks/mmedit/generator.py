"""The MMEdit mini (mmedit_mini): the shared world (mmke_eval/mini/world.py) in MMEdit's release layout.

``vqa/vqa_{train,eval}.json`` (a new answer to one picture question, rephrased by
``IMAGE_Q_REPHRASE``) and ``caption/caption_{train,eval}_edit.json`` (a new free-form description:
the MMKE-Bench mini's edits of those subjects, mmke_tasks/mmke/generator.py), images in
``val2014/`` and ``val2014_image_rephrase/``. Every record keeps the ``mini`` key (the ORIGINAL
answer, which ``knowledge_probes`` asks).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W
from mmke_tasks.mmke import generator as mmke_generator  # E-IC captions: the MMKE-Bench mini's edits

FAMILY = "mmedit"


def ensure_mini() -> Path:
    """The source cards' generator (called with no arguments): the cached mini of seed 0."""
    return G.ensure_generated(family=FAMILY)


def files(world: W.World) -> tuple[dict, dict]:
    """E-VQA: the first half of each knowledge type's subjects; E-IC: the second half (the
    mmke_mini edits of those subjects, their free-form descriptions as captions)."""
    files, images = {}, {}
    mmke_records, _ = mmke_generator.build_records(world)
    kinds = (("entity", world.entities), ("visual", world.signs), ("user", world.items))
    for split in G.SPLITS:
        vqa, caption = [], []
        for stem, subjects in kinds:
            pool = subjects[split]
            half = len(pool) // 2 or 1
            for index, subject in enumerate(pool):
                rng = G.release_rng(world, "mmedit", stem, split, index)
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
                record.update(G.locality_fields(world, subject, rng, "val2014/", f"COCO_val2014_mini_loc_{stem}_{split}_{index:03d}", images))
                record[G.EXTRA_KEY] = {"type": stem, "original_answers": {"src": record["pred"]}}
                target.append(record)
        files[f"vqa/vqa_{split}.json"] = vqa
        files[f"caption/caption_{split}_edit.json"] = caption
    return files, images


def _new_answer(world: W.World, question: str, old: str, rng: random.Random) -> str:
    return rng.choice([v for v in G.answer_pool(world, question) if v != old])


def knowledge_probes(root: Path, split: str = "eval") -> list[dict]:
    """The probes of the generated mini under ``root`` answered with the ORIGINAL facts:
    {"type", "kind", "case", "question", "answer", "image"} (image: a path or "")."""
    root = Path(root)
    probes = G.KnowledgeProbes()
    add = probes.add
    loc = probes.add_locality

    for subset, pattern in (("vqa", "vqa/vqa_{split}.json"), ("caption", "caption/caption_{split}_edit.json")):
        for i, rec in enumerate(json.loads((root / pattern.format(split=split)).read_text())):
            case, type_ = f"{subset}/{split}/{i}", subset
            add("rel", case, rec["src"], rec["pred"], str(root / rec["image"]), type_)
            add("t_gen", case, rec["rephrase"], rec["pred"], str(root / rec["image"]), type_)
            add("i_gen", case, rec["src"], rec["pred"], str(root / rec["image_rephrase"]), type_)
            loc(rec, case, root, short=True)
    return list(probes)
