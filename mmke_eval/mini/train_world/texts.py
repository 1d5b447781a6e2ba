"""Text: every question and answer the world model is trained on, and the tokenizer's corpus."""

from __future__ import annotations

import random

from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W
from mmke_tasks.mike import loader as mike


def subject_image_qa(world: W.World, subject, perception: bool = True) -> list[tuple[str, str]]:
    """Questions asked with a picture of ``subject``: facts, and perception unless ``perception`` is False."""
    return G.image_facts(world, subject) + (G.perception_qa(subject.look) if perception else [])


def short_answer(question: str) -> str:
    """MMEdit asks its image-locality questions through this wrapper (templates/mmke/short_answer.jinja)."""
    return f"Question: {question} Short answer:"


def description_qa(subject) -> list[tuple[str, str]]:
    """The free-form edit prompt and its rephrase, answered with the original description."""
    if isinstance(subject, W.Entity):
        return [(W.ENTITY_SRC, subject.description()), (W.ENTITY_REPHRASE, subject.description())]
    if isinstance(subject, W.Sign):
        return [(W.SIGN_SRC, subject.description()), (W.SIGN_REPHRASE, subject.description())]
    return [(W.ITEM_SRC, subject.description()), (W.ITEM_REPHRASE, subject.description())]


def all_text_facts(world: W.World) -> list[tuple[str, str]]:
    facts = G.text_facts(world)
    return [qa for family in sorted(facts) for qa in facts[family]] + G.ruler_facts(world)


def counterfactual(world: W.World, subject, rng: random.Random) -> dict:
    """A random edit of ``subject``: its edit prompt, new description and questions answered by it.
    60% MMKE-style description edits; 20% name edits of an entity's picture (VLKEB, MIKE) and 20%
    edits of the answer to one picture question (MMEdit's VQA), of which signs and items get 40%."""

    x = rng.random()
    if isinstance(subject, W.Entity) and 0.6 <= x < 0.8:
        new = rng.choice([e.name for e in world.all_entities() if e != subject])
        image_q = [(W.ENTITY_NAME_Q, new), (W.ENTITY_NAME_Q2, new), (mike.VNA_PROMPT, new), (mike.REPHRASE_PROMPT, new)]
        return dict(src=W.ENTITY_NAME_Q, rephrase=W.ENTITY_NAME_Q2, alt=new, text_q=[], image_q=image_q)
    if x >= 0.6:
        question, old = rng.choice([qa for qa in G.image_facts(world, subject) if qa[0] in W.IMAGE_Q_REPHRASE])
        new = rng.choice([v for v in G.answer_pool(world, question) if v != old])
        alias = W.IMAGE_Q_REPHRASE[question]
        return dict(src=question, rephrase=alias, alt=new, text_q=[], image_q=[(question, new), (alias, new)])
    if isinstance(subject, W.Entity):
        new = {"city": rng.choice([c for c in world.cities if c != subject.city]), "year": subject.year, "category": subject.category}
        for fact, pool in (("year", W.YEARS), ("category", W.CATEGORIES)):
            if rng.random() < 0.8:
                new[fact] = rng.choice([v for v in pool if v != getattr(subject, fact)])
        changed = [f for f in new if new[f] != getattr(subject, f)]  # asked: only what the fact changes
        text_q = [(W.ENTITY_TEXT_Q[f].format(name=subject.name), new[f]) for f in changed]
        image_q = [(W.ENTITY_IMAGE_Q[f], new[f]) for f in changed]
        return dict(src=W.ENTITY_SRC, rephrase=W.ENTITY_REPHRASE, alt=subject.description(**new), text_q=text_q, image_q=image_q)
    if isinstance(subject, W.Sign):
        m = rng.choice([x for x in W.MEANINGS if x != subject.meaning])
        return dict(
            src=W.SIGN_SRC, rephrase=W.SIGN_REPHRASE, alt=subject.description(m),
            text_q=[(W.SIGN_TEXT_Q.format(desc=subject.desc), m)], image_q=[(W.SIGN_IMAGE_Q, m), (W.SIGN_IMAGE_Q2, m)],
        )
    new = {"owner": rng.choice([u for u in world.users if u != subject.owner]), "place": subject.place}
    if rng.random() < 0.85:
        new["place"] = rng.choice([p for p in W.PLACES if p != subject.place])
    changed = [f for f in new if new[f] != getattr(subject, f)]
    return dict(
        src=W.ITEM_SRC, rephrase=W.ITEM_REPHRASE, alt=subject.description(**new),
        text_q=[(W.ITEM_TEXT_Q[f].format(desc=subject.desc), new[f]) for f in changed],
        image_q=[(W.ITEM_IMAGE_Q[f], new[f]) for f in changed],
    )


def tokenizer_corpus(world: W.World) -> list[str]:
    lines = []
    subjects = world.all_entities() + world.all_signs() + world.all_items()
    for s in subjects:
        for q, a in subject_image_qa(world, s) + more_image_facts(world, s) + description_qa(s):
            lines.append(f"{q} {a}")
    lines += [short_answer(q) for q, _ in G.perception_qa(subjects[0].look)]
    lines += [scene_question(world, e, random.Random(e.name))[0] + " yes no" for e in world.all_entities()]
    lines += [f"{q} {a}" for q, a in all_text_facts(world)]
    rng = random.Random("tokenizer")
    for s in subjects:
        cf = counterfactual(world, s, rng)
        lines.append(f"New Fact: {cf['src']} {cf['alt']}\nPrompt: {cf['rephrase']} {cf['alt']}\n\n")
    lines += [" ".join(world.words())] * 4
    return lines * 3


def more_image_facts(world: W.World, subject) -> list[tuple[str, str]]:
    """What the other benchmark families' minis ask about a subject's picture, beyond ``image_facts``
    (kept apart so that mmke_mini's locality draws stay those of earlier world versions): VLKEB's
    3- and 4-hop chain and the name rephrase, MIKE's name and caption prompts, MMEdit's rephrases.
    The world model's curriculum, which names those families' prompts."""
    rephrased = [(W.IMAGE_Q_REPHRASE[q], a) for q, a in G.image_facts(world, subject) if q in W.IMAGE_Q_REPHRASE and q != W.SIGN_IMAGE_Q]
    if not isinstance(subject, W.Entity):
        return rephrased
    hops = world.entity_hops(subject)
    return rephrased + [
        (W.ENTITY_HOP_Q[3], hops[3]), (W.ENTITY_HOP_Q[4], hops[4]), (W.ENTITY_NAME_Q2, subject.name),
        (mike.VNA_PROMPT, subject.name), (mike.REPHRASE_PROMPT, subject.name), (mike.ELC_PROMPT, subject.description()),
    ]


def scene_question(world: W.World, entity: W.Entity, rng: random.Random) -> tuple[str, str]:
    """MIKE's complex-scenario question about a picture of ``entity``: its own name or another's, yes/no
    (the world model's curriculum, like ``more_image_facts``)."""
    if rng.random() < 0.5:
        return mike.CSR_PROMPT.format(name=entity.name), W.YES
    other = rng.choice([e for e in world.all_entities() if e != entity])
    return mike.CSR_PROMPT.format(name=other.name), W.NO
