"""Stage B (and stage A before it): the training loop, then the saved model measured (``measure.py``)."""

from __future__ import annotations

import json
import math
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import torch

from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W
from mmke_eval.mini.train_world.build import build_model, build_processor, build_tokenizer
from mmke_eval.mini.train_world.config import Config
from mmke_eval.mini.train_world.examples import Encoder, ImagePool, check_encoding, collate
from mmke_eval.mini.train_world.measure import measure, original_probes, summarise, token_accuracies
from mmke_eval.mini.train_world.sampler import Sampler
from mmke_eval.mini.train_world.vision import pretrain_vision


def loss_of(model, input_ids, mask, labels, pixels):
    out = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixels)
    logits = out.logits[:, :-1].float()
    target = labels[:, 1:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100)


def lr_at(step: int, cfg: Config) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def save_checkpoint(model, processor, folder: Path, step: int) -> None:
    """The model as training left it, in fp16 beside the run (a session may end before the run does)."""
    import copy

    copy.deepcopy(model).to(torch.float16).save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "step.txt").write_text(f"{step}\n")


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
    world = W.build_world(cfg.world_seed, lifelong=cfg.lifelong())
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
        data_root = G.generate(Path(tmp.name), seed=cfg.world_seed, lifelong=world.lifelong)
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
            summary = summarise(quick, token_accuracies(model, processor, quick))
            log("quick eval (held-out sample, original answers): " + json.dumps({k: v["all"] for k, v in summary.items()}))
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(model, processor, out / "checkpoint", step + 1)
            log(f"saved {out / 'checkpoint'} (step {step + 1}; continue it with --init)")
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
