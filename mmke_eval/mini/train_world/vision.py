"""Stage A: teach the vision tower to see, as CLIP pretraining would (linear heads on attributes,
thrown away after)."""

from __future__ import annotations

import json
import math
import time

import torch

from mmke_eval.mini import world as W
from mmke_eval.mini.train_world.config import Config
from mmke_eval.mini.train_world.examples import ImagePool


ATTRIBUTE_HEADS = {
    "family": ("shape", "arrows", "item"), "shape": W.SHAPES, "colour": W.COLOUR_NAMES, "pattern": W.PATTERNS,
    "count": W.COUNTS, "direction": W.DIRECTIONS, "kind": W.ITEM_KINDS, "item_pattern": W.ITEM_PATTERNS,
    "plate": W.PLATES,  # the lifelong world's; base-world heads and labels are unchanged before it
}
_LOOK_FIELDS = {"shape": ("shape", "colour", "pattern"), "arrows": ("count", "colour", "direction"), "item": ("kind", "colour", "item_pattern")}


def attribute_labels(look: tuple, plates: bool = False) -> list[int]:
    values = {"family": look[0], **dict(zip(_LOOK_FIELDS[look[0]], look[1:4]))}
    if plates and look[0] == "shape":
        values["plate"] = look[4] if len(look) == 5 else "none"
    return [ATTRIBUTE_HEADS[h].index(values[h]) if h in values else -100 for h in ATTRIBUTE_HEADS]


def pretrain_vision(vision_tower, pool: "ImagePool", cfg: Config, log) -> dict:
    """Attribute classification from the mean of the patch features (the features LLaVA projects)."""
    g = torch.Generator().manual_seed(cfg.seed)
    plates = cfg.lifelong()
    names = list(ATTRIBUTE_HEADS) if plates else [h for h in ATTRIBUTE_HEADS if h != "plate"]
    labels = torch.tensor([attribute_labels(look, plates)[: len(names)] for look in pool.looks])
    sizes = [len(ATTRIBUTE_HEADS[h]) for h in names]
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
        for j, (name, lg) in enumerate(zip(names, logits)):
            m = y[:, j] >= 0
            if m.any():
                loss = loss + torch.nn.functional.cross_entropy(lg[m], y[m, j])
                acc[name] = round(100 * (lg[m].argmax(-1) == y[m, j]).float().mean().item(), 1)
        return loss, acc

    subject_looks = sorted({s.look for s in pool.subjects}, key=str)
    pairs = min(cfg.vision_batch // 2, len(subject_looks))

    def contrast():
        """InfoNCE of two renders of each of ``pairs`` subjects (both directions), and its top-1 accuracy."""
        chosen = torch.randperm(len(subject_looks), generator=g)[:pairs]
        first, second = [], []
        for i in chosen.tolist():
            renders = pool.index[subject_looks[i]]
            a, b = torch.randperm(len(renders), generator=g)[:2].tolist()
            first.append(renders[a])
            second.append(renders[b])
        feats = vision_tower(pixel_values=pool.pixels[first + second]).last_hidden_state[:, 1:].mean(1)
        feats = torch.nn.functional.normalize(feats, dim=-1)
        logits = feats[:pairs] @ feats[pairs:].T / 0.1
        target = torch.arange(pairs)
        loss = (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2
        return loss, round(100 * (logits.argmax(-1) == target).float().mean().item(), 1)

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
        if cfg.vision_contrast:
            contrast_loss, _ = contrast()
            loss = loss + cfg.vision_contrast * contrast_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == cfg.vision_steps - 1:
            vision_tower.eval()
            with torch.no_grad():
                _, acc = run(test)
                if cfg.vision_contrast:
                    acc["subject_pairs"] = contrast()[1]  # top-1 of a fresh batch of pairs (train renders)
            log(f"vision step {step:5d}/{cfg.vision_steps} loss {loss.item():.3f} held-out attribute accuracy {json.dumps(acc)} "
                f"| {(step + 1) / (time.time() - t0):.1f} steps/s")
    return acc
