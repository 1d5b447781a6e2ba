"""What the EasyEdit-derived benchmarks (MMEdit, VLKEB, MMKE-Bench) share: the base record fields
``src``, ``alt``, ``pred``, ``rephrase``, ``image``, ``image_rephrase``, ``loc``/``loc_ans``,
``m_loc``/``m_loc_q``/``m_loc_a`` (shared docs 1.1-1.3), and IKE's demonstration pool built from them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from mmke_eval.data.records import RecordReader, read_records
from mmke_eval.data.schema import DataError, EditCase, Probe, SkipReport


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


# -- MMEdit (E-VQA, E-IC) and VLKEB: the base fields as probes ---------------------------------
# Probe kinds (registry.yaml, benchmarks.mmedit / benchmarks.vlkeb), as EasyEdit/VLKEB report them.
REL = "rel"  # Reliability: the edit prompt on the edit image (rewrite_acc)
T_GEN = "t_gen"  # T-Generality: the rephrased prompt on the edit image (rephrase_acc)
I_GEN = "i_gen"  # I-Generality: the edit prompt on the rephrase image (image_rephrase_acc)
T_LOC = "t_loc"  # T-Locality: an unrelated (NQ) question, text only
I_LOC = "i_loc"  # I-Locality: an unrelated (OK-VQA) question on its image
PORT = "port"  # VLKEB portability: a k-hop consequence of the edit, on the edit image

SKIP_EMPTY_ALT = "empty alt"
MMEDIT_FILES = {"vqa": "vqa/vqa_{split}.json", "caption": "caption/caption_{split}_edit.json"}
VLKEB_FILES = {"eval": "eval.json", "train": "train.json", "multihop": "eval_multihop.json", "edit_onehop": "eval_edit_onehop.json"}
EDIT_TWICE_KEYS = ("port_edit_q", "port_edit_a", "port_q", "port_a")
HOPS = (1, 2, 3, 4)


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


def _split_path(root: Path, pattern: str, split: str, layout: str) -> Path:
    path = root / pattern.format(split=split)
    if not path.is_file():
        raise DataError(f"no {split} file under {root}: looked for {path}. Expected {layout}.")
    return path


def load_mmedit(root: Path, card: dict) -> tuple[list[EditCase], SkipReport]:
    """MMEdit E-VQA (``subset: vqa``) or E-IC (``subset: caption``), as EasyEdit's VQADataset /
    CaptionDataset read them: images relative to the data folder (COCO ``val2014/``, rephrase
    images in ``val2014_image_rephrase/``); records with an empty ``alt`` are skipped."""
    subset, split = card.get("subset"), card["split"]
    if subset not in MMEDIT_FILES:
        raise DataError(f"source card {card!r}: subset must be one of {sorted(MMEDIT_FILES)}")
    root = Path(os.path.abspath(root))
    layout = "PATH/vqa/vqa_{train,eval}.json, PATH/caption/caption_{train,eval}_edit.json and the images they name (val2014/, val2014_image_rephrase/)"
    json_path = _split_path(root, MMEDIT_FILES[subset], split, layout)
    train_path = root / MMEDIT_FILES[subset].format(split="train")
    train_file = str(train_path) if train_path.is_file() else ""
    records = read_records(json_path)
    report = SkipReport(total=len(records), files=[str(p) for p in dict.fromkeys((json_path, train_path)) if p.is_file()])
    cases = []
    for index, record in enumerate(records):
        reader = RecordReader(record, json_path, index, f"{card['benchmark']}/{subset}/{split}/{index}", (root,), data_root=root)
        if reader.text("alt") == "":
            report.skip(SKIP_EMPTY_ALT, reader.case_id)
            continue
        image, rephrase_image = reader.image("image"), reader.image("image_rephrase")
        probes = base_probes(reader, image, rephrase_image)
        cases.append(base_case(reader, "mmedit", subset, probes, image, rephrase_image, train_file))
    return cases, report


def load_vlkeb(root: Path, card: dict) -> tuple[list[EditCase], SkipReport]:
    """VLKEB: ``eval.json`` (Reliability, generalities, localities); with ``hop: k``,
    ``eval_multihop.json`` with the first ``k-hop`` entry of ``port_new`` as the portability probe
    (VLKEB's ``hop=k``; a record without one is skipped and counted); with ``subset: edit_onehop``,
    ``eval_edit_onehop.json``'s "edit twice" protocol: the case's edit, then a second edit of the
    one-hop fact (``port_edit_q`` -> ``port_edit_a``), then the portability question ``port_q`` ->
    ``port_a`` (from the first ``port_new`` entry holding all four). Images under ``VLKEB_images/``."""
    split, hop, subset = card["split"], card.get("hop"), card.get("subset")
    if hop is not None and hop not in HOPS:
        raise DataError(f"source card {card!r}: hop must be one of {HOPS}")
    if subset not in (None, "edit_onehop") or (subset and hop):
        raise DataError(f"source card {card!r}: subset must be edit_onehop (and then no hop) or absent")
    root = Path(os.path.abspath(root))
    layout = "PATH/train.json, PATH/eval.json, PATH/eval_multihop.json and PATH/VLKEB_images/ holding the images they name"
    if split not in ("eval", "train"):
        raise DataError(f"source card {card!r}: split must be eval or train")
    json_path = _split_path(root, VLKEB_FILES[subset or ("multihop" if hop else split)], split, layout)
    train_path = root / VLKEB_FILES["train"]
    train_file = str(train_path) if train_path.is_file() else ""
    records = read_records(json_path)
    report = SkipReport(total=len(records), files=[str(p) for p in dict.fromkeys((json_path, train_path)) if p.is_file()])
    label = subset or (f"{hop}-hop" if hop else split)
    cases = []
    for index, record in enumerate(records):
        reader = RecordReader(record, json_path, index, f"{card['benchmark']}/{label}/{split}/{index}", (root / "VLKEB_images", root), data_root=root)
        if reader.text("alt") == "":
            report.skip(SKIP_EMPTY_ALT, reader.case_id)
            continue
        port, followups = hop_port(reader, hop) if hop else None, ()
        if subset == "edit_onehop":
            twice = edit_twice_entry(reader)
            if twice is None:
                report.skip("no edit-twice entry (port_edit_q, port_edit_a, port_q, port_a)", reader.case_id)
                continue
            field, edit_q, edit_a, question, answer = twice
            port, followups = (field, question, answer), ((edit_q, edit_a),)
        if hop and port is None:
            report.skip(f"no {hop}-hop portability question", reader.case_id)
            continue
        image, rephrase_image = reader.image("image"), reader.image("image_rephrase")
        probes = base_probes(reader, image, rephrase_image)
        if port is not None:
            field, question, answer = port
            probes.append(Probe(PORT, PORT, question, answer, image, field))
        case = base_case(reader, "vlkeb", label, probes, image, rephrase_image, train_file)
        cases.append(dataclasses.replace(case, followup_edits=followups) if followups else case)
    return cases, report


def edit_twice_entry(reader: RecordReader) -> tuple[str, str, str, str, str] | None:
    """(field, port_edit_q, port_edit_a, port_q, port_a) of the first ``port_new`` entry holding all four."""
    entries = reader.value("port_new") if reader.has("port_new") else []
    if not isinstance(entries, list):
        raise reader.error("port_new", f"expected a list, got {type(entries).__name__}")
    for position, entry in enumerate(entries):
        field = f"port_new[{position}]"
        if isinstance(entry, dict) and all(key in entry for key in EDIT_TWICE_KEYS):
            return (field, *(reader.expect_text(f"{field}.{key}", entry[key]) for key in EDIT_TWICE_KEYS))
    return None


def hop_port(reader: RecordReader, hop: int) -> tuple[str, str, str] | None:
    """(field path, question, answer) of the first ``port_new`` entry of type ``{hop}-hop``, or None.
    Entries may come in any order; an entry's question and answer are ``Q&A.Question/Answer``."""
    if not reader.has("port_new"):
        return None
    entries = reader.value("port_new")
    if not isinstance(entries, list):
        raise reader.error("port_new", f"expected a list, got {type(entries).__name__}")
    for position, entry in enumerate(entries):
        field = f"port_new[{position}]"
        if not isinstance(entry, dict):
            raise reader.error(field, f"expected an object, got {type(entry).__name__}")
        if entry.get("port_type") != f"{hop}-hop":
            continue
        qa = entry.get("Q&A")
        if not isinstance(qa, dict):
            raise reader.error(f"{field}.Q&A", "missing, or not an object with Question and Answer")
        for key in ("Question", "Answer"):
            if key not in qa:
                raise reader.error(f"{field}.Q&A.{key}", "missing required field")
        return field, reader.expect_text(f"{field}.Q&A.Question", qa["Question"]), reader.expect_text(f"{field}.Q&A.Answer", qa["Answer"])
    return None
