"""MMEdit and VLKEB loaders on data in their release layouts: probes, skips, hops, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmke_eval import families
from mmke_eval.data.easyedit import demonstration_pool
from mmke_tasks.mmedit.loader import load_mmedit
from mmke_tasks.vlkeb.loader import load_vlkeb
from mmke_eval.data.schema import DataError
from mmke_tasks.mmedit.fixture import write_mmedit_fixture
from mmke_tasks.vlkeb.fixture import write_vlkeb_fixture


@pytest.fixture(scope="module")
def mmedit_root(tmp_path_factory):
    return write_mmedit_fixture(tmp_path_factory.mktemp("mmedit"))


@pytest.fixture(scope="module")
def vlkeb_root(tmp_path_factory):
    return write_vlkeb_fixture(tmp_path_factory.mktemp("vlkeb"))


def copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "data"))


def test_mmedit_vqa_probes_follow_easyedit_and_empty_alt_is_skipped(mmedit_root):
    cases, report = load_mmedit(mmedit_root, {"benchmark": "mmedit", "subset": "vqa", "split": "eval"})
    records = json.loads((mmedit_root / "vqa" / "vqa_eval.json").read_text())
    assert [c.case_id for c in cases] == ["mmedit/vqa/eval/0", "mmedit/vqa/eval/2"]
    assert report.skipped == {"empty alt": ["mmedit/vqa/eval/1"]} and report.total == 3
    case, record = cases[0], records[0]
    assert (case.family, case.prompt, case.target, case.original) == ("mmedit", record["src"], record["alt"], record["pred"])
    by_kind = {p.kind: p for p in case.probes}
    assert [p.kind for p in case.probes] == ["rel", "t_gen", "i_gen", "t_loc", "i_loc"]
    assert (by_kind["rel"].question, by_kind["rel"].answer, by_kind["rel"].image) == (record["src"], record["alt"], str(mmedit_root / record["image"]))
    assert (by_kind["t_gen"].question, by_kind["t_gen"].image) == (record["rephrase"], str(mmedit_root / record["image"]))
    assert (by_kind["i_gen"].question, by_kind["i_gen"].image) == (record["src"], str(mmedit_root / record["image_rephrase"]))
    assert (by_kind["t_loc"].question, by_kind["t_loc"].answer, by_kind["t_loc"].image) == (record["loc"], record["loc_ans"], "")
    assert (by_kind["i_loc"].question, by_kind["i_loc"].image) == (record["m_loc_q"], str(mmedit_root / record["m_loc"]))
    assert case.train_file == str(mmedit_root / "vqa" / "vqa_train.json")
    assert report.files == [str(mmedit_root / "vqa" / "vqa_eval.json"), case.train_file]


def test_mmedit_caption_reads_the_edit_files(mmedit_root):
    cases, _ = load_mmedit(mmedit_root, {"benchmark": "mmedit", "subset": "caption", "split": "eval"})
    assert len(cases) == 2 and cases[0].prompt == "a photo of" and cases[0].knowledge_type == "caption"
    assert cases[0].train_file.endswith("caption/caption_train_edit.json")


def test_mmedit_declares_easyedits_prompts_per_code_path():
    family = families.get("mmedit")
    short = "mmke/short_answer.jinja"
    assert [family.path_template("trainer", "vqa", k) for k in ("edit", "rel", "t_gen", "i_gen", "t_loc", "i_loc")] == \
        [short, short, short, short, None, short]
    assert [family.path_template("trainer", "caption", k) for k in ("edit", "rel", "i_loc")] == [None, None, short]
    assert family.path_template("editor", "vqa", "i_loc") is None
    with pytest.raises(families.FamilyError, match="no prompt path 'hf'"):
        family.path_template("hf", "vqa", "rel")
    assert [name for name, _ in family.columns] == ["rel", "t_gen", "i_gen", "t_loc", "i_loc"]


def test_vlkeb_eval_has_no_portability(vlkeb_root):
    cases, report = load_vlkeb(vlkeb_root, {"benchmark": "vlkeb", "split": "eval"})
    assert len(cases) == 2 and report.skipped == {"empty alt": ["vlkeb/eval/eval/2"]}
    assert [p.kind for p in cases[0].probes] == ["rel", "t_gen", "i_gen", "t_loc", "i_loc"]
    assert cases[0].image == str(vlkeb_root / "VLKEB_images" / "m.0104x" / "google_1.jpg")


@pytest.mark.parametrize("hop, kept, question", [
    (1, [0, 1], ["Who founded the entity in the image?", "Where is the entity in the image located?"]),
    (2, [0, 3], ["Which country is the birthplace of Entity's founder in?", "Which river flows through its city?"]),
    (3, [1], ["What is the currency of the country where it is?"]),
    (4, [1, 3], ["Who designed the currency's symbol?", "In which year was the bank of that currency founded?"]),
])
def test_vlkeb_hop_takes_the_first_entry_of_that_hop_in_any_order_and_skips_the_rest(vlkeb_root, hop, kept, question):
    cases, report = load_vlkeb(vlkeb_root, {"benchmark": "vlkeb", "hop": hop, "split": "eval"})
    assert [c.case_id for c in cases] == [f"vlkeb/{hop}-hop/eval/{i}" for i in kept]
    assert [next(p for p in c.probes if p.kind == "port").question for c in cases] == question
    skipped = [f"vlkeb/{hop}-hop/eval/{i}" for i in range(4) if i not in kept]
    assert report.skipped == {f"no {hop}-hop portability question": skipped}
    port = next(p for p in cases[0].probes if p.kind == "port")
    assert port.image == cases[0].image  # asked on the edit image


def test_vlkeb_bad_input_names_file_case_and_field(vlkeb_root, tmp_path):
    root = copy(vlkeb_root, tmp_path)
    path = root / "eval_multihop.json"
    records = json.loads(path.read_text())
    records[1]["port_new"][0] = {"port_type": "1-hop", "Q&A": {"Question": ["not", "text"], "Answer": "Oslo"}}
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"eval_multihop\.json: case 1 \(vlkeb/1-hop/eval/1\): field 'port_new\[0\]\.Q&A\.Question'"):
        load_vlkeb(root, {"benchmark": "vlkeb", "hop": 1, "split": "eval"})
    (root / "VLKEB_images" / json.loads((root / "eval.json").read_text())[0]["image"]).unlink()
    with pytest.raises(DataError, match=r"eval\.json: case 0 .*field 'image': image 'm\.0104x/google_1\.jpg' not found"):
        load_vlkeb(root, {"benchmark": "vlkeb", "split": "eval"})
    (root / "eval.json").unlink()
    with pytest.raises(DataError, match="no eval file .*eval.json.*VLKEB_images"):
        load_vlkeb(root, {"benchmark": "vlkeb", "split": "eval"})
    with pytest.raises(DataError, match="hop must be one of"):
        load_vlkeb(root, {"benchmark": "vlkeb", "hop": 5, "split": "eval"})


def test_mmedit_bad_input(mmedit_root, tmp_path):
    root = copy(mmedit_root, tmp_path)
    path = root / "vqa" / "vqa_eval.json"
    records = json.loads(path.read_text())
    del records[0]["m_loc_q"]
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"vqa_eval\.json: case 0 \(mmedit/vqa/eval/0\): field 'm_loc_q': missing required field"):
        load_mmedit(root, {"benchmark": "mmedit", "subset": "vqa", "split": "eval"})
    with pytest.raises(DataError, match="subset must be one of"):
        load_mmedit(root, {"benchmark": "mmedit", "subset": "vision", "split": "eval"})


def test_demonstration_pool_reads_the_easyedit_fields(vlkeb_root):
    pool = demonstration_pool(str(vlkeb_root / "train.json"))
    record = json.loads((vlkeb_root / "train.json").read_text())[0]
    assert pool[:3] == [(record["src"], record["alt"], record["src"], record["alt"]),
                        (record["src"], record["alt"], record["rephrase"], record["alt"]),
                        (record["src"], record["alt"], record["loc"], record["loc_ans"])]
    assert len(pool) == 9


def test_every_task_yaml_lists_its_familys_metrics():
    """The metric list of each family's task template is the one its declaration gives."""
    import yaml

    from mmke_eval.lmms.taskfiles import IgnoreTagsLoader as _IgnoreTagsLoader
    from mmke_eval.resources import tasks_dir

    for name in ("mmke", "mmedit", "vlkeb", "mike"):
        spec = yaml.load((tasks_dir() / name / "_default_template_yaml").read_text(), Loader=_IgnoreTagsLoader)
        assert sorted(m["metric"] for m in spec["metric_list"]) == sorted(families.get(name).metric_names()), name


def test_vlkeb_edit_twice_adds_the_one_hop_edit_and_asks_the_portability_question(vlkeb_root):
    cases, report = load_vlkeb(vlkeb_root, {"benchmark": "vlkeb", "subset": "edit_onehop", "split": "eval"})
    assert [c.case_id for c in cases] == ["vlkeb/edit_onehop/eval/0", "vlkeb/edit_onehop/eval/2"]
    assert report.skipped == {"no edit-twice entry (port_edit_q, port_edit_a, port_q, port_a)": ["vlkeb/edit_onehop/eval/1"]}
    assert cases[0].followup_edits == (("Who founded the entity in the image?", "Ada Berg"),)
    port = next(p for p in cases[0].probes if p.kind == "port")
    assert (port.question, port.answer, port.image) == ("Where was the founder of the entity in the image born?", "Bergen", cases[0].image)
    assert cases[1].followup_edits == (("Which city is the entity in the image in?", "Tromso"),)  # found after a 2-hop entry
    with pytest.raises(DataError, match="subset must be edit_onehop"):
        load_vlkeb(vlkeb_root, {"benchmark": "vlkeb", "subset": "edit_onehop", "hop": 1, "split": "eval"})
