"""The MIKE mini (mike_mini): the shared world (mmke_eval/mini/world.py) in MIKE's local layout.

``mike_{train,eval}.json`` in the format of ``loader.py``: an entity's pictures given another name,
that of an entity of the other split (MIKE's entities are new to the model it edits, but a word the
world model never saw is made of tokens it never produced, which no editor could write in:
docs/mmke-mini.md), five pictures per entity (edit, generality, three more for multi-step editing)
and two framed, off-centre "scenes" (the mini's stand-in for MIKE's complex scenes, which show
several entities). Every record keeps the ``mini`` key (the subject and the ORIGINAL answers,
which ``knowledge_probes`` asks).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W
from mmke_tasks.mike import loader as mike

FAMILY = "mike"


def ensure_mini() -> Path:
    """The source cards' generator (called with no arguments): the cached mini of seed 0."""
    return G.ensure_generated(family=FAMILY)


def _cycle(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def files(world: W.World) -> tuple[dict, dict]:
    files, images = {}, {}
    for split in G.SPLITS:
        # An eval entity takes the name of the train entity at its index, and the other way round.
        names = iter(e.name for e in _cycle(world.entities["train" if split == "eval" else "eval"], len(world.entities[split])))
        records = []
        for index, entity in enumerate(world.entities[split]):
            rng = G.release_rng(world, "mike", split, index)
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


def knowledge_probes(root: Path, split: str = "eval") -> list[dict]:
    """The probes of the generated mini under ``root`` answered with the ORIGINAL facts:
    {"type", "kind", "case", "question", "answer", "image"} (image: a path or "")."""
    root = Path(root)
    probes = G.KnowledgeProbes()
    add = probes.add

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
    return list(probes)
