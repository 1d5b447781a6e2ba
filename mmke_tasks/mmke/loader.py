"""Load MMKE-Bench (and MMKE-format) JSON into edit cases, following the reference protocol.

Layout read (the Hugging Face release; the repository README shows the nested variant)::

    root/data_json/{entity,visual,user}_{train,eval}.json   (or data_json/{stem}/{split}.json)
    root/data_image/...                                     image paths in the JSON are relative to this

Probes per record (shared docs, reference-benchmarks.md 1.3):

* entity_level / user_specific: T-Rel from ``rel_1``/``rel_2``; I-Rel from ``m_rel_1``/``m_rel_2`` on
  ``image``; I-Gen from the same ``m_rel`` questions on ``image_rephrase``. Answers are spelled
  ``rel_ans_1`` or ``rel_1_ans`` (likewise ``m_rel_ans_1`` / ``m_rel_1_ans``); both are accepted.
* visual_knowledge: one T-Rel (``rel``/``rel_ans``), one I-Rel (``m_rel``/``m_rel_ans`` on ``image``),
  one I-Gen (``image_rephrase_question`` on ``image_rephrase``, answer ``m_rel_ans``).
* all types: T-Loc (``loc``/``loc_ans``, text only), I-Loc (``m_loc_q``/``m_loc_a`` on ``m_loc``), and
  Port from the first ``port_new`` entry with ``port_type == "1-hop"``, asked on ``image``
  (entity_level) or ``one_hop_img`` (user_specific, visual_knowledge).

Records the protocol leaves out are skipped and reported (``SkipReport``), not errors: an empty
``alt`` (EasyEdit skips those), no ``port_new`` field or no 1-hop entry in it (MMKE runs
``--hop=1``, which keeps only records with one). Anything else
malformed raises ``DataError`` naming the file, the case and the field.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmke_eval.data.easyedit import base_case, hop_port
from mmke_eval.data.records import RecordReader, read_records
from mmke_eval.data.schema import DataError, EditCase, Probe, SkipReport

# Probe kinds, in the order MMKE-Bench reports them (declared in family.yaml).
T_REL = "t_rel"  # text-only question about the edited knowledge
I_REL = "i_rel"  # question about the edit image
I_GEN = "i_gen"  # the same kind of question about the rephrase image (another view of the subject)
T_LOC = "t_loc"  # unrelated text question: the answer must not change
I_LOC = "i_loc"  # unrelated image question: the answer must not change
PORT = "port"  # one-hop consequence of the edited knowledge

# MMKE-Bench's knowledge types (the ``knowledge_type`` field) and the file stems of their splits.
KNOWLEDGE_TYPES = {"entity_level": "entity", "visual_knowledge": "visual", "user_specific": "user"}

SPLITS = ("train", "eval")
SKIP_EMPTY_ALT = "empty alt"
SKIP_NO_ONE_HOP = "no 1-hop portability question"
SKIP_NO_PORT_NEW = "no port_new field"

# Where the portability question is asked: the edit image for entities, a dedicated image otherwise.
PORT_IMAGE_FIELD = {"entity_level": "image", "user_specific": "one_hop_img", "visual_knowledge": "one_hop_img"}


def load_card(root: Path, card: dict) -> tuple[list[EditCase], SkipReport]:
    """The family loader (family.yaml `loader`): the cases of the card's knowledge type and split."""
    if not card.get("knowledge_type"):
        raise DataError(f"source card {card!r} is missing knowledge_type")
    return load_cases(root, card["knowledge_type"], card["split"], benchmark=card["benchmark"])


def load_cases(
    root: Path, knowledge_type: str, split: str, benchmark: str = "mmke"
) -> tuple[list[EditCase], SkipReport]:
    """The edit cases of one knowledge type and split under ``root``, and the records skipped."""
    if knowledge_type not in KNOWLEDGE_TYPES:
        raise DataError(f"unknown knowledge_type {knowledge_type!r}; expected one of {sorted(KNOWLEDGE_TYPES)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    root = Path(os.path.abspath(root))
    json_path = split_file(root, knowledge_type, split)
    if json_path is None:
        raise DataError(missing_split_message(root, knowledge_type, split))
    train_path = split_file(root, knowledge_type, "train")
    train_file = str(train_path) if train_path is not None else ""

    records = read_records(json_path)
    report = SkipReport(total=len(records), files=[str(p) for p in dict.fromkeys((json_path, train_path)) if p is not None])
    cases = []
    for index, record in enumerate(records):
        case_id = f"{benchmark}/{knowledge_type}/{split}/{index}"
        reader = RecordReader(record, json_path, index, case_id, (root / "data_image", root), data_root=root)
        check_knowledge_type(reader, knowledge_type)
        skip_reason = protocol_skip_reason(reader)
        if skip_reason:
            report.skip(skip_reason, case_id)
            continue
        cases.append(build_case(reader, knowledge_type, train_file, family="mmke"))
    return cases, report


def split_file(root: Path, knowledge_type: str, split: str) -> Path | None:
    """The flat release name first, then the nested layout the upstream README shows."""
    stem = KNOWLEDGE_TYPES[knowledge_type]
    for candidate in (root / "data_json" / f"{stem}_{split}.json", root / "data_json" / stem / f"{split}.json"):
        if candidate.is_file():
            return candidate
    return None


def missing_split_message(root: Path, knowledge_type: str, split: str) -> str:
    stem = KNOWLEDGE_TYPES[knowledge_type]
    return (
        f"no {knowledge_type} {split} file under {root}: looked for "
        f"{root / 'data_json' / f'{stem}_{split}.json'} and {root / 'data_json' / stem / f'{split}.json'}. "
        f"Expected the MMKE-Bench layout: data_json/{{entity,visual,user}}_{{train,eval}}.json "
        f"(or data_json/{{entity,visual,user}}/{{train,eval}}.json) and data_image/ with the images."
    )


def check_knowledge_type(reader: RecordReader, expected: str) -> None:
    found = reader.text("knowledge_type")
    if found not in KNOWLEDGE_TYPES:
        raise reader.error("knowledge_type", f"unknown value {found!r}; expected one of {sorted(KNOWLEDGE_TYPES)}")
    if found != expected:
        raise reader.error("knowledge_type", f"record is {found!r} but {expected!r} was requested")


def protocol_skip_reason(reader: RecordReader) -> str:
    """Why the reference protocol leaves this record out, or "" to keep it."""
    if reader.text("alt") == "":
        return SKIP_EMPTY_ALT
    if not reader.has("port_new"):  # the reference's hop filter drops such records too
        return SKIP_NO_PORT_NEW
    if one_hop_port(reader) is None:
        return SKIP_NO_ONE_HOP
    return ""


def one_hop_port(reader: RecordReader) -> tuple[str, str, str] | None:
    """(field path, question, answer) of the first 1-hop ``port_new`` entry, or None if there is none."""
    return hop_port(reader, 1)


def build_case(reader: RecordReader, knowledge_type: str, train_file: str, family: str) -> EditCase:
    image = reader.image("image")
    rephrase_image = reader.image("image_rephrase")
    if knowledge_type == "visual_knowledge":
        relation_probes = visual_relation_probes(reader, image, rephrase_image)
    else:
        relation_probes = paired_relation_probes(reader, image, rephrase_image)
    probes = relation_probes + locality_probes(reader) + [portability_probe(reader, knowledge_type, image)]
    return base_case(reader, family, knowledge_type, probes, image, rephrase_image, train_file, original=reader.text("pred"))


def paired_relation_probes(reader: RecordReader, image: str, rephrase_image: str) -> list[Probe]:
    """Entity and user types: two text, two image and two rephrase-image relation questions."""
    text_probes, image_probes, gen_probes = [], [], []
    for n in (1, 2):
        question_field = f"rel_{n}"
        answer = reader.text_either(f"rel_ans_{n}", f"rel_{n}_ans")
        text_probes.append(Probe(T_REL, f"t_rel_{n}", reader.text(question_field), answer, "", question_field))

        m_field = f"m_rel_{n}"
        m_question = reader.text(m_field)
        m_answer = reader.text_either(f"m_rel_ans_{n}", f"m_rel_{n}_ans")
        image_probes.append(Probe(I_REL, f"i_rel_{n}", m_question, m_answer, image, m_field))
        gen_probes.append(Probe(I_GEN, f"i_gen_{n}", m_question, m_answer, rephrase_image, m_field))
    return text_probes + image_probes + gen_probes


def visual_relation_probes(reader: RecordReader, image: str, rephrase_image: str) -> list[Probe]:
    """Visual-semantic type: one of each; I-Gen has its own question but shares the I-Rel answer."""
    m_answer = reader.text("m_rel_ans")
    gen_field = "image_rephrase_question"
    return [
        Probe(T_REL, "t_rel", reader.text("rel"), reader.text("rel_ans"), "", "rel"),
        Probe(I_REL, "i_rel", reader.text("m_rel"), m_answer, image, "m_rel"),
        Probe(I_GEN, "i_gen", reader.text(gen_field), m_answer, rephrase_image, gen_field),
    ]


def locality_probes(reader: RecordReader) -> list[Probe]:
    return [
        Probe(T_LOC, "t_loc", reader.text("loc"), reader.text("loc_ans"), "", "loc"),
        Probe(I_LOC, "i_loc", reader.text("m_loc_q"), reader.text("m_loc_a"), reader.image("m_loc"), "m_loc_q"),
    ]


def portability_probe(reader: RecordReader, knowledge_type: str, edit_image: str) -> Probe:
    port = one_hop_port(reader)
    assert port is not None, "records without a 1-hop question are skipped before building"
    field, question, answer = port
    image_field = PORT_IMAGE_FIELD[knowledge_type]
    image = edit_image if image_field == "image" else reader.image(image_field)
    return Probe(PORT, "port", question, answer, image, field)
