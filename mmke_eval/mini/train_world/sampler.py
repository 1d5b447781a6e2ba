"""Sampling training examples: perception, the subjects' facts, and in-context editing (IKE format)."""

from __future__ import annotations

import random

from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W
from mmke_eval.mini.train_world.config import Config
from mmke_eval.mini.train_world.examples import Encoder, ImagePool
from mmke_eval.mini.train_world.texts import (all_text_facts, counterfactual, description_qa, more_image_facts, scene_question,
                                             short_answer, subject_image_qa)


class Sampler:
    def __init__(self, world: W.World, pool: ImagePool, enc: Encoder, cfg: Config):
        self.world, self.pool, self.enc, self.cfg = world, pool, enc, cfg
        self.rng = random.Random(f"mmke_mini/sampler/{cfg.seed}")
        self.subjects = pool.subjects
        self.by_type = {
            "entity": world.all_entities(), "sign": world.all_signs(), "item": world.all_items(),
        }
        self.text_facts = all_text_facts(world)
        self.image_qa = {id(s): subject_image_qa(world, s, cfg.subject_perception) for s in self.subjects}
        self.more_image_qa = {id(s): more_image_facts(world, s) for s in self.subjects}

    # one example = (ids, labels, pool index or -1)
    def perception(self):
        r = self.rng
        if r.random() < 0.5:
            i = r.choice(self.pool.generic)
        else:
            i = self.pool.of(r.choice(self.subjects).look, r)
        q, a = r.choice(G.perception_qa(self.pool.looks[i]))
        if r.random() < 0.1:
            q = short_answer(q)
        return (*self.enc.qa(q, a, True), i)

    def subject_image(self):
        """A question about a subject's picture. Entities, which carry most of the other families'
        questions (VLKEB's hops, MIKE's prompts), are drawn more often; 10% go through the short-answer wrapper."""
        r = self.rng
        x = r.random()
        e = self.cfg.entity_share
        kind = "entity" if x < e else "sign" if x < e + (1 - e) * 5 / 11 else "item"
        s = r.choice(self.by_type[kind])
        more = self.more_image_qa[id(s)]
        y = r.random()
        scene = self.cfg.scene_share
        if kind == "entity" and y < scene:
            q, a = scene_question(self.world, s, r)
        elif more and y < (scene + self.cfg.more_share if kind == "entity" else min(0.2, self.cfg.more_share)):
            q, a = r.choice(more)
        else:
            q, a = r.choice(self.image_qa[id(s)])
        if r.random() < 0.1:
            q = short_answer(q)
        return (*self.enc.qa(q, a, True), self.pool.of(s.look, r))

    def text_fact(self):
        q, a = self.rng.choice(self.text_facts)
        return (*self.enc.qa(q, a, False), -1)

    def description(self):
        r = self.rng
        s = r.choice(self.subjects)
        q, a = r.choice(description_qa(s))
        return (*self.enc.qa(q, a, True), self.pool.of(s.look, r))

    def plain_batch(self, perception_only: bool):
        out = []
        for _ in range(self.cfg.batch):
            x = self.rng.random()
            if perception_only:
                out.append(self.perception() if x < 0.6 else self.text_fact())
            elif x < self.cfg.perception_share:
                out.append(self.perception())
            elif x < self.cfg.perception_share + self.cfg.picture_share:
                out.append(self.subject_image())
            elif x < self.cfg.perception_share + self.cfg.picture_share + self.cfg.text_share:
                out.append(self.text_fact())
            else:
                out.append(self.description())
        return out

    # in-context editing (IKE format)
    def _retain_pair(self, subject):  # noqa: C901
        """A question about something other than ``subject``, with its original answer, and its image."""
        r = self.rng
        if r.random() < 0.5:
            while True:
                q, a = r.choice(self.text_facts)
                if not subject_mentioned(subject, q):
                    break
            return q, a, -1
        if r.random() < 0.5:
            i = r.choice(self.pool.generic)
            q, a = r.choice(G.perception_qa(self.pool.looks[i]))
            return q, a, i
        other = r.choice(self.subjects)
        while other is subject:
            other = r.choice(self.subjects)
        q, a = r.choice(self.image_qa[id(other)])
        return q, a, self.pool.of(other.look, r)

    def ike_example(self, n_demos: int):
        r = self.rng
        kind = r.choice(("entity", "sign", "item"))
        subjects = self.by_type[kind]
        text, spans = "", []

        def add(piece: str, answer: str | None = None):
            nonlocal text
            if answer is None:
                text += piece
                return
            text += piece + " "
            spans.append((len(text), len(text) + len(answer)))
            text += answer

        for _ in range(n_demos):
            d = r.choice(subjects)
            cf = counterfactual(self.world, d, r)
            add(f"New Fact: {cf['src']} {cf['alt']}\nPrompt:")
            mode = r.random()
            if mode < 0.3:
                add(f" {cf['src']}", cf["alt"])
            elif mode < 0.6:
                add(f" {cf['rephrase']}", cf["alt"])
            else:
                q, a, _ = self._retain_pair(d)
                add(f" {q}", a)
            add("\n\n")
        subject = r.choice(subjects)
        cf = counterfactual(self.world, subject, r)
        if r.random() < 0.7:  # the IKE editor ends its demonstrations with a copy of the edit itself
            add(f"New Fact: {cf['src']} {cf['alt']}\nPrompt: {cf['src']}", cf["alt"])
            add("\n\n")
        add(f"New Fact: {cf['src']} {cf['alt']}\nPrompt:")
        mode = r.random()
        image = -1
        if mode < 0.25 and cf["text_q"]:
            q, a = r.choice(cf["text_q"])
        elif mode < 0.5:
            q, a = r.choice(cf["image_q"])
            image = self.pool.of(subject.look, r)
        elif mode < 0.6:
            q, a = r.choice(((cf["src"], cf["alt"]), (cf["rephrase"], cf["alt"])))
            image = self.pool.of(subject.look, r)
        else:
            q, a, image = self._retain_pair(subject)
        add(f" {q}", a)
        ids, labels = self.enc.encode(text, spans, image >= 0)
        return ids, labels, image

    def ike_batch(self):
        r = self.rng
        x = r.random()
        if x < 0.3:
            k = r.randint(0, 4)
        elif x < 0.65:
            k = r.randint(5, 14)
        else:
            k = r.randint(15, self.cfg.max_demos)
        return [self.ike_example(k) for _ in range(self.cfg.ike_batch)]


def subject_mentioned(subject, question: str) -> bool:
    key = subject.name if isinstance(subject, W.Entity) else subject.desc
    return key in question
