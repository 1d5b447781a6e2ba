"""The world-model trainer's settings: every field is a command-line option (``__main__.py``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    seed: int = 0
    world_seed: int = 0
    world: str = "base"  # "base", or "lifelong": the lifelong-scale world (world.py: build_world)
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
    # weight of a contrastive loss in stage A (two renders of one subject against the batch's other
    # subjects, on the normalised mean patch feature): features that tell each subject apart, not
    # only its attributes (the lifelong world's 1100 entities share attributes); 0 = off
    vision_contrast: float = 0.0
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
    more_share: float = 0.34  # of entity picture questions: the other families' (VLKEB's hops, MIKE's prompts)
    entity_share: float = 0.45  # of picture questions: about an entity (the rest: signs 5/11, items 6/11)
    # a plain batch: perception of random drawings, questions about a subject's picture, text facts,
    # and (the rest) the free-form descriptions
    perception_share: float = 0.12
    picture_share: float = 0.5
    text_share: float = 0.32
    subject_perception: bool = True  # a subject's picture questions include perception ones
    init: str = ""  # a world-model folder to continue training from (needs vision_steps 0: no stage A)
    # data
    renders_per_subject: int = 24
    generic_renders: int = 16000
    eval_every: int = 500
    eval_sample: int = 300
    save_every: int = 0  # save the model to --out/checkpoint every this many steps (continue it with --init)

    def lifelong(self) -> bool:
        if self.world not in ("base", "lifelong"):
            raise ValueError(f"--world {self.world!r}: choose base or lifelong")
        return self.world == "lifelong"
