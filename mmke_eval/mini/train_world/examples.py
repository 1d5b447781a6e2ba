"""Training examples: text encoded as the benchmark's raw format ([BOS] [image tokens] text, labels on
answer spans), a pool of renders per subject and of random drawings preprocessed once, and batches."""

from __future__ import annotations

import random
import time
from collections import defaultdict

import torch

from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W
from mmke_eval.mini.train_world.build import IMAGE_TOKEN
from mmke_eval.mini.train_world.config import Config


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
            look = G.random_look(rng, world.lifelong)
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
