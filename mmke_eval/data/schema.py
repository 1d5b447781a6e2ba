"""The edit case: one piece of knowledge to edit, and the probes that measure the edit.

Every benchmark loader (MMKE-Bench, the generated mmke_mini, later MIKE/VLKEB) produces these;
the task hooks flatten them into one lmms-eval document per probe (``ProbeDoc``), and the
editing wrapper groups those documents back by ``case_id``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Probe kinds, in the order MMKE-Bench reports them.
T_REL = "t_rel"  # text-only question about the edited knowledge
I_REL = "i_rel"  # question about the edit image
I_GEN = "i_gen"  # the same kind of question about the rephrase image (another view of the subject)
T_LOC = "t_loc"  # unrelated text question: the answer must not change
I_LOC = "i_loc"  # unrelated image question: the answer must not change
PORT = "port"  # one-hop consequence of the edited knowledge
PROBE_KINDS = (T_REL, I_REL, I_GEN, T_LOC, I_LOC, PORT)
LOCALITY_KINDS = (T_LOC, I_LOC)

# Key marking a scored JSON response of the `edited` model (anything else is a plain generation).
RESPONSE_MARKER = "mmke_probe"

# MMKE-Bench's knowledge types (the ``knowledge_type`` field) and the file stems of their splits.
KNOWLEDGE_TYPES = {"entity_level": "entity", "visual_knowledge": "visual", "user_specific": "user"}


@dataclass(frozen=True)
class Probe:
    kind: str  # one of PROBE_KINDS
    probe_id: str  # unique within the case, e.g. "t_rel_1"
    question: str
    answer: str
    image: str = ""  # absolute path, "" for text-only probes
    source_field: str = ""  # the JSON field the question came from, for error messages


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


@dataclass(frozen=True)
class ProbeDoc:
    """One lmms-eval document: a probe plus the edit it belongs to (flat, Arrow-friendly)."""

    case_id: str
    knowledge_type: str
    probe: str
    probe_id: str
    question: str
    answer: str
    image: str
    edit_prompt: str
    edit_target: str
    edit_original: str
    edit_image: str
    rephrase_prompt: str
    rephrase_image: str
    train_file: str
    # Sequential runs with --cases N and sequential_gap G: one of the G cases edited after the N
    # scored ones (VLKEB), never scored itself.
    edit_only: bool = False

    @staticmethod
    def rows(case: EditCase, edit_only: bool = False) -> list[dict]:
        return [
            asdict(
                ProbeDoc(
                    case_id=case.case_id,
                    knowledge_type=case.knowledge_type,
                    probe=p.kind,
                    probe_id=p.probe_id,
                    question=p.question,
                    answer=p.answer,
                    image=p.image,
                    edit_prompt=case.prompt,
                    edit_target=case.target,
                    edit_original=case.original,
                    edit_image=case.image,
                    rephrase_prompt=case.rephrase_prompt,
                    rephrase_image=case.rephrase_image,
                    train_file=case.train_file,
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
