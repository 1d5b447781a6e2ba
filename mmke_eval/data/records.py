"""Reading benchmark JSON: a list of records, each read field by field with errors that name the
file, the case and the field (every family's loader uses these).

An image path in the data must lead to a file inside the data folder, symbolic links resolved (a
Hub download's files may lead into the dataset's own cache folder, where the links point). A path
that leaves it (absolute, ``../``, or a link) is an error naming the case and the field, unless the
user sets ``MMKE_IMAGES_OUTSIDE_DATA=1`` (docs/bad-inputs.md): data from elsewhere must not make a
run read, and write into its samples, any file on the machine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from mmke_eval.data.schema import DataError
from mmke_eval.options import FALSE_WORDS, TRUE_WORDS

IMAGES_OUTSIDE_ENV = "MMKE_IMAGES_OUTSIDE_DATA"


def images_outside_allowed() -> bool:
    """Whether the user opted in to image paths that leave the data folder."""
    value = os.environ.get(IMAGES_OUTSIDE_ENV, "").strip().lower()
    if value in TRUE_WORDS:
        return True
    if not value or value in FALSE_WORDS:
        return False
    raise DataError(f"{IMAGES_OUTSIDE_ENV}={value!r}: expected 1/true/yes (allow image paths outside the data folder) "
                    "or 0/false/no")


def data_folders(root: Path) -> tuple[str, ...]:
    """Where an image of the data folder ``root`` may lead, symbolic links resolved: the folder, and
    for a Hugging Face Hub download (``datasets--OWNER--NAME/snapshots/REV`` or our
    ``.../extracted/REV``) the dataset's cache folder, whose ``blobs/`` the snapshot's files link to."""
    real = Path(os.path.realpath(root))
    folders = [str(real)]
    if real.parent.name in ("snapshots", "extracted") and real.parent.parent.name.startswith("datasets--"):
        folders.append(str(real.parent.parent))
    return tuple(folders)


def inside(path: Path | str, folders: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == folder or real.startswith(folder.rstrip(os.sep) + os.sep) for folder in folders)


def read_records(json_path: Path) -> list:
    try:
        text = json_path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as err:
        raise DataError(f"{json_path}: not UTF-8 text ({err})") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{json_path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(records, list):
        raise DataError(f"{json_path}: expected a JSON list of records, got {type(records).__name__}")
    return records


class RecordReader:
    """Typed access to one JSON record; every failure names the file, the case and the field."""

    def __init__(self, record: Any, json_path: Path, index: int, case_id: str, image_dirs: Sequence[Path], *, data_root: Path):
        self.json_path = json_path
        self.index = index
        self.case_id = case_id
        self.image_dirs = tuple(Path(d) for d in image_dirs)  # where image paths are looked up, in order
        self.data_root = Path(data_root)  # image paths must stay inside it (module docstring)
        if not isinstance(record, dict):
            raise self.error("(record)", f"expected a JSON object, got {type(record).__name__}")
        self.record = record

    def error(self, field: str, problem: str) -> DataError:
        return DataError(f"{self.json_path}: case {self.index} ({self.case_id}): field {field!r}: {problem}")

    def has(self, field: str) -> bool:
        return field in self.record

    def value(self, field: str) -> Any:
        if field not in self.record:
            raise self.error(field, "missing required field")
        return self.record[field]

    def text(self, field: str) -> str:
        return self.expect_text(field, self.value(field))

    def expect_text(self, field: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {type(value).__name__} {value!r:.60}")
        return value

    def text_either(self, *fields: str) -> str:
        """The first present field of several accepted spellings."""
        for field in fields:
            if field in self.record:
                return self.text(field)
        raise self.error(fields[0], "missing required field (also accepted: " + ", ".join(fields[1:]) + ")")

    def image(self, field: str) -> str:
        """Absolute path of the image a field names, looked up in each of ``image_dirs``."""
        return self.image_path(field, self.text(field))

    def image_path(self, field: str, relative: str) -> str:
        if not relative:
            raise self.error(field, "empty image path")
        candidates = [folder / relative for folder in self.image_dirs]
        folders = data_folders(self.data_root)
        outside = [c for c in candidates if not inside(c, folders)]
        for candidate in candidates:
            if candidate not in outside and candidate.is_file():
                # abspath, not resolve(): Hub snapshots are symlinks to extension-less blobs.
                return os.path.abspath(candidate)
        if outside and not images_outside_allowed():  # (whether such a file exists is not even looked at)
            raise self.error(field, f"image {relative!r} is outside the data folder {self.data_root} (it leads to "
                                    f"{os.path.realpath(outside[0])}); image paths must stay inside it. If you trust this "
                                    f"data, set {IMAGES_OUTSIDE_ENV}=1 to allow it")
        for candidate in outside:
            if candidate.is_file():
                return os.path.abspath(candidate)
        looked = " or ".join(str(c) for c in candidates)
        raise self.error(field, f"image {relative!r} not found (looked for {looked})")
