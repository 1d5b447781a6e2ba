"""Edit-image augmentations: what each does, deterministic per seed and case."""

import numpy as np
import pytest
from PIL import Image, ImageOps

from mmke_eval.data.augment import AUGMENTATIONS, augment


@pytest.fixture
def image():
    pixels = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(10, 12, 3)
    return Image.fromarray(pixels, "RGB")


def test_flips(image):
    assert augment(image, "vflip", 0, "c").tobytes() == ImageOps.flip(image).tobytes()
    assert augment(image, "hflip", 0, "c").tobytes() == ImageOps.mirror(image).tobytes()
    assert augment(image, "none", 0, "c") is image


@pytest.mark.parametrize("kind", ["noise", "jitter"])
def test_random_ones_differ_from_the_original_and_repeat_per_seed_and_case(image, kind):
    once, twice = augment(image, kind, 7, "case/1"), augment(image, kind, 7, "case/1")
    assert once.tobytes() == twice.tobytes() and once.tobytes() != image.tobytes()
    assert augment(image, kind, 8, "case/1").tobytes() != once.tobytes()
    assert augment(image, kind, 7, "case/2").tobytes() != once.tobytes()
    assert once.size == image.size


def test_unknown_augmentation():
    with pytest.raises(ValueError, match="edit_augment must be one of"):
        augment(Image.new("RGB", (2, 2)), "blur", 0, "c")
    assert AUGMENTATIONS == ("none", "vflip", "hflip", "noise", "jitter")
