"""Image loading with errors that name the case and the file."""

from __future__ import annotations

from contextlib import contextmanager

from PIL import Image, ImageFile

from mmke_eval.data.schema import DataError


def load_image(path: str, case_id: str) -> Image.Image:
    """The image as RGB. A truncated file is an error: lmms-eval turns on PIL's
    LOAD_TRUNCATED_IMAGES process-wide, which would score a half-grey picture as if it were fine."""
    try:
        with _truncated_images_refused(), Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"case {case_id}: image not found: {path}") from None
    except Image.DecompressionBombError as err:  # not an OSError: PIL's guard against images that fill the memory
        raise DataError(f"case {case_id}: image {path} refused as a possible decompression bomb ({err}); replace it with "
                        "a smaller image, or leave the case out of the data") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises all three for broken files
        raise DataError(f"case {case_id}: cannot read image {path}: {err}") from None


@contextmanager
def _truncated_images_refused():
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def load_optional_image(path: str, case_id: str):
    return load_image(path, case_id) if path else None
