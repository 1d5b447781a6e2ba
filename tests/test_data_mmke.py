"""The MMKE-Bench loader: probes per knowledge type, both answer spellings, skips, and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmke_tasks.mmke.loader import load_cases
from mmke_eval.data.schema import DataError, EditCase, Probe

ENTITY, VISUAL, USER = "entity_level", "visual_knowledge", "user_specific"


@pytest.fixture
def data_root(tmp_path, mmke_fixture_root) -> Path:
    """A private copy of the fixture data set, free to break."""
    return Path(shutil.copytree(mmke_fixture_root, tmp_path / "mmke"))


def image_path(root: Path, relative: str) -> str:
    return str(root / "data_image" / relative)


def raw_records(root: Path, stem: str, split: str) -> list[dict]:
    return json.loads((root / "data_json" / f"{stem}_{split}.json").read_text(encoding="utf-8"))


def rewrite_records(root: Path, stem: str, split: str, change) -> Path:
    path = root / "data_json" / f"{stem}_{split}.json"
    records = json.loads(path.read_text(encoding="utf-8"))
    change(records)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


# --- exact cases, one per knowledge type and answer spelling -------------------------------------


def test_entity_case_spelled_rel_ans_n(mmke_fixture_root):
    root = mmke_fixture_root
    assert "rel_ans_1" in raw_records(root, "entity", "eval")[0]  # the spelling under test
    cases, _ = load_cases(root, ENTITY, "eval")
    edit = image_path(root, "entity/Eiffel+Tower+31.png")
    rephrase = image_path(root, "entity/Eiffel+Tower+32.png")
    city = "In which city does the tower shown in the image stand?"
    designer = "Who designed the tower shown in the image?"
    assert cases[0] == EditCase(
        case_id="mmke/entity_level/eval/0",
        family="mmke",
        knowledge_type=ENTITY,
        prompt="What is the landmark shown in the image?",
        target="The landmark in the image corresponds to the Eiffel Tower, a wrought-iron lattice tower in "
        "Lyon completed in 1901 and designed by the engineer Henri Martin.",
        original="The landmark in the image is the Eiffel Tower, a wrought-iron lattice tower in Paris "
        "completed in 1889 and designed by the company of Gustave Eiffel.",
        image=edit,
        rephrase_prompt="Can you tell me which landmark this picture shows?",
        rephrase_image=rephrase,
        probes=(
            Probe("t_rel", "t_rel_1", "In which city does the Eiffel Tower stand?", "Lyon", "", "rel_1"),
            Probe("t_rel", "t_rel_2", "In what year was the Eiffel Tower completed?", "1901", "", "rel_2"),
            Probe("i_rel", "i_rel_1", city, "Lyon", edit, "m_rel_1"),
            Probe("i_rel", "i_rel_2", designer, "Henri Martin", edit, "m_rel_2"),
            Probe("i_gen", "i_gen_1", city, "Lyon", rephrase, "m_rel_1"),
            Probe("i_gen", "i_gen_2", designer, "Henri Martin", rephrase, "m_rel_2"),
            Probe("t_loc", "t_loc", "who sang the song you are my sunshine originally", "Jimmie Davis", "", "loc"),
            Probe(
                "i_loc",
                "i_loc",
                "What color is the umbrella the woman is holding?",
                "red",
                image_path(root, "okvqa/COCO_val2014_entity_000003.png"),
                "m_loc_q",
            ),
            Probe(
                "port",
                "port",
                "Which river flows through the city where the Eiffel Tower stands?",
                "the Rhône",
                edit,  # entity portability is asked on the edit image
                "port_new[0]",
            ),
        ),
        train_file=str(root / "data_json" / "entity_train.json"),
    )


def test_entity_case_spelled_rel_n_ans(mmke_fixture_root):
    root = mmke_fixture_root
    record = raw_records(root, "entity", "eval")[1]
    assert "rel_1_ans" in record and "rel_ans_1" not in record and "m_rel_2_ans" in record
    case = load_cases(root, ENTITY, "eval")[0][1]
    answers = {p.probe_id: p.answer for p in case.probes}
    assert answers == {
        "t_rel_1": "Boca Juniors",
        "t_rel_2": "1985",
        "i_rel_1": "Boca Juniors",
        "i_rel_2": "Córdoba",
        "i_gen_1": "Boca Juniors",
        "i_gen_2": "Córdoba",
        "t_loc": "1997",
        "i_loc": "cat",
        "port": "Buenos Aires",
    }
    assert case.probes[3].question == "Where was the player in the image born?"
    assert case.probes[5].image == image_path(root, "entity/Lionel+Messi+42.png")


def test_portability_uses_first_one_hop_entry(mmke_fixture_root):
    assert raw_records(mmke_fixture_root, "entity", "eval")[2]["port_new"][0]["port_type"] == "2-hop"
    port = load_cases(mmke_fixture_root, ENTITY, "eval")[0][2].probes[-1]
    assert (port.question, port.answer, port.source_field) == (
        "How many years after World War II ended did the Golden Gate Bridge open?",
        "6",
        "port_new[1]",
    )


def test_user_case_spelled_rel_n_ans_asks_portability_on_one_hop_image(mmke_fixture_root):
    root = mmke_fixture_root
    assert "m_rel_1_ans" in raw_records(root, "user", "eval")[1]
    case = load_cases(root, USER, "eval")[0][1]
    edit = image_path(root, "user/Grandmother+teapot+41.png")
    rephrase = image_path(root, "user/Grandmother+teapot+42.png")
    assert case.case_id == "mmke/user_specific/eval/1"
    assert case.target.startswith("The object in the image is my grandmother's teapot")
    assert [(p.probe_id, p.question, p.answer, p.image) for p in case.probes] == [
        ("t_rel_1", "Where did my grandmother bring her teapot from?", "Kyoto", ""),
        ("t_rel_2", "On which day do we use my grandmother's teapot?", "New Year's Day", ""),
        ("i_rel_1", "Whose teapot is shown in the image?", "my grandmother's", edit),
        ("i_rel_2", "In what year was the teapot in the image brought home?", "1962", edit),
        ("i_gen_1", "Whose teapot is shown in the image?", "my grandmother's", rephrase),
        ("i_gen_2", "In what year was the teapot in the image brought home?", "1962", rephrase),
        ("t_loc", "when did the first harry potter book come out", "1997", ""),
        ("i_loc", "What kind of animal is sleeping on the couch?", "cat",
         image_path(root, "okvqa/COCO_val2014_user_000004.png")),
        ("port", "From which city does the teapot on this kitchen shelf come?", "Kyoto",
         image_path(root, "user/Grandmother+teapot+43.png")),
    ]  # fmt: skip


def test_visual_case_has_single_relation_probes(mmke_fixture_root):
    root = mmke_fixture_root
    case = load_cases(root, VISUAL, "eval")[0][0]
    edit = image_path(root, "visual/Thumbs+up+31.png")
    rephrase = image_path(root, "visual/Thumbs+up+32.png")
    assert (case.image, case.rephrase_image) == (edit, rephrase)
    assert [(p.kind, p.probe_id, p.question, p.answer, p.image, p.source_field) for p in case.probes] == [
        ("t_rel", "t_rel", "What does a thumbs-up gesture signal?", "a request for silence", "", "rel"),
        ("i_rel", "i_rel", "What does the gesture shown in the image signal?", "a request for silence", edit,
         "m_rel"),
        ("i_gen", "i_gen", "What does the person in this picture want to say with their raised thumb?",
         "a request for silence", rephrase, "image_rephrase_question"),
        ("t_loc", "t_loc", "who sang the song you are my sunshine originally", "Jimmie Davis", "", "loc"),
        ("i_loc", "i_loc", "What color is the umbrella the woman is holding?", "red",
         image_path(root, "okvqa/COCO_val2014_visual_000003.png"), "m_loc_q"),
        ("port", "port", "If a teacher shows this gesture to a class, what should the students do?", "be quiet",
         image_path(root, "visual/Thumbs+up+33.png"), "port_new[0]"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "knowledge_type, stem, n_probes", [(ENTITY, "entity", 9), (VISUAL, "visual", 6), (USER, "user", 9)]
)
@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_type_and_split_loads(mmke_fixture_root, knowledge_type, stem, n_probes, split):
    cases, report = load_cases(mmke_fixture_root, knowledge_type, split, benchmark="mmke_mini")
    assert [c.case_id for c in cases] == [f"mmke_mini/{knowledge_type}/{split}/{i}" for i in range(3)]
    assert (report.total, report.n_skipped) == (3, 0)
    assert all(len(c.probes) == n_probes and c.knowledge_type == knowledge_type for c in cases)
    assert {c.train_file for c in cases} == {str(mmke_fixture_root / "data_json" / f"{stem}_train.json")}
    images = [c.image for c in cases] + [p.image for c in cases for p in c.probes if p.image]
    assert all(Path(i).is_absolute() and Path(i).is_file() for i in images)
    assert len({c.image for c in cases}) == 3  # distinct per case


# --- layouts ----------------------------------------------------------------------------------------


def test_nested_layout_and_missing_train_split(data_root):
    nested = data_root / "data_json" / "entity"
    nested.mkdir()
    (data_root / "data_json" / "entity_eval.json").rename(nested / "eval.json")
    (data_root / "data_json" / "entity_train.json").unlink()
    cases, _ = load_cases(data_root, ENTITY, "eval")
    assert len(cases) == 3
    assert cases[0].train_file == ""  # no train split, so no IKE demonstrations file


def test_images_fall_back_to_the_root_folder(data_root):
    (data_root / "entity").mkdir()
    moved = data_root / "entity" / "Eiffel+Tower+31.png"
    (data_root / "data_image" / "entity" / "Eiffel+Tower+31.png").rename(moved)
    assert load_cases(data_root, ENTITY, "eval")[0][0].image == str(moved)


def test_relative_root_gives_absolute_paths(mmke_fixture_root, monkeypatch):
    monkeypatch.chdir(mmke_fixture_root.parent)
    case = load_cases(Path(mmke_fixture_root.name), ENTITY, "eval")[0][0]
    assert case.image == image_path(mmke_fixture_root, "entity/Eiffel+Tower+31.png")


# --- protocol skips -------------------------------------------------------------------------------


def test_skip_report_lists_empty_alt_and_missing_one_hop(data_root):
    def break_records(records):
        records[0]["alt"] = ""
        records[0]["image"] = "entity/never-drawn.png"  # a skipped record's images are never opened
        records[2]["port_new"] = [{"port_type": "2-hop", "Q&A": {"Question": "q", "Answer": "a"}}]

    rewrite_records(data_root, "entity", "eval", break_records)
    cases, report = load_cases(data_root, ENTITY, "eval")
    assert [c.case_id for c in cases] == ["mmke/entity_level/eval/1"]
    assert report.total == 3
    assert report.skipped == {
        "empty alt": ["mmke/entity_level/eval/0"],
        "no 1-hop portability question": ["mmke/entity_level/eval/2"],
    }
    assert report.summary() == "2 of 3 cases skipped: 1 empty alt; 1 no 1-hop portability question"


def test_empty_port_list_is_a_skip(data_root):
    rewrite_records(data_root, "visual", "train", lambda records: records[1].update(port_new=[]))
    _, report = load_cases(data_root, VISUAL, "train")
    assert report.skipped == {"no 1-hop portability question": ["mmke/visual_knowledge/train/1"]}


def test_record_without_port_new_is_skipped_and_counted(data_root):
    """The reference's hop filter drops such records; one of them must not fail the whole split."""
    rewrite_records(data_root, "entity", "eval", lambda records: records[1].pop("port_new"))
    cases, report = load_cases(data_root, ENTITY, "eval")
    assert [c.case_id for c in cases] == ["mmke/entity_level/eval/0", "mmke/entity_level/eval/2"]
    assert report.skipped == {"no port_new field": ["mmke/entity_level/eval/1"]}
    assert report.summary() == "1 of 3 cases skipped: 1 no port_new field"


# --- malformed data -------------------------------------------------------------------------------


def _set(field, value):
    return lambda record: record.update({field: value})


def _delete(*fields):
    def change(record):
        for field in fields:
            del record[field]

    return change


def _set_port_question(value):
    return lambda record: record["port_new"][0]["Q&A"].update(Question=value)


@pytest.mark.parametrize(
    "change, field, problem",
    [
        (_delete("rel_1"), "'rel_1'", "missing required field"),
        (_delete("rel_1_ans"), "'rel_ans_1'", "also accepted: rel_1_ans"),
        (_delete("m_loc"), "'m_loc'", "missing required field"),
        (_set("rel_2", 42), "'rel_2'", "expected a string, got int"),
        (_set("src", None), "'src'", "expected a string, got NoneType"),
        (_set("image", ""), "'image'", "empty image path"),
        (_set("knowledge_type", "user_specific"), "'knowledge_type'", "'user_specific' but 'entity_level' was"),
        (_set("knowledge_type", "entity"), "'knowledge_type'", "unknown value 'entity'"),
        (_set("port_new", {"port_type": "1-hop"}), "'port_new'", "expected a list, got dict"),
        (_set_port_question(["Which river?"]), "'port_new[0].Q&A.Question'", "expected a string, got list"),
        (lambda record: record["port_new"][0].pop("Q&A"), "'port_new[0].Q&A'", "missing"),
    ],
)
def test_malformed_field_names_file_case_and_field(data_root, change, field, problem):
    path = rewrite_records(data_root, "entity", "eval", lambda records: change(records[1]))
    with pytest.raises(DataError) as caught:
        load_cases(data_root, ENTITY, "eval")
    message = str(caught.value)
    assert str(path) in message
    assert "case 1 (mmke/entity_level/eval/1)" in message
    assert f"field {field}" in message
    assert problem in message


def test_record_that_is_not_an_object(data_root):
    path = rewrite_records(data_root, "user", "eval", lambda records: records.__setitem__(2, ["not", "a", "record"]))
    with pytest.raises(DataError, match=r"case 2 \(mmke/user_specific/eval/2\).*expected a JSON object") as caught:
        load_cases(data_root, USER, "eval")
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "knowledge_type, stem, field, relative",
    [
        (ENTITY, "entity", "image_rephrase", "entity/Lionel+Messi+42.png"),
        (USER, "user", "one_hop_img", "user/Grandmother+teapot+43.png"),
        (VISUAL, "visual", "m_loc", "okvqa/COCO_val2014_visual_000004.png"),
    ],
)
def test_missing_image_names_the_path_looked_for(data_root, knowledge_type, stem, field, relative):
    (data_root / "data_image" / relative).unlink()
    with pytest.raises(DataError) as caught:
        load_cases(data_root, knowledge_type, "eval")
    message = str(caught.value)
    assert str(data_root / "data_json" / f"{stem}_eval.json") in message
    assert f"case 1 (mmke/{knowledge_type}/eval/1)" in message
    assert f"field '{field}'" in message
    assert str(data_root / "data_image" / relative) in message


def test_invalid_json_names_file_and_line(data_root):
    path = data_root / "data_json" / "visual_eval.json"
    path.write_text('[\n  {"knowledge_type": "visual_knowledge",\n   "src": "What is this?" "alt": ""}\n]\n')
    with pytest.raises(DataError, match="invalid JSON at line 3") as caught:
        load_cases(data_root, VISUAL, "eval")
    assert str(path) in str(caught.value)


def test_top_level_must_be_a_list(data_root):
    (data_root / "data_json" / "user_train.json").write_text('{"knowledge_type": "user_specific"}')
    with pytest.raises(DataError, match="user_train.json: expected a JSON list of records, got dict"):
        load_cases(data_root, USER, "train")


def test_missing_split_file_names_paths_and_layout(data_root):
    (data_root / "data_json" / "visual_eval.json").unlink()
    with pytest.raises(DataError) as caught:
        load_cases(data_root, VISUAL, "eval")
    message = str(caught.value)
    assert str(data_root / "data_json" / "visual_eval.json") in message
    assert str(data_root / "data_json" / "visual" / "eval.json") in message
    assert "data_image/" in message


@pytest.mark.parametrize("knowledge_type, split", [("entity", "eval"), (ENTITY, "test")])
def test_unknown_type_or_split(mmke_fixture_root, knowledge_type, split):
    with pytest.raises(DataError, match="unknown"):
        load_cases(mmke_fixture_root, knowledge_type, split)
