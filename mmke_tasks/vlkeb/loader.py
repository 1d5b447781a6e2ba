"""VLKEB in its release layout: the family loader (family.yaml ``loader``).

``eval.json`` gives EasyEdit's base probes (``mmke_eval.data.easyedit``); ``eval_multihop.json`` adds
the k-hop portability probe, ``eval_edit_onehop.json`` the "edit twice" protocol.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from mmke_eval.data.easyedit import SKIP_EMPTY_ALT, base_case, base_probes, hop_port, split_path
from mmke_eval.data.records import RecordReader, read_records
from mmke_eval.data.schema import DataError, EditCase, Probe, SkipReport

FAMILY = "vlkeb"
PORT = "port"  # VLKEB portability: a k-hop consequence of the edit, on the edit image
VLKEB_FILES = {"eval": "eval.json", "train": "train.json", "multihop": "eval_multihop.json", "edit_onehop": "eval_edit_onehop.json"}
EDIT_TWICE_KEYS = ("port_edit_q", "port_edit_a", "port_q", "port_a")
HOPS = (1, 2, 3, 4)


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
    json_path = split_path(root, VLKEB_FILES[subset or ("multihop" if hop else split)], split, layout)
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
        case = base_case(reader, FAMILY, label, probes, image, rephrase_image, train_file)
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
