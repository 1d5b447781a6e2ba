"""Measuring the world model: the benchmark's probes with the ORIGINAL answers, teacher-forced
(reference protocol), scored by the product adapter (``LlavaHFAdapter.teacher_forced``, what an
evaluation of this model scores with); fresh renders; the other families' minis; an IKE check.

The probes are the MMKE family loader's (``mmke_tasks.mmke.loader``) with the answers the generator
keeps under the records' ``mini`` key, so the measurement asks exactly what a run asks.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from mmke_eval.adapters.base import Query
from mmke_eval.adapters.llava_hf import LlavaHFAdapter
from mmke_tasks.mmke import generator as mmke_generator
from mmke_tasks.mmke import loader as mmke
from mmke_eval.data.records import read_records
from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W
from mmke_eval.mini.train_world.config import Config

# The probe order of every record as the measurement has always listed them: the quick evaluation
# during training and the IKE check sample from these lists, so the order keeps their figures.
PROBE_ORDER = ("t_rel_1", "i_rel_1", "i_gen_1", "t_rel_2", "i_rel_2", "i_gen_2", "t_rel", "i_rel", "i_gen",
               "port", "t_loc", "i_loc")
# Where the generator keeps the original answer of each probe (records' ``mini.original_answers``);
# the locality probes' answers are original knowledge already.
ORIGINAL_ANSWER_KEY = {
    "t_rel_1": "rel_1_ans", "i_rel_1": "m_rel_1_ans", "i_gen_1": "m_rel_1_ans",
    "t_rel_2": "rel_2_ans", "i_rel_2": "m_rel_2_ans", "i_gen_2": "m_rel_2_ans",
    "t_rel": "rel_ans", "i_rel": "m_rel_ans", "i_gen": "m_rel_ans", "port": "port",
}


def loaded_cases(root: Path, knowledge_type: str, split: str) -> list:
    """The family loader's edit cases of one knowledge type and split; every record must be kept (the
    generator writes none the protocol skips), or the figures would cover fewer cases than they say."""
    cases, report = mmke.load_cases(Path(root), knowledge_type, split)
    if report.n_skipped:
        raise ValueError(f"{root}: the loader skipped records of {knowledge_type} {split} ({report.summary()}): "
                         "not a generated mmke_mini folder (python -m mmke_eval.mini.generate)")
    return cases


def ordered(case) -> list:
    return sorted(case.probes, key=lambda probe: PROBE_ORDER.index(probe.probe_id))


def original_probes(root: Path, splits=("eval",)) -> list[dict]:
    """Every probe of the generated benchmark under ``root``, answered with the ORIGINAL knowledge:
    {"type" (file stem), "kind", "case", "question", "answer", "image" (a path or "")}."""
    probes = []
    for knowledge_type, stem in mmke_generator.STEMS.items():
        for split in splits:
            cases = loaded_cases(root, knowledge_type, split)
            records = read_records(mmke.split_file(Path(root), knowledge_type, split))
            for i, case in enumerate(cases):
                original = records[i][G.EXTRA_KEY]["original_answers"]
                for probe in ordered(case):
                    key = ORIGINAL_ANSWER_KEY.get(probe.probe_id)
                    probes.append({"type": stem, "kind": probe.kind, "case": f"{stem}/{split}/{i}", "question": probe.question,
                                   "answer": original[key] if key else probe.answer, "image": probe.image})
    return probes


def ike_probes(root: Path, n_demos: int, seed: int) -> list[dict]:
    """A check of in-context editing: eval edits as IKE prompts with train-split demonstrations.

    (The benchmark's IKE editor retrieves the most similar demonstrations; this check draws them at
    random, which is harder.)

    Returns the probes (answered with the EDITED knowledge for rel/gen/port probes, original for
    locality), each with its prefix. Demonstrations are taken from the train split at random (copy, update
    and retain kinds, as the reference IKE builds them)."""
    rng = random.Random(f"mmke_mini/ike_check/{seed}")
    probes = []
    for knowledge_type, stem in mmke_generator.STEMS.items():
        train = loaded_cases(root, knowledge_type, "train")
        for i, case in enumerate(loaded_cases(root, knowledge_type, "eval")):
            demos = ""
            for d in rng.sample(train, n_demos):
                fact = f"{d.prompt} {d.target}"
                t_loc = next(p for p in d.probes if p.kind == mmke.T_LOC)
                x, y = rng.choice(((d.prompt, d.target), (d.rephrase_prompt, d.target), (t_loc.question, t_loc.answer)))
                demos += f"New Fact: {fact}\nPrompt: {x} {y}\n\n"
            fact = f"{case.prompt} {case.target}"
            # as editors/ike.py builds it: demonstrations, a copy of the edit, then the query
            prefix = demos + f"New Fact: {fact}\nPrompt: {fact}\n\n" + f"New Fact: {fact}\nPrompt: "
            for probe in ordered(case):
                probes.append({"type": stem, "kind": "ike_" + probe.kind, "case": f"{stem}/eval/{i}", "question": probe.question,
                               "answer": probe.answer, "image": probe.image, "prefix": prefix})
    return probes


def fresh_render_probes(world: W.World, seed: int, per_subject: int = 1) -> list[dict]:
    """Image questions about every subject on newly drawn pictures (never saved, never trained on)."""
    rng = random.Random(f"mmke_mini/fresh/{seed}")
    probes = []
    for s in world.all_entities() + world.all_signs() + world.all_items():
        for _ in range(per_subject):
            image = W.render(s.look, W.sample_style(rng, s.look[0], "any"))
            q, a = rng.choice(G.image_facts(world, s))
            probes.append({"type": "fresh", "kind": "fresh_fact", "case": "", "question": q, "answer": a, "image": image})
            q, a = rng.choice(G.perception_qa(s.look))
            probes.append({"type": "fresh", "kind": "fresh_perception", "case": "", "question": q, "answer": a, "image": image})
    return probes


def token_accuracies(model, processor, probes: list[dict], batch: int = 64) -> list[float]:
    """Teacher-forced token accuracy of each probe as an evaluation scores it: the product adapter's
    ``teacher_forced`` (raw layout: BOS, image tokens, prefix + question + " " + answer).

    A probe is {"question", "answer", "image" (path, PIL image or ""), optional "prefix" (IKE context)}."""
    from PIL import Image

    model.eval()
    adapter = LlavaHFAdapter(model, processor, batch_size=batch)
    scores = []
    for start in range(0, len(probes), batch):  # images opened a batch at a time
        queries = []
        for p in probes[start : start + batch]:
            image = p["image"]
            if image and not isinstance(image, Image.Image):
                image = Image.open(image).convert("RGB")
            queries.append(Query(p["question"], image or None, p["answer"], p.get("prefix", "")))
        scores += [result.token_acc for result in adapter.teacher_forced(queries, k=1)]
    return scores


def summarise(probes: list[dict], scores: list[float]) -> dict:
    table: dict = defaultdict(lambda: defaultdict(list))
    for p, s in zip(probes, scores):
        table[p["kind"]][p["type"]].append(s)
        table[p["kind"]]["all"].append(s)
    return {k: {t: round(100 * sum(v) / len(v), 1) for t, v in sorted(d.items())} for k, d in sorted(table.items())}


def measure(model_dir: Path, data_root: Path, world: W.World, cfg: Config, log) -> dict:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(cfg.threads)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    t0 = time.time()
    result = {}
    for name, splits in (("held_out_eval_split", ("eval",)), ("held_out_train_split", ("train",))):
        probes = original_probes(data_root, splits)
        result[name] = summarise(probes, token_accuracies(model, processor, probes))
        log(f"{name} (original knowledge, benchmark images): {json.dumps(result[name])}")
    probes = fresh_render_probes(world, seed=12345)
    result["fresh_renders"] = summarise(probes, token_accuracies(model, processor, probes))
    log(f"fresh renders (all subjects): {json.dumps(result['fresh_renders'])}")
    if world.lifelong:  # its model learned neither the other families' prompts nor the IKE format
        log(f"measuring took {time.time() - t0:.0f}s")
        return result
    result["other_families"] = measure_families(model, processor, world, log)
    for k in (0, 5, 25):
        probes = ike_probes(data_root, k, seed=k)
        probes = random.Random(k).sample(probes, min(300, len(probes)))
        result[f"ike_check_{k}_demos"] = summarise(probes, token_accuracies(model, processor, probes, batch=16))
        log(f"IKE-format check, {k} demonstrations (edited answers; loc = original): {json.dumps(result[f'ike_check_{k}_demos'])}")
    log(f"measuring took {time.time() - t0:.0f}s")
    return result


def measure_families(model, processor, world: W.World, log) -> dict:
    """The knowledge bar on the other families' minis (mmke_tasks/<family>/generator.py): their probes with the ORIGINAL
    answers, per split; for MIKE, what its locality probes and edits build on (names, captions, scenes)."""

    result = {}
    with tempfile.TemporaryDirectory(prefix="mmke_mini_families_") as tmp:
        for family in G.FAMILIES[1:]:  # the families with a mini besides the default one
            root = G.generate_any(family, Path(tmp) / family, seed=world.seed)
            for split in ("eval", "train"):
                probes = G.knowledge_probes(family, root, split)
                summary = summarise(probes, token_accuracies(model, processor, probes))
                result[f"{family}_{split}"] = summary
                log(f"{family} mini, {split} split (original knowledge): {json.dumps({k: v['all'] for k, v in summary.items()})}")
    return result
