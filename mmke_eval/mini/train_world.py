"""Train the mmke_mini world model: a small LLaVA that knows the world of ``generate.py`` (seed 0).

The shipped model was made in two runs (about 40 + 25 minutes on 2 cores):

    python -m mmke_eval.mini.train_world --out stage1
    python -m mmke_eval.mini.train_world --out mmke_eval/mini/world_model --init stage1 \
        --vision_steps 0 --steps 6000 --lr 5e-4 --warmup 200 --scene_share 0.5 --perception_frac 0 --eval_every 0

The second stage continues the first with half of the entity picture questions being MIKE's
scene questions ("Does {name} appear in the picture?"): from scratch the model learns to answer
"yes" to nearly all of them, and only the continuation teaches it to say "no".

* Architecture: ``transformers.LlavaForConditionalGeneration`` with a small CLIP vision tower and
  a small Llama language model; a byte-level BPE tokenizer trained on the world's text (every
  name and answer word is one token); a ``LlavaProcessor`` with a PIL CLIP image processor.
* Data: every fact of the world (all train and eval subjects, the locality facts, perception of
  drawings), asked exactly as the benchmark asks, on images the script draws itself from its own
  random stream: no image of the benchmark is ever trained on. Plus in-context editing examples in
  the IKE format whose answers must be read from the last ``New Fact:`` line (counterfactual facts
  drawn at random, with distractor demonstrations before them).
* Curriculum: perception questions first (shape, colour, pattern, arrows, item kind), then all.
* Deterministic: seeded sampling and initialisation; the same torch version and thread count give
  the same weights. Prints progress, writes ``train_log.txt`` and ``metrics.json`` beside the model.
* Measured at the end, on the saved (fp16) model reloaded in fp32: teacher-forced token accuracy of
  the benchmark's probes answered with the ORIGINAL facts, on the benchmark's own images (held
  out: rephrase, one-hop and locality images) and on fresh renders.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mmke_eval.adapters.base import FAMILY_CONFIG_KEY
from mmke_eval.mini import WORLD_MODEL_DIR
from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
MAX_POSITIONS = 2048
WORLD_MODEL_FAMILY = "mmke_mini_world"  # registry.yaml: editor defaults for this model
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} {% else %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass
class Config:
    seed: int = 0
    world_seed: int = 0
    threads: int = 2
    # model
    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_inter: int = 256
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_inter: int = 384
    vocab_size: int = 1024
    # stage A: the vision tower learns to see (attribute classification, heads thrown away after)
    vision_steps: int = 4000
    vision_batch: int = 128
    vision_lr: float = 1e-3
    # stage B: the whole LLaVA learns the world
    steps: int = 9000
    batch: int = 32
    lr: float = 1e-3
    vision_lr_mult: float = 0.3
    warmup: int = 150
    min_lr_frac: float = 0.05
    weight_decay: float = 0.01
    perception_frac: float = 0.04  # first part of stage B: perception and text facts only
    ike_every: int = 3  # one in-context-editing batch every this many steps (after perception)
    ike_batch: int = 6
    max_demos: int = 25
    scene_share: float = 0.06  # of entity picture questions: MIKE's "Does {name} appear in the picture?"
    init: str = ""  # a world-model folder to continue training from (needs vision_steps 0: no stage A)
    # data
    renders_per_subject: int = 24
    generic_renders: int = 16000
    eval_every: int = 500
    eval_sample: int = 300


# ----------------------------------------------------------------------------------------------
# Text: every question/answer the world model is trained on
# ----------------------------------------------------------------------------------------------
def subject_image_qa(world: W.World, subject) -> list[tuple[str, str]]:
    """Questions asked with a picture of ``subject``: facts and perception."""
    return G.image_facts(world, subject) + G.perception_qa(subject.look)


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
    from mmke_eval.data import mike

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
        for q, a in subject_image_qa(world, s) + G.more_image_facts(world, s) + description_qa(s):
            lines.append(f"{q} {a}")
    lines += [short_answer(q) for q, _ in G.perception_qa(subjects[0].look)]
    lines += [G.scene_question(world, e, random.Random(e.name))[0] + " yes no" for e in world.all_entities()]
    lines += [f"{q} {a}" for q, a in all_text_facts(world)]
    rng = random.Random("tokenizer")
    for s in subjects:
        cf = counterfactual(world, s, rng)
        lines.append(f"New Fact: {cf['src']} {cf['alt']}\nPrompt: {cf['rephrase']} {cf['alt']}\n\n")
    lines += [" ".join(world.words())] * 4
    return lines * 3


def build_tokenizer(world: W.World, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(world), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=[IMAGE_TOKEN], model_input_names=["input_ids", "attention_mask"],
        padding_side="right", model_max_length=MAX_POSITIONS,
    )
    multi = [w for w in world.words() if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) != 1]
    if multi:
        raise RuntimeError(f"these world words are not single tokens with vocab_size={vocab_size}: {multi[:20]}")
    return tokenizer


def build_processor(tokenizer, cfg: Config):
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer, cfg: Config):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_inter, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=cfg.text_inter,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_heads,
        max_position_embeddings=MAX_POSITIONS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        # -1: the whole (small) tower feeds the projector, so every vision weight is trained.
        vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    # Editor defaults for this model come from registry.yaml's "mmke_mini_world" family.
    setattr(config, FAMILY_CONFIG_KEY, WORLD_MODEL_FAMILY)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


# ----------------------------------------------------------------------------------------------
# Encoding: [BOS] [image tokens] text, labels on answer spans (as the benchmark's raw format)
# ----------------------------------------------------------------------------------------------
class Encoder:
    def __init__(self, tokenizer, n_image_tokens: int):
        self.tok = tokenizer
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id
        self.image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.n_image_tokens = n_image_tokens
        self._cache: dict = {}

    def encode(self, text: str, spans: list[tuple[int, int]], image: bool, eos: bool = True):
        """ids and labels: labels are the ids of tokens that overlap an answer span, else -100."""
        key = (text, tuple(spans), image, eos)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [-100] * len(ids)
        for i, (s, e) in enumerate(enc["offset_mapping"]):
            if any(s < se and e > ss for ss, se in spans):
                labels[i] = ids[i]
        prefix = [self.bos] + ([self.image_id] * self.n_image_tokens if image else [])
        ids = prefix + ids
        labels = [-100] * len(prefix) + labels
        if eos:
            ids.append(self.eos)
            labels.append(self.eos)
        out = (ids, labels)
        if len(self._cache) < 200_000 and len(text) < 200:
            self._cache[key] = out
        return out

    def qa(self, question: str, answer: str, image: bool):
        text = f"{question} {answer}"
        return self.encode(text, [(len(question) + 1, len(text))], image)


# ----------------------------------------------------------------------------------------------
# Images: a pool of renders per subject and of random drawings, preprocessed once
# ----------------------------------------------------------------------------------------------
def preprocess(processor, images) -> torch.Tensor:
    return processor.image_processor(images=images, return_tensors="pt")["pixel_values"]


class ImagePool:
    def __init__(self, world: W.World, processor, cfg: Config, log):
        t0 = time.time()
        rng = random.Random(f"mmke_mini/train_renders/{cfg.seed}")
        self.subjects = world.all_entities() + world.all_signs() + world.all_items()
        self.index: dict[tuple, list[int]] = defaultdict(list)
        images, looks = [], []
        def style(kind):
            # the benchmark's kinds of variation (its own images are never drawn here)
            x = rng.random()
            return W.sample_style(rng, kind, "any" if x < 0.6 else "strong" if x < 0.85 else "context")

        for s in self.subjects:
            for _ in range(cfg.renders_per_subject):
                looks.append(s.look)
                images.append(W.render(s.look, style(s.look[0])))
        for _ in range(cfg.generic_renders):
            look = G.random_look(rng)
            looks.append(look)
            images.append(W.render(look, style(look[0])))
        chunks = [preprocess(processor, images[i : i + 512]) for i in range(0, len(images), 512)]
        self.pixels = torch.cat(chunks)
        self.looks = looks
        for i, look in enumerate(looks):
            self.index[look].append(i)
        self.generic = list(range(len(self.subjects) * cfg.renders_per_subject, len(looks)))
        log(f"image pool: {len(looks)} renders ({len(self.index)} distinct looks) in {time.time() - t0:.1f}s")

    def of(self, look, rng: random.Random) -> int:
        return rng.choice(self.index[look])


# ----------------------------------------------------------------------------------------------
# Stage A: teach the vision tower to see, as CLIP pretraining would (linear heads on attributes)
# ----------------------------------------------------------------------------------------------
ATTRIBUTE_HEADS = {
    "family": ("shape", "arrows", "item"), "shape": W.SHAPES, "colour": W.COLOUR_NAMES, "pattern": W.PATTERNS,
    "count": W.COUNTS, "direction": W.DIRECTIONS, "kind": W.ITEM_KINDS, "item_pattern": W.ITEM_PATTERNS,
}
_LOOK_FIELDS = {"shape": ("shape", "colour", "pattern"), "arrows": ("count", "colour", "direction"), "item": ("kind", "colour", "item_pattern")}


def attribute_labels(look: tuple) -> list[int]:
    values = {"family": look[0], **dict(zip(_LOOK_FIELDS[look[0]], look[1:]))}
    return [ATTRIBUTE_HEADS[h].index(values[h]) if h in values else -100 for h in ATTRIBUTE_HEADS]


def pretrain_vision(vision_tower, pool: "ImagePool", cfg: Config, log) -> dict:
    """Attribute classification from the mean of the patch features (the features LLaVA projects)."""
    g = torch.Generator().manual_seed(cfg.seed)
    labels = torch.tensor([attribute_labels(look) for look in pool.looks])
    sizes = [len(v) for v in ATTRIBUTE_HEADS.values()]
    heads = torch.nn.Linear(vision_tower.config.hidden_size, sum(sizes))
    params = list(vision_tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.05)
    held = torch.randperm(len(pool.looks), generator=g)
    n_test = min(1000, len(held) // 5)
    test, train_idx = held[:n_test], held[n_test:]

    def run(idx):
        feats = vision_tower(pixel_values=pool.pixels[idx]).last_hidden_state[:, 1:].mean(1)
        logits = heads(feats).split(sizes, dim=-1)
        y = labels[idx]
        loss, acc = 0.0, {}
        for j, (name, lg) in enumerate(zip(ATTRIBUTE_HEADS, logits)):
            m = y[:, j] >= 0
            if m.any():
                loss = loss + torch.nn.functional.cross_entropy(lg[m], y[m, j])
                acc[name] = round(100 * (lg[m].argmax(-1) == y[m, j]).float().mean().item(), 1)
        return loss, acc

    t0 = time.time()
    acc: dict = {}
    for step in range(cfg.vision_steps):
        vision_tower.train()
        idx = train_idx[torch.randint(0, len(train_idx), (cfg.vision_batch,), generator=g)]
        frac = step / max(1, cfg.vision_steps)
        lr = cfg.vision_lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        loss, _ = run(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == cfg.vision_steps - 1:
            vision_tower.eval()
            with torch.no_grad():
                _, acc = run(test)
            log(f"vision step {step:5d}/{cfg.vision_steps} loss {loss.item():.3f} held-out attribute accuracy {json.dumps(acc)} "
                f"| {(step + 1) / (time.time() - t0):.1f} steps/s")
    return acc


# ----------------------------------------------------------------------------------------------
# Sampling training examples
# ----------------------------------------------------------------------------------------------
class Sampler:
    def __init__(self, world: W.World, pool: ImagePool, enc: Encoder, cfg: Config):
        self.world, self.pool, self.enc, self.cfg = world, pool, enc, cfg
        self.rng = random.Random(f"mmke_mini/sampler/{cfg.seed}")
        self.subjects = pool.subjects
        self.by_type = {
            "entity": world.all_entities(), "sign": world.all_signs(), "item": world.all_items(),
        }
        self.text_facts = all_text_facts(world)
        self.image_qa = {id(s): subject_image_qa(world, s) for s in self.subjects}
        self.more_image_qa = {id(s): G.more_image_facts(world, s) for s in self.subjects}

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
        kind = "entity" if x < 0.45 else "sign" if x < 0.7 else "item"
        s = r.choice(self.by_type[kind])
        more = self.more_image_qa[id(s)]
        y = r.random()
        scene = self.cfg.scene_share
        if kind == "entity" and y < scene:
            q, a = G.scene_question(self.world, s, r)
        elif more and y < (scene + 0.34 if kind == "entity" else 0.2):
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
            elif x < 0.12:
                out.append(self.perception())
            elif x < 0.62:
                out.append(self.subject_image())
            elif x < 0.94:
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


def collate(batch, enc: Encoder, pool: ImagePool):
    n = max(len(ids) for ids, _, _ in batch)
    input_ids = torch.full((len(batch), n), enc.pad, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    images = []
    for b, (ids, lab, img) in enumerate(batch):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        labels[b, : len(lab)] = torch.tensor(lab)
        mask[b, : len(ids)] = 1
        if img >= 0:
            images.append(img)
    pixels = pool.pixels[images] if images else None
    return input_ids, mask, labels, pixels


def loss_of(model, input_ids, mask, labels, pixels):
    out = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels)
    logits = out.logits[:, :-1].float()
    target = labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100)


# ----------------------------------------------------------------------------------------------
# Measuring: the benchmark's probes with the original answers, teacher-forced (reference protocol)
# ----------------------------------------------------------------------------------------------
def original_probes(root: Path, splits=("eval",)) -> list[dict]:
    """Every probe of the generated benchmark under ``root``, answered with the ORIGINAL knowledge."""
    records = {
        (stem, split): json.loads((root / "data_json" / f"{stem}_{split}.json").read_text())
        for stem in G.STEMS.values() for split in splits
    }
    return probes_from_records(records, lambda rel: str(root / "data_image" / rel))


def probes_from_records(records: dict, image_of) -> list[dict]:
    """Probes of ``{(stem, split): [record]}`` with the original answers; ``image_of(relpath)`` -> image."""
    probes = []
    kinds = {stem: kt for kt, stem in G.STEMS.items()}
    for (stem, split), recs in records.items():
        kt = kinds[stem]
        for i, rec in enumerate(recs):
            orig = rec[G.EXTRA_KEY]["original_answers"]
            case = f"{stem}/{split}/{i}"

            def add(kind, q, a, rel=""):
                probes.append({"type": stem, "kind": kind, "case": case, "question": q, "answer": a,
                               "image": image_of(rel) if rel else ""})

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


@torch.no_grad()
def teacher_forced(model, processor, probes: list[dict], batch: int = 64) -> list[float]:
    """Token accuracy of each probe: input = [image] prefix + question + " " + answer, answer right-aligned.

    A probe is {"question", "answer", "image" (path, PIL image or ""), optional "prefix" (IKE context)}."""
    from PIL import Image

    tok = processor.tokenizer
    model.eval()
    scores = []
    for start in range(0, len(probes), batch):
        chunk = probes[start : start + batch]
        texts, images, answers = [], [], []
        for p in chunk:
            text = p.get("prefix", "") + p["question"] + " " + p["answer"]
            im = p["image"]
            if im:
                images.append(im if isinstance(im, Image.Image) else Image.open(im).convert("RGB"))
                text = IMAGE_TOKEN + text
            texts.append(text)
            answers.append(tok(" " + p["answer"], add_special_tokens=False)["input_ids"])
        kwargs = {}
        enc = processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        if "pixel_values" in enc:
            kwargs["pixel_values"] = enc["pixel_values"]
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs).logits
        lengths = enc["attention_mask"].sum(1).tolist()
        for b, ans in enumerate(answers):
            end = lengths[b]  # right padding: the answer ends at position end-1
            ids = enc["input_ids"][b, end - len(ans) : end].tolist()
            if ids != ans:
                raise RuntimeError(f"answer tokens are not the tail of the input: {ids} vs {ans}")
            pred = logits[b, end - len(ans) - 1 : end - 1].argmax(-1).tolist()
            scores.append(sum(int(p == a) for p, a in zip(pred, ans)) / len(ans))
    return scores


def summarise(probes: list[dict], scores: list[float]) -> dict:
    table: dict = defaultdict(lambda: defaultdict(list))
    for p, s in zip(probes, scores):
        table[p["kind"]][p["type"]].append(s)
        table[p["kind"]]["all"].append(s)
    return {k: {t: round(100 * sum(v) / len(v), 1) for t, v in sorted(d.items())} for k, d in sorted(table.items())}


def ike_probes(root: Path, n_demos: int, seed: int) -> list[dict]:
    """A check of in-context editing: eval edits as IKE prompts with train-split demonstrations.

    (The benchmark's IKE editor retrieves the most similar demonstrations; this check draws them at
    random, which is harder.)

    Returns the probes (answered with the EDITED knowledge for rel/gen/port probes, original for
    locality), each with its prefix. Demonstrations are taken from the train split at random (copy, update
    and retain kinds, as the reference IKE builds them)."""
    rng = random.Random(f"mmke_mini/ike_check/{seed}")
    probes = []
    img = lambda rel: str(root / "data_image" / rel)  # noqa: E731
    for kt, stem in G.STEMS.items():
        train = json.loads((root / "data_json" / f"{stem}_train.json").read_text())
        records = json.loads((root / "data_json" / f"{stem}_eval.json").read_text())
        for i, rec in enumerate(records):
            demos = ""
            for d in rng.sample(train, n_demos):
                fact = f"{d['src']} {d['alt']}"
                x, y = rng.choice(((d["src"], d["alt"]), (d["rephrase"], d["alt"]), (d["loc"], d["loc_ans"])))
                demos += f"New Fact: {fact}\nPrompt: {x} {y}\n\n"
            fact = f"{rec['src']} {rec['alt']}"
            # as editors/ike.py builds it: demonstrations, a copy of the edit, then the query
            prefix = demos + f"New Fact: {fact}\nPrompt: {fact}\n\n" + f"New Fact: {fact}\nPrompt: "
            items = []
            if kt == "visual_knowledge":
                items += [("t_rel", rec["rel"], rec["rel_ans"], ""), ("i_rel", rec["m_rel"], rec["m_rel_ans"], img(rec["image"])),
                          ("i_gen", rec["image_rephrase_question"], rec["m_rel_ans"], img(rec["image_rephrase"]))]
            else:
                for n in (1, 2):
                    items += [("t_rel", rec[f"rel_{n}"], rec[f"rel_{n}_ans"], ""),
                              ("i_rel", rec[f"m_rel_{n}"], rec[f"m_rel_{n}_ans"], img(rec["image"])),
                              ("i_gen", rec[f"m_rel_{n}"], rec[f"m_rel_{n}_ans"], img(rec["image_rephrase"]))]
            q = rec["port_new"][0]["Q&A"]
            items.append(("port", q["Question"], q["Answer"], img(rec["image"] if kt == "entity_level" else rec["one_hop_img"])))
            items += [("t_loc", rec["loc"], rec["loc_ans"], ""), ("i_loc", rec["m_loc_q"], rec["m_loc_a"], img(rec["m_loc"]))]
            for kind, question, answer, image in items:
                probes.append({"type": stem, "kind": "ike_" + kind, "case": f"{stem}/eval/{i}", "question": question,
                               "answer": answer, "image": image, "prefix": prefix})
    return probes


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def lr_at(step: int, cfg: Config) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def train(cfg: Config, out: Path, data_root: Path | None = None) -> dict:
    if cfg.init:  # checked before anything is written into --out
        if cfg.vision_steps:
            raise ValueError(f"--init {cfg.init} continues a trained model: pass --vision_steps 0 (no vision pretraining)")
        if Path(cfg.init).resolve() == out.resolve():
            raise ValueError(f"--init {cfg.init} is also --out: continue into another folder")
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.txt"
    log_file = log_path.open("w")
    t_start = time.time()

    def log(msg: str) -> None:
        line = f"[{time.time() - t_start:7.1f}s] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    log(f"config: {json.dumps(asdict(cfg))}")
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, python {sys.version.split()[0]}")
    world = W.build_world(cfg.world_seed)
    tokenizer = build_tokenizer(world, cfg.vocab_size)
    processor = build_processor(tokenizer, cfg)
    model = build_model(tokenizer, cfg)
    if cfg.init:
        from transformers import LlavaForConditionalGeneration

        start = LlavaForConditionalGeneration.from_pretrained(cfg.init, dtype=torch.float32)
        if start.config.text_config.vocab_size != model.config.text_config.vocab_size:
            raise ValueError(f"--init {cfg.init}: another vocabulary size than this world's tokenizer")
        model.load_state_dict(start.state_dict())
        log(f"continuing from {cfg.init}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}")
    n_img = (cfg.image_size // cfg.patch_size) ** 2
    enc = Encoder(tokenizer, n_img)
    check_encoding(processor, enc)
    pool = ImagePool(world, processor, cfg, log)
    sampler = Sampler(world, pool, enc, cfg)
    t_vision = time.time()
    vision_acc = pretrain_vision(model.model.vision_tower, pool, cfg, log) if cfg.vision_steps else {}
    vision_seconds = time.time() - t_vision

    if data_root is None:
        tmp = tempfile.TemporaryDirectory(prefix="mmke_mini_")
        data_root = G.generate(Path(tmp.name), seed=cfg.world_seed)
    held_out = original_probes(Path(data_root), splits=("eval",))
    rng_eval = random.Random(0)
    quick = rng_eval.sample(held_out, min(cfg.eval_sample, len(held_out)))

    groups: dict = defaultdict(list)
    for name, p in model.named_parameters():
        vision = "vision_tower" in name
        decay = not (p.ndim < 2 or "norm" in name or "embed" in name)
        groups[(vision, decay)].append(p)
    opt = torch.optim.AdamW(
        [{"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr_mult": cfg.vision_lr_mult if vision else 1.0}
         for (vision, decay), ps in sorted(groups.items())],
        lr=cfg.lr, betas=(0.9, 0.98),
    )
    perception_steps = int(cfg.perception_frac * cfg.steps)
    ema = {}
    t_train = time.time()
    for step in range(cfg.steps):
        model.train()
        is_ike = step >= perception_steps and cfg.ike_every > 0 and step % cfg.ike_every == cfg.ike_every - 1
        batch = sampler.ike_batch() if is_ike else sampler.plain_batch(perception_only=step < perception_steps)
        input_ids, mask, labels, pixels = collate(batch, enc, pool)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * g["lr_mult"]
        loss = loss_of(model, input_ids, mask, labels, pixels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        key = "ike" if is_ike else ("perc" if step < perception_steps else "all")
        ema[key] = loss.item() if key not in ema else 0.98 * ema[key] + 0.02 * loss.item()
        if step % 100 == 0 or step == cfg.steps - 1:
            rate = (step + 1) / (time.time() - t_train)
            losses = " ".join(f"{k}={v:.3f}" for k, v in sorted(ema.items()))
            log(f"step {step:6d}/{cfg.steps} lr {lr_at(step, cfg):.2e} loss(ema) {losses} | {rate:.2f} steps/s")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            summary = summarise(quick, teacher_forced(model, processor, quick))
            log("quick eval (held-out sample, original answers): " + json.dumps({k: v["all"] for k, v in summary.items()}))
    train_seconds = time.time() - t_train
    log(f"stage B done: {cfg.steps} steps in {train_seconds:.0f}s")

    # Save in fp16 (half the size), reload in fp32 as llava_hf does, and measure that artifact.
    model.to(torch.float16).save_pretrained(out)
    processor.save_pretrained(out)
    metrics = measure(out, Path(data_root), world, cfg, log)
    metrics.update(
        world_version=W.WORLD_VERSION, vision_pretrain_seconds=round(vision_seconds, 1),
        vision_attribute_accuracy=vision_acc, train_seconds=round(train_seconds, 1), total_seconds=round(time.time() - t_start, 1), parameters=n_params,
        config=asdict(cfg), torch=torch.__version__, threads=cfg.threads,
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    log(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB) in {time.time() - t_start:.0f}s total")
    log_file.close()
    return metrics


def check_encoding(processor, enc: Encoder) -> None:
    """Training inputs must be token-for-token what the processor builds at evaluation."""
    from PIL import Image

    im = Image.new("RGB", (64, 64), (128, 128, 128))
    for text, image in (("Where is Zorp from? Lumo", True), ("Where is Zorp from? Lumo", False),
                        ("New Fact: a b\nPrompt: c d\n\nNew Fact: e f\nPrompt: g h", True)):
        ids, _ = enc.encode(text, [], image, eos=False)
        ref = processor(text=(IMAGE_TOKEN if image else "") + text, images=[im] if image else None)["input_ids"][0]
        if list(ref) != ids:
            raise RuntimeError(f"training encoding differs from the processor's: {ids} vs {list(ref)}")


def measure(model_dir: Path, data_root: Path, world: W.World, cfg: Config, log) -> dict:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(cfg.threads)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    t0 = time.time()
    result = {}
    for name, splits in (("held_out_eval_split", ("eval",)), ("held_out_train_split", ("train",))):
        probes = original_probes(data_root, splits)
        result[name] = summarise(probes, teacher_forced(model, processor, probes))
        log(f"{name} (original knowledge, benchmark images): {json.dumps(result[name])}")
    probes = fresh_render_probes(world, seed=12345)
    result["fresh_renders"] = summarise(probes, teacher_forced(model, processor, probes))
    log(f"fresh renders (all subjects): {json.dumps(result['fresh_renders'])}")
    result["other_families"] = measure_families(model, processor, world, log)
    for k in (0, 5, 25):
        probes = ike_probes(data_root, k, seed=k)
        probes = random.Random(k).sample(probes, min(300, len(probes)))
        result[f"ike_check_{k}_demos"] = summarise(probes, teacher_forced(model, processor, probes, batch=16))
        log(f"IKE-format check, {k} demonstrations (edited answers; loc = original): {json.dumps(result[f'ike_check_{k}_demos'])}")
    log(f"measuring took {time.time() - t0:.0f}s")
    return result


def measure_families(model, processor, world: W.World, log) -> dict:
    """The knowledge bar on the other families' minis (releases.py): their probes with the ORIGINAL
    answers, per split; for MIKE, what its locality probes and edits build on (names, captions, scenes)."""
    from mmke_eval.mini import releases

    result = {}
    with tempfile.TemporaryDirectory(prefix="mmke_mini_families_") as tmp:
        for family in releases.FAMILIES:
            root = releases.generate_family(family, Path(tmp) / family, seed=world.seed)
            for split in ("eval", "train"):
                probes = releases.knowledge_probes(family, root, split)
                summary = summarise(probes, teacher_forced(model, processor, probes))
                result[f"{family}_{split}"] = summary
                log(f"{family} mini, {split} split (original knowledge): {json.dumps({k: v['all'] for k, v in summary.items()})}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the mmke_mini world model (deterministic).")
    parser.add_argument("--out", type=Path, default=WORLD_MODEL_DIR)
    parser.add_argument("--data", type=Path, default=None, help="a generated benchmark root (default: generate one)")
    for f in Config.__dataclass_fields__.values():
        parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    parser.add_argument("--measure_only", action="store_true",
                        help="no training: measure the model already in --out and print the numbers (JSON)")
    parser.add_argument("--write_metrics", action="store_true",
                        help="with --measure_only: also replace the measured numbers in --out/metrics.json (training facts kept)")
    args = parser.parse_args(argv)
    cfg = Config(**{k: getattr(args, k) for k in Config.__dataclass_fields__})
    if args.measure_only:
        world = W.build_world(cfg.world_seed)
        root = args.data or G.ensure_generated(seed=cfg.world_seed)
        measured = measure(args.out, root, world, cfg, log=lambda line: print(line, file=sys.stderr))
        print(json.dumps(measured, indent=1))
        if args.write_metrics:
            path = args.out / "metrics.json"
            metrics = json.loads(path.read_text()) if path.is_file() else {}
            metrics.update(measured)
            path.write_text(json.dumps(metrics, indent=1) + "\n")
        return
    train(cfg, args.out, args.data)


if __name__ == "__main__":
    main()
