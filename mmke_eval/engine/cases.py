"""What the engine works on: a probe request (one document of an edit case, with its query) and
the typed response it gives back (written as JSON into lmms-eval's answer, read by
``metrics.probe_items``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from mmke_eval import families, parallel
from mmke_eval.adapters.base import Query
from mmke_eval.data.schema import RESPONSE_MARKER, ProbeDoc

_PROBE_FIELDS = frozenset(ProbeDoc.__dataclass_fields__) - {parallel.PADDING_FIELD}  # documents made before it existed too

EDIT_ONLY_REASON = "edit-only: edited after the scored cases (--cases N with sequential_gap G), as VLKEB does"
PADDING_REASON = "padding: a filler document of a multi-process run"


def is_probe_doc(doc: Any) -> bool:
    return isinstance(doc, dict) and _PROBE_FIELDS <= doc.keys()


@dataclass
class ProbeRequest:
    index: int  # position in the harness's request list
    doc: dict
    query: Query
    gen_kwargs: dict

    @property
    def kind(self) -> families.ProbeKind:
        """The declaration of the probe's kind, from its benchmark family."""
        return families.kind_of(self.doc)


def is_edit_only(probes: list[ProbeRequest]) -> bool:
    return bool(probes[0].doc.get("edit_only"))


def without_padding_field(doc: dict) -> dict:
    """A document as before the field existed: journal keys stay valid, and equal in any number of processes."""
    return {key: value for key, value in doc.items() if key != parallel.PADDING_FIELD}


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()  # a field the response does not carry (unlike None, written as null)


@dataclass
class ProbeResponse:
    """The answer to one probe. Fields left ABSENT are not written; the JSON keeps this order."""

    probe: str = ""
    editor: str = ""
    generated: str = ""
    edit: dict = field(default_factory=dict)  # the editor's report of the edit (handle.stats)
    score: Any = ABSENT  # float; None when unscored
    unscored: Any = ABSENT  # why the probe has no score
    pre_generated: Any = ABSENT  # locality: the unedited model's generation
    entity_match: Any = ABSENT  # MIKE: every token of the entity name right
    entity_acc: Any = ABSENT  # MIKE's A
    average: Any = ABSENT  # "token": the column is hits / total over the task
    counts: Any = ABSENT  # [hits, total] for average=token
    port_image: Any = ABSENT  # portability: the image the question was asked on
    live_edits: Any = ABSENT  # lifelong: how many edits were live in the model this score came from
    lifelong: Any = ABSENT  # lifelong: {"position", "immediate", "retention": {checkpoint: scores}} (engine/schedules.py)

    @classmethod
    def from_json(cls, text: str) -> "ProbeResponse | None":
        """The response in an answer string, or None for a plain model's generation."""
        if not text.startswith("{"):
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not data.get(RESPONSE_MARKER):
            return None
        known = {spec.name for spec in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def given(self, name: str) -> bool:
        """Whether the response carries the field (None included)."""
        return getattr(self, name) is not ABSENT

    def to_json(self) -> str:
        record = {RESPONSE_MARKER: 1}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not ABSENT:
                record[spec.name] = value
        return json.dumps(record, default=str)
