"""Reading benchmark JSON: a list of records, each read field by field with errors that name the
file, the case and the field (every family's loader uses these)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from mmke_eval.data.schema import DataError


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

    def __init__(self, record: Any, json_path: Path, index: int, case_id: str, image_dirs: Sequence[Path]):
        self.json_path = json_path
        self.index = index
        self.case_id = case_id
        self.image_dirs = tuple(Path(d) for d in image_dirs)  # where image paths are looked up, in order
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
        for candidate in candidates:
            if candidate.is_file():
                # abspath, not resolve(): Hub snapshots are symlinks to extension-less blobs.
                return os.path.abspath(candidate)
        looked = " or ".join(str(c) for c in candidates)
        raise self.error(field, f"image {relative!r} not found (looked for {looked})")
