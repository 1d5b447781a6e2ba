"""MIKE: the local format, its validation, the three tasks' probes, and the entity-oriented metric."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmke_eval import families, metrics
from mmke_tasks.mike import loader as mike
from mmke_eval.data.schema import DataError
from mmke_tasks.mike.fixture import write_mike_fixture


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_mike_fixture(tmp_path_factory.mktemp("mike"))


def card(task: str, **extra) -> dict:
    return {"benchmark": "mike", "family": "mike", "subset": task, "split": "eval", **extra}


def test_vna_edits_the_name_on_the_edit_image_and_asks_on_another(root):
    cases, report = mike.load_card(root, card("vna"))
    records = json.loads((root / "mike_eval.json").read_text())
    assert len(cases) == 4 and report.total == 4 and not report.skipped
    case, record = cases[0], records[0]
    assert (case.family, case.prompt, case.target, case.image) == ("mike", mike.VNA_PROMPT, record["name"], str(root / record["images"][0]))
    assert case.extra_images == tuple(str(root / p) for p in record["images"][2:])  # for edit_images=K
    by_kind = {p.kind: p for p in case.probes}
    assert [p.kind for p in case.probes] == ["rel", "t_gen", "i_gen", "t_loc", "i_loc"]
    assert (by_kind["i_gen"].question, by_kind["i_gen"].answer, by_kind["i_gen"].image) == (
        mike.VNA_PROMPT, record["name"], str(root / record["images"][1]))
    assert by_kind["t_gen"].question == mike.REPHRASE_PROMPT and cases[1].probes[1].question == records[1]["rephrase"]
    assert by_kind["rel"].entity == record["name"] and by_kind["t_loc"].entity == ""
    other_names = {r["name"] for r in records} - {record["name"]}
    assert by_kind["i_loc"].answer in other_names  # another entity's probe


def test_elc_asks_for_the_entity_level_caption(root):
    case = mike.load_card(root, card("elc"))[0][0]
    i_gen = next(p for p in case.probes if p.kind == "i_gen")
    assert i_gen.question == mike.ELC_PROMPT and case.target in i_gen.answer and i_gen.entity == case.target


def test_csr_draws_name_and_scene_from_this_or_another_entity_answer_yes_iff_they_match(root):
    cases, _ = mike.load_card(root, card("csr"))
    records = json.loads((root / "mike_eval.json").read_text())
    scene_owner = {str(root / s): r["name"] for r in records for s in r["scene_images"]}
    answers = []
    for case in cases:
        i_gen = next(p for p in case.probes if p.kind == "i_gen")
        asked = i_gen.question.removeprefix("Does ").removesuffix(" appear in the picture? Please answer yes or no.")
        assert i_gen.answer == ("yes" if asked == scene_owner[i_gen.image] else "no")
        answers.append(i_gen.answer)
    again = [next(p for p in c.probes if p.kind == "i_gen").answer for c in mike.load_card(root, card("csr"))[0]]
    assert again == answers  # seeded


@pytest.mark.parametrize("change, field, problem", [
    (lambda r: r.update(images=r["images"][:1]), "'images'", "at least 2 image paths"),
    (lambda r: r.update(scene_images=[]), "'scene_images'", "at least 1 image paths"),
    (lambda r: r.update(caption="A bird on a branch."), "'caption'", "must contain the entity name"),
    (lambda r: r.pop("loc_ans"), "'loc_ans'", "missing required field"),
    (lambda r: r.update(name=""), "'name'", "empty entity name"),
    (lambda r: r["images"].__setitem__(1, "entities/none.jpg"), "'images[1]'", "not found"),
])
def test_bad_records_name_the_file_case_and_field(root, tmp_path, change, field, problem):
    data = Path(shutil.copytree(root, tmp_path / "data"))
    records = json.loads((data / "mike_eval.json").read_text())
    change(records[2])
    (data / "mike_eval.json").write_text(json.dumps(records))
    with pytest.raises(DataError) as caught:
        mike.load_card(data, card("vna"))
    message = str(caught.value)
    assert "mike_eval.json: case 2 (mike/vna/eval/2)" in message and f"field {field}" in message and problem in message


def test_missing_file_and_bad_task(root, tmp_path):
    with pytest.raises(DataError, match="no MIKE eval file .*mike_eval.json"):
        mike.load_card(tmp_path, card("vna"))
    with pytest.raises(DataError, match="subset must be one of"):
        mike.load_card(root, card("ocr"))


def test_entity_accuracy_by_hand():
    """A = (1[output = y] + 1[E in output]) / 2 (MIKE eq. 6). The paper's halves (entity_acc=tokens,
    default): teacher-forced token accuracy over the answer, and 1 if every token of the name is right."""
    # a name of one token, right; a name of two tokens, one wrong; a caption of 6 tokens, 2 wrong
    # outside the name's 2 tokens
    assert metrics.entity_accuracy_tokens(1.0, metrics.tokens_match([7], [7])) == 1.0
    assert metrics.entity_accuracy_tokens(0.5, metrics.tokens_match([7, 0], [7, 8])) == 0.25
    assert metrics.entity_accuracy_tokens(4 / 6, metrics.tokens_match([3, 4], [3, 4])) == pytest.approx((4 / 6 + 1) / 2)
    assert metrics.tokens_match([], []) == 0.0
    # entity_acc=generation, on generated text
    assert metrics.entity_accuracy("Snowy Owl", "Snowy Owl", "Snowy Owl") == 1.0  # exact
    assert metrics.entity_accuracy("It is a Snowy Owl.", "Snowy Owl", "Snowy Owl") == 0.5  # entity only
    assert metrics.entity_accuracy("A snowy owl on a branch", "A Snowy Owl perched on a branch.", "Snowy Owl") == 0.5
    assert metrics.entity_accuracy("An owl", "Snowy Owl", "Snowy Owl") == 0.0  # partial name: neither
    kind = families.get("mike").probe("rel")
    # the column is what the edited model computed (by the protocol's entity_acc) ...
    response = json.dumps({"mmke_probe": 1, "probe": "rel", "generated": "It is a Snowy Owl.", "score": 0.5, "entity_acc": 0.25})
    scores = metrics.probe_scores(kind, "Snowy Owl", response, entity="Snowy Owl")
    assert scores["rel_entity"] == 0.25 and scores["rel_em"] == 0.0 and scores["rel_contains"] == 1.0
    # ... and a plain model's generation, with no teacher-forced pass, has none
    scores = metrics.probe_scores(kind, "Snowy Owl", "It is a Snowy Owl.", entity="Snowy Owl")
    assert "rel_entity" not in scores and scores["rel_contains"] == 1.0
    assert "rel_entity" not in metrics.probe_scores(families.get("mmedit").probe("rel"), "x", "x", entity="x")


def test_ike_pool_from_the_mike_train_split(root):
    pool = mike.demonstration_pool(str(root / "mike_train.json"))
    first = json.loads((root / "mike_train.json").read_text())[0]
    assert pool[0] == (mike.VNA_PROMPT, first["name"], mike.VNA_PROMPT, first["name"])
    assert pool[2] == (mike.VNA_PROMPT, first["name"], first["loc"], first["loc_ans"])
