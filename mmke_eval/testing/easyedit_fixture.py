"""What the test fixtures of the EasyEdit-format families share (mmke_tasks/{mmedit,vlkeb,mike}/fixture.py):
small made-up pictures (coloured shapes drawn with PIL, so nothing is downloaded) and EasyEdit's
base record fields.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 200, 30), (150, 60, 200), (30, 190, 200)]


def draw(path: Path, serial: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (48, 40), (245, 245, 240))
    colour = COLOURS[serial % len(COLOURS)]
    box = (6 + serial % 5, 6, 38, 34 - serial % 4)
    (ImageDraw.Draw(image).ellipse if serial % 2 else ImageDraw.Draw(image).rectangle)(box, fill=colour)
    image.save(path, format=fmt)


def base_record(serial: int, image: str, rephrase_image: str, loc_image: str, vqa: bool = True) -> dict:
    things = ["tennis balls", "red buses", "cats", "kites", "umbrellas", "boats"]
    thing = things[serial % len(things)]
    if vqa:
        src, alt, rephrase = f"How many {thing} are in the picture?", str(2 + serial % 4), f"What is the number of {thing} shown?"
    else:
        src, alt, rephrase = "a photo of", f"A few {thing} on a sunny street number {serial}.", "provide a brief overview of the image content,"
    return {
        "src": src, "alt": alt, "pred": "1" if vqa else f"some {thing}", "rephrase": rephrase,
        "image": image, "image_rephrase": rephrase_image,
        "loc": f"nq question: who wrote the novel number {serial}", "loc_ans": f"Author {serial}",
        "m_loc": loc_image, "m_loc_q": "What sport can you use this for?", "m_loc_a": ["riding", "surfing", "skiing"][serial % 3],
    }
