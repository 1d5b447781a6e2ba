"""CCKEB in its release layout: the family loader (family.yaml ``loader``).

A CCKEB record (MemEIC, built from VLKEB) holds two edits of one entity: the visual edit (VLKEB's
base fields: the picture ``image`` now shows ``alt``), and ``textual_edit`` (a text-only fact about
that entity: ``src`` -> ``alt``, with ``rephrase``, ``loc``/``loc_ans``), plus ``port_new``, whose
first ``comp`` entry is the compositional question: asked on the visual edit's picture, it needs
both edits, and its target is the textual edit's new answer (MemEIC's dataset reads it so; the
entry's own ``Answer`` is not read). Each case makes the visual edit, then the textual edit as a
follow-up edit (``EditCase.followup_edits``, text only), then every probe is scored.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from mmke_eval.data.easyedit import SKIP_EMPTY_ALT, base_case, base_probes, port_entry
from mmke_eval.data.records import RecordReader, read_records
from mmke_eval.data.schema import DataError, EditCase, Probe, SkipReport

FAMILY = "cckeb"
FILES = {"train": "CCKEB_train.json", "eval": "CCKEB_eval.json"}
# MemEIC's own method reads a copy of each file under prompt/ (the same records plus its query
# decomposition: src_q, rephrase_q, m_loc_q_q, Q&A.Query); read when the plain file is absent.
PROMPT_COPY = "prompt"
# Where image paths (``<mid>/google_N.jpg``) are looked up, in order: the README's layout, the
# folder every MemEIC hparams yaml names instead, the data folder itself.
IMAGE_DIRS = ("CCKEB_images/mmkb_images", "VLKEB_images/mmkb_images", ".")
LAYOUT = ("PATH/CCKEB_train.json, PATH/CCKEB_eval.json (or their copies under PATH/prompt/) and "
          "PATH/CCKEB_images/mmkb_images/ holding the images they name")

# Probe kinds (family.yaml) of the textual edit and the compositional question; the visual edit's
# are VLKEB's (mmke_eval/data/easyedit.py: rel, t_gen, i_gen, t_loc, i_loc).
TEXT_REL, TEXT_GEN, TEXT_LOC = "text_rel", "text_gen", "text_loc"
COMP_REL = "comp_rel"
COMP_TYPE = "comp"  # the port_type of the compositional question (MemEIC's hop=1)

SKIP_NO_TEXTUAL = "no textual_edit"
SKIP_EMPTY_TEXTUAL_ALT = "empty textual_edit alt"
SKIP_NO_PORT = "no port_new"
SKIP_NO_COMP = "no comp question in port_new"


def data_file(root: Path, split: str) -> Path:
    """``root/CCKEB_<split>.json``, else its copy ``root/prompt/CCKEB_<split>.json``."""
    for path in (root / FILES[split], root / PROMPT_COPY / FILES[split]):
        if path.is_file():
            return path
    raise DataError(f"no {split} file under {root}: looked for {root / FILES[split]} and "
                    f"{root / PROMPT_COPY / FILES[split]}. Expected {LAYOUT}.")


def load_cckeb(root: Path, card: dict) -> tuple[list[EditCase], SkipReport]:
    """The CCKEB cases of the card's split, in file order (MemEIC's continual stream is the file's
    order). A record is skipped, with the reason, when its visual ``alt`` is empty (as the
    reference), when it has no ``textual_edit`` (the reference then reuses the previous record's
    textual answer: docs/protocol.md), when its textual ``alt`` is empty, or when ``port_new`` is
    missing or has no ``comp`` entry (as the reference with hop=1)."""
    split = card["split"]
    if split not in FILES:
        raise DataError(f"source card {card!r}: split must be eval or train")
    chosen = sorted(key for key in ("subset", "hop", "knowledge_type") if card.get(key) is not None)
    if chosen:
        raise DataError(f"source card {card!r}: CCKEB has no subsets, hops or knowledge types (remove {', '.join(chosen)})")
    root = Path(os.path.abspath(root))
    json_path = data_file(root, split)
    train_path = root / FILES["train"] if (root / FILES["train"]).is_file() else root / PROMPT_COPY / FILES["train"]
    train_file = str(train_path) if train_path.is_file() else ""
    records = read_records(json_path)
    report = SkipReport(total=len(records), files=[str(p) for p in dict.fromkeys((json_path, train_path)) if p.is_file()])
    image_dirs = tuple(root / folder for folder in IMAGE_DIRS)
    cases = []
    for index, record in enumerate(records):
        reader = RecordReader(record, json_path, index, f"{card['benchmark']}/{split}/{index}", image_dirs, data_root=root)
        if reader.text("alt") == "":
            report.skip(SKIP_EMPTY_ALT, reader.case_id)
            continue
        if not reader.has("textual_edit"):
            report.skip(SKIP_NO_TEXTUAL, reader.case_id)
            continue
        textual = textual_edit(reader)
        if textual["alt"] == "":
            report.skip(SKIP_EMPTY_TEXTUAL_ALT, reader.case_id)
            continue
        if not reader.has("port_new"):
            report.skip(SKIP_NO_PORT, reader.case_id)
            continue
        comp = comp_question(reader)
        if comp is None:
            report.skip(SKIP_NO_COMP, reader.case_id)
            continue
        image, rephrase_image = reader.image("image"), reader.image("image_rephrase")
        probes = base_probes(reader, image, rephrase_image) + [
            Probe(TEXT_REL, TEXT_REL, textual["src"], textual["alt"], "", "textual_edit.src"),
            Probe(TEXT_GEN, TEXT_GEN, textual["rephrase"], textual["alt"], "", "textual_edit.rephrase"),
            Probe(TEXT_LOC, TEXT_LOC, textual["loc"], textual["loc_ans"], "", "textual_edit.loc"),
            Probe(COMP_REL, COMP_REL, comp[1], textual["alt"], image, comp[0]),
        ]
        case = base_case(reader, FAMILY, split, probes, image, rephrase_image, train_file)
        # The textual edit: (prompt, target, original), made after the visual edit, without an image.
        cases.append(dataclasses.replace(case, followup_edits=((textual["src"], textual["alt"], textual["pred"]),)))
    return cases, report


def textual_edit(reader: RecordReader) -> dict[str, str]:
    """The record's ``textual_edit`` fields; ``pred`` and ``alt`` may be lists of words, joined with a space."""
    value = reader.value("textual_edit")
    if not isinstance(value, dict):
        raise reader.error("textual_edit", f"expected an object, got {type(value).__name__}")
    fields = {}
    for key in ("src", "pred", "alt", "rephrase", "loc", "loc_ans"):
        field = f"textual_edit.{key}"
        if key not in value:
            raise reader.error(field, "missing required field")
        text = value[key]
        if key in ("pred", "alt") and isinstance(text, list):
            text = " ".join(reader.expect_text(f"{field}[{i}]", word) for i, word in enumerate(text))
        fields[key] = reader.expect_text(field, text)
    return fields


def comp_question(reader: RecordReader) -> tuple[str, str] | None:
    """(field path, question) of the first ``port_new`` entry of type ``comp``, or None."""
    found = port_entry(reader, COMP_TYPE)
    if found is None:
        return None
    field, entry = found
    qa = entry.get("Q&A")
    if not isinstance(qa, dict) or "Question" not in qa:
        raise reader.error(f"{field}.Q&A.Question", "missing (a comp entry needs Q&A.Question)")
    return f"{field}.Q&A.Question", reader.expect_text(f"{field}.Q&A.Question", qa["Question"])
