"""What the EasyEdit-format benchmarks (MMEdit, VLKEB, MMKE-Bench) share: the base record fields
``src``, ``alt``, ``pred``, ``rephrase``, ``image``, ``image_rephrase``, ``loc``/``loc_ans``,
``m_loc``/``m_loc_q``/``m_loc_a`` (shared docs 1.1-1.3), and IKE's demonstration pool built from them.
"""

from __future__ import annotations

from pathlib import Path

from mmke_eval.data.records import RecordReader, read_records
from mmke_eval.data.schema import DataError, EditCase, Probe


def demonstration_pool(train_file: str) -> list[tuple[str, str, str, str]]:
    """(src, alt, question, answer) x 3 per train record: the edit itself, its rephrase, and the
    locality neighbour, as the reference IKE pool (records without src or alt are left out)."""
    path = Path(train_file)
    if not train_file or not path.is_file():
        raise FileNotFoundError(f"IKE: train split file {train_file!r} not found (EditRequest.train_file)")
    try:
        records = read_records(path)
    except DataError as err:
        raise ValueError(f"IKE: {err}") from None
    pool = []
    for record in records:
        if not isinstance(record, dict):
            continue
        src, alt = record.get("src"), record.get("alt")
        if not src or not alt:
            continue
        for question, answer in ((src, alt), (record.get("rephrase"), alt), (record.get("loc"), record.get("loc_ans"))):
            if question and answer:
                pool.append((src, alt, question, answer))
    if not pool:
        raise ValueError(f"IKE: train split file {train_file!r} holds no usable record (needs src, alt)")
    return pool


# -- The base fields as probes (MMEdit, VLKEB) --------------------------------------------------
# Probe kinds (mmke_tasks/{mmedit,vlkeb}/family.yaml), as EasyEdit/VLKEB report them.
REL = "rel"  # Reliability: the edit prompt on the edit image (rewrite_acc)
T_GEN = "t_gen"  # T-Generality: the rephrased prompt on the edit image (rephrase_acc)
I_GEN = "i_gen"  # I-Generality: the edit prompt on the rephrase image (image_rephrase_acc)
T_LOC = "t_loc"  # T-Locality: an unrelated (NQ) question, text only
I_LOC = "i_loc"  # I-Locality: an unrelated (OK-VQA) question on its image

SKIP_EMPTY_ALT = "empty alt"


def base_probes(reader: RecordReader, image: str, rephrase_image: str) -> list[Probe]:
    """Reliability, both generalities and both localities from the fields every EasyEdit-format record has."""
    src, alt = reader.text("src"), reader.text("alt")
    return [
        Probe(REL, REL, src, alt, image, "src"),
        Probe(T_GEN, T_GEN, reader.text("rephrase"), alt, image, "rephrase"),
        Probe(I_GEN, I_GEN, src, alt, rephrase_image, "image_rephrase"),
        Probe(T_LOC, T_LOC, reader.text("loc"), reader.text("loc_ans"), "", "loc"),
        Probe(I_LOC, I_LOC, reader.text("m_loc_q"), reader.text("m_loc_a"), reader.image("m_loc"), "m_loc_q"),
    ]


def base_case(reader: RecordReader, family: str, subset: str, probes: list[Probe], image: str, rephrase_image: str,
              train_file: str, original: str | None = None) -> EditCase:
    """The edit case of an EasyEdit-format record (``original``: default ``pred`` if the record has it)."""
    return EditCase(
        case_id=reader.case_id,
        knowledge_type=subset,
        prompt=reader.text("src"),
        target=reader.text("alt"),
        original=original if original is not None else (reader.text("pred") if reader.has("pred") else ""),
        image=image,
        rephrase_prompt=reader.text("rephrase"),
        rephrase_image=rephrase_image,
        probes=tuple(probes),
        train_file=train_file,
        family=family,
    )


def split_path(root: Path, pattern: str, split: str, layout: str) -> Path:
    path = root / pattern.format(split=split)
    if not path.is_file():
        raise DataError(f"no {split} file under {root}: looked for {path}. Expected {layout}.")
    return path


def hop_port(reader: RecordReader, hop: int) -> tuple[str, str, str] | None:
    """(field path, question, answer) of the first ``port_new`` entry of type ``{hop}-hop``, or None.
    Entries may come in any order; an entry's question and answer are ``Q&A.Question/Answer``."""
    if not reader.has("port_new"):
        return None
    found = port_entry(reader, f"{hop}-hop")
    if found is not None:
        field, entry = found
        qa = entry.get("Q&A")
        if not isinstance(qa, dict):
            raise reader.error(f"{field}.Q&A", "missing, or not an object with Question and Answer")
        for key in ("Question", "Answer"):
            if key not in qa:
                raise reader.error(f"{field}.Q&A.{key}", "missing required field")
        return field, reader.expect_text(f"{field}.Q&A.Question", qa["Question"]), reader.expect_text(f"{field}.Q&A.Answer", qa["Answer"])
    return None


def port_entry(reader: RecordReader, port_type: str) -> tuple[str, dict] | None:
    """(field path, entry) of the first ``port_new`` entry of ``port_type`` (VLKEB's ``1-hop``...,
    CCKEB's ``comp``), in any order, or None; ``port_new`` must be a list of objects."""
    entries = reader.value("port_new")
    if not isinstance(entries, list):
        raise reader.error("port_new", f"expected a list, got {type(entries).__name__}")
    for position, entry in enumerate(entries):
        field = f"port_new[{position}]"
        if not isinstance(entry, dict):
            raise reader.error(field, f"expected an object, got {type(entry).__name__}")
        if entry.get("port_type") == port_type:
            return field, entry
    return None
