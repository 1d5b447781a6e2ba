"""Image loading with errors that name the case and the file."""

from __future__ import annotations

from PIL import Image

from mmke_eval.data.schema import DataError


def load_image(path: str, case_id: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"case {case_id}: image not found: {path}") from None
    except OSError as err:
        raise DataError(f"case {case_id}: cannot read image {path}: {err}") from None


def load_optional_image(path: str, case_id: str):
    return load_image(path, case_id) if path else None
