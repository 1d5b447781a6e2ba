"""Edit-image augmentations (MIKE's study: vertical/horizontal flip, random noise, colour jitter).

Applied to the edit image(s) only, before the edit (``--model_args edit_augment=KIND``); probes keep
their images. Deterministic: the random ones draw from a generator seeded with ``augment_seed``
and the case id, so a rerun augments every case the same way.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

AUGMENTATIONS = ("none", "vflip", "hflip", "noise", "jitter")
NOISE_STD = 25.0  # on 0-255 pixel values
JITTER_RANGE = (0.6, 1.4)  # brightness, contrast and saturation factors


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{case_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def augment(image: Image.Image, kind: str, seed: int, case_id: str) -> Image.Image:
    if kind not in AUGMENTATIONS:
        raise ValueError(f"edit_augment must be one of {AUGMENTATIONS}, not {kind!r}")
    if kind == "none" or image is None:
        return image
    if kind == "vflip":
        return ImageOps.flip(image)
    if kind == "hflip":
        return ImageOps.mirror(image)
    rng = case_rng(seed, case_id)
    if kind == "noise":
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        noisy = pixels + rng.normal(0.0, NOISE_STD, size=pixels.shape)
        return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8), "RGB")
    low, high = JITTER_RANGE
    out = image.convert("RGB")
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhancer(out).enhance(float(rng.uniform(low, high)))
    return out
