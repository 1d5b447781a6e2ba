"""Image-only processors where torchvision is missing (the CPU torch wheel has no matching one).

transformers 5 makes Qwen2-VL's, Qwen2.5-VL's and LLaVA-OneVision's processors insist on a video
processor, and every video processor needs torchvision: without it, ``AutoProcessor`` cannot load
these checkpoints at all, although their image path needs no torchvision (the image processors
fall back to PIL). ``allow_image_only_processors`` lets them load with no video processor; only
when transformers itself says torchvision is unavailable, so nothing that loaded before changes.
Images work exactly as with torchvision (tests/test_adapter_qwen2_vl.py compares); a video input
fails. The `edited` model applies it while it loads its backend (``image_only_processors``); plain
lmms-eval runs are left alone.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

logger = logging.getLogger("mmke_eval")
_INSTALLED = False


def allow_image_only_processors() -> bool:
    """Install the fallback if torchvision is unavailable; True when it is installed."""
    global _INSTALLED
    from transformers.utils import is_torchvision_available

    if _INSTALLED or is_torchvision_available():
        return _INSTALLED
    from transformers import ProcessorMixin
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    strict = ProcessorMixin.check_argument_for_proper_class

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return strict(self, argument_name, argument)

    def no_video_processor(cls, pretrained_model_name_or_path, *args, **kwargs):
        logger.info("torchvision is not installed: %s loaded without a video processor (images only)", pretrained_model_name_or_path)
        return None

    ProcessorMixin.check_argument_for_proper_class = check_argument_for_proper_class
    AutoVideoProcessor.from_pretrained = classmethod(no_video_processor)
    _INSTALLED = True
    return True


@contextmanager
def image_only_processors() -> Iterator[bool]:
    """The fallback while the block runs (a backend loading its processor), undone after; yields
    whether it was needed. Outside such a block transformers is left as it is."""
    global _INSTALLED
    from transformers.utils import is_torchvision_available

    if _INSTALLED or is_torchvision_available():
        yield False
        return
    from transformers import ProcessorMixin
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    saved = ProcessorMixin.__dict__["check_argument_for_proper_class"], AutoVideoProcessor.__dict__["from_pretrained"]
    allow_image_only_processors()
    try:
        yield True
    finally:
        ProcessorMixin.check_argument_for_proper_class, AutoVideoProcessor.from_pretrained = saved
        _INSTALLED = False
