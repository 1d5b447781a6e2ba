"""The edit case: one piece of knowledge to edit, and the probes that measure the edit.

Every benchmark family's loader (MMKE-Bench, VLKEB, MMEdit, ...; mmke_tasks/<family>/) produces these;
the task hooks flatten them into one lmms-eval document per probe (``ProbeDoc``), and the
editing wrapper groups those documents back by ``case_id``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

# Key marking a scored JSON response of the `edited` model (anything else is a plain generation).
RESPONSE_MARKER = "mmke_probe"


@dataclass(frozen=True)
class Probe:
    kind: str  # one of its benchmark family's probe kinds (mmke_tasks/<family>/family.yaml)
    probe_id: str  # unique within the case, e.g. "t_rel_1"
    question: str
    answer: str
    image: str = ""  # absolute path, "" for text-only probes
    source_field: str = ""  # the JSON field the question came from, for error messages
    entity: str = ""  # MIKE: the entity name its entity-oriented accuracy looks for ("" for none)


@dataclass(frozen=True)
class EditCase:
    case_id: str  # "<benchmark>/<knowledge_type>/<split>/<index>"
    knowledge_type: str
    prompt: str  # ``src``: the edit prompt
    target: str  # ``alt``: the edited (new) knowledge
    original: str  # ``pred``: the original knowledge / prediction
    image: str  # absolute path of the edit image
    rephrase_prompt: str = ""
    rephrase_image: str = ""
    probes: tuple[Probe, ...] = ()
    train_file: str = ""  # absolute path of the train split of the same type (IKE demonstrations)
    extra_images: tuple[str, ...] = ()  # more images of the edit subject, no probe asks on them (multi-step editing)
    # (prompt, target) or (prompt, target, original), edited after this one before probing (VLKEB edit twice, CCKEB's textual edit)
    followup_edits: tuple[tuple[str, ...], ...] = ()
    family: str = ""  # the benchmark family declaring its probe kinds (mmke_tasks/<family>/family.yaml); set by its loader


@dataclass(frozen=True)
class ProbeDoc:
    """One lmms-eval document: a probe plus the edit it belongs to (flat, Arrow-friendly)."""

    case_id: str
    family: str
    knowledge_type: str
    probe: str
    probe_id: str
    question: str
    answer: str
    image: str
    entity: str
    edit_prompt: str
    edit_target: str
    edit_original: str
    edit_image: str
    rephrase_prompt: str
    rephrase_image: str
    train_file: str
    edit_extra_images: str = ""  # EditCase.extra_images, one path per line (Arrow-friendly)
    followup_edits: str = ""  # EditCase.followup_edits as a JSON list of [prompt, target(, original)] ("" for none)
    # Sequential runs with --cases N and sequential_gap G: one of the G cases edited after the N
    # scored ones (VLKEB), never scored itself.
    edit_only: bool = False
    # Runs in several processes: a filler document that evens out the processes' shares of whole
    # cases (mmke_eval/parallel.py); answered without editing and left out of every score.
    padding: bool = False

    @staticmethod
    def rows(case: EditCase, edit_only: bool = False) -> list[dict]:
        return [
            asdict(
                ProbeDoc(
                    case_id=case.case_id,
                    family=case.family,
                    knowledge_type=case.knowledge_type,
                    probe=p.kind,
                    probe_id=p.probe_id,
                    question=p.question,
                    answer=p.answer,
                    image=p.image,
                    entity=p.entity,
                    edit_prompt=case.prompt,
                    edit_target=case.target,
                    edit_original=case.original,
                    edit_image=case.image,
                    rephrase_prompt=case.rephrase_prompt,
                    rephrase_image=case.rephrase_image,
                    train_file=case.train_file,
                    edit_extra_images="\n".join(case.extra_images),
                    followup_edits=json.dumps([list(edit) for edit in case.followup_edits]) if case.followup_edits else "",
                    edit_only=edit_only,
                )
            )
            for p in case.probes
        ]


@dataclass
class SkipReport:
    """Cases a loader left out on purpose (the protocol says so), with the reason for each."""

    total: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> case ids
    first_n: int | None = None  # only the first N kept cases were used (mmke-eval --cases N)
    edit_only: int = 0  # cases after the first N loaded to be edited, not scored (sequential_gap)
    files: list[str] = field(default_factory=list)  # the data files the loader read (absolute paths)

    def skip(self, reason: str, case_id: str) -> None:
        self.skipped.setdefault(reason, []).append(case_id)

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        if not self.skipped:
            text = f"all {self.total} cases kept"
        else:
            parts = [f"{len(ids)} {reason}" for reason, ids in self.skipped.items()]
            text = f"{self.n_skipped} of {self.total} cases skipped: " + "; ".join(parts)
        if self.first_n is not None and self.first_n < self.total - self.n_skipped:
            text += f"; the first {self.first_n} used (--cases)"
        if self.edit_only:
            text += f", {self.edit_only} more edited after them without scoring (sequential_gap)"
        return text


class DataError(ValueError):
    """Bad benchmark data. The message names the file, the case and the field."""

    is_root_cause = True  # the CLI shows this message (which says what to do), not the error behind it
