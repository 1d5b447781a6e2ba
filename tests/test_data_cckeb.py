"""CCKEB (MemEIC; mmke_tasks/cckeb/): the loader on a fixture in the released layout, compositional
reliability by hand on a composing fake model, the generated cckeb_mini, and the CLI on it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from editors.base import EditHandle, Editor
from mmke_eval import families
from mmke_eval.adapters.base import ForwardResult
from mmke_eval.data.images import load_optional_image
from mmke_eval.data.schema import DataError
from mmke_eval.direct import score_cases
from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W
from mmke_eval.protocol import Protocol
from mmke_tasks.cckeb.fixture import write_cckeb_fixture
from mmke_tasks.cckeb.loader import load_cckeb

CARD = {"benchmark": "cckeb", "family": "cckeb", "split": "eval"}
KINDS = ["rel", "t_gen", "i_gen", "t_loc", "i_loc", "text_rel", "text_gen", "text_loc", "comp_rel"]


@pytest.fixture(scope="module")
def cckeb_root(tmp_path_factory) -> Path:
    return write_cckeb_fixture(tmp_path_factory.mktemp("cckeb"))


# -- the loader ------------------------------------------------------------------------------------
def test_loader_reads_both_edits_and_the_comp_question(cckeb_root):
    cases, report = load_cckeb(cckeb_root, CARD)
    assert [c.case_id for c in cases] == ["cckeb/eval/0", "cckeb/eval/1", "cckeb/eval/6"]
    first = cases[0]
    assert (first.prompt, first.target, first.original) == ("Who is the person in the image?", "Person 204", "Someone 204")
    assert [p.kind for p in first.probes] == KINDS and first.family == "cckeb"
    probes = {p.kind: p for p in first.probes}
    images = cckeb_root / "CCKEB_images" / "mmkb_images"
    assert first.image == str(images / "m.0204c/google_0.jpg") and first.rephrase_image == str(images / "m.0204c/bing_2.jpg")
    assert probes["i_gen"].image == first.rephrase_image and probes["i_loc"].image == str(images / "m.0loc204/yahoo_1.jpg")
    # the textual edit: text only, made after the visual edit (prompt, target, original)
    assert first.followup_edits == (("What is the nationality of Person 204?", "Land 204", "French"),)
    assert (probes["text_rel"].question, probes["text_rel"].answer, probes["text_rel"].image) == (
        "What is the nationality of Person 204?", "Land 204", "")
    assert (probes["text_gen"].question, probes["text_loc"].answer) == ("Which country is Person 204 a citizen of?", "Painter 204")
    assert probes["text_gen"].image == probes["text_loc"].image == probes["t_loc"].image == ""
    # CompRel: the comp question on the visual edit's picture, target the textual edit's new answer
    comp = probes["comp_rel"]
    assert (comp.question, comp.answer, comp.image) == ("What is the nationality of the person in the image?", "Land 204", first.image)
    assert report.files == [str(cckeb_root / "CCKEB_eval.json"), str(cckeb_root / "CCKEB_train.json")]
    assert first.train_file == str(cckeb_root / "CCKEB_train.json")


def test_list_valued_textual_pred_and_alt_are_joined_and_the_comp_entry_found_anywhere(cckeb_root):
    case = load_cckeb(cckeb_root, CARD)[0][1]
    assert case.followup_edits == (("What is the nationality of Person 205?", "South Land", "North Land"),)
    comp = next(p for p in case.probes if p.kind == "comp_rel")
    # the second port_new entry; its own Answer is not read (MemEIC's dataset neither)
    assert (comp.question, comp.answer, comp.source_field) == (
        "Which country is the person in the image from?", "South Land", "port_new[1].Q&A.Question")


def test_skipped_records_are_counted_with_the_reason(cckeb_root):
    _, report = load_cckeb(cckeb_root, CARD)
    assert report.total == 7
    assert report.skipped == {"empty alt": ["cckeb/eval/2"], "no textual_edit": ["cckeb/eval/3"],
                              "no port_new": ["cckeb/eval/4"], "no comp question in port_new": ["cckeb/eval/5"]}
    assert "4 of 7 cases skipped" in report.summary()


def test_prompt_copy_and_the_hparams_image_folder_are_read(cckeb_root, tmp_path):
    """MemEIC's prompt/ copy (extra query-decomposition fields, ignored) when the plain file is absent;
    images under VLKEB_images/mmkb_images, where MemEIC's hparams look."""
    expected = [(c.case_id, c.probes, c.followup_edits) for c in load_cckeb(cckeb_root, CARD)[0]]
    root = tmp_path / "copy"
    (root / "prompt").mkdir(parents=True)
    shutil.copy(cckeb_root / "prompt" / "CCKEB_eval.json", root / "prompt")
    shutil.copytree(cckeb_root / "CCKEB_images" / "mmkb_images", root / "VLKEB_images" / "mmkb_images")
    cases, report = load_cckeb(root, CARD)
    moved = [(c.case_id, tuple(p.question for p in c.probes), c.followup_edits) for c in cases]
    assert moved == [(i, tuple(p.question for p in probes), f) for i, probes, f in expected]
    assert cases[0].image == str(root / "VLKEB_images" / "mmkb_images" / "m.0204c" / "google_0.jpg")
    assert report.files == [str(root / "prompt" / "CCKEB_eval.json")] and cases[0].train_file == ""


def test_train_split_and_bad_inputs_name_the_file_and_field(cckeb_root, tmp_path):
    train, report = load_cckeb(cckeb_root, {**CARD, "split": "train"})
    assert len(train) == 3 and report.n_skipped == 0 and train[0].case_id == "cckeb/train/0"
    with pytest.raises(DataError, match=r"no eval file under .*CCKEB_eval\.json.*prompt/CCKEB_eval\.json"):
        load_cckeb(tmp_path, CARD)
    with pytest.raises(DataError, match="CCKEB has no subsets, hops or knowledge types"):
        load_cckeb(cckeb_root, {**CARD, "hop": 1})
    root = tmp_path / "bad"
    shutil.copytree(cckeb_root, root)
    records = json.loads((root / "CCKEB_eval.json").read_text())
    del records[0]["textual_edit"]["rephrase"]
    (root / "CCKEB_eval.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"CCKEB_eval\.json: case 0 \(cckeb/eval/0\): field 'textual_edit\.rephrase': missing"):
        load_cckeb(root, CARD)
    records[0]["textual_edit"]["rephrase"], records[1]["textual_edit"]["alt"] = "r", ["South", 7]
    (root / "CCKEB_eval.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"field 'textual_edit\.alt\[1\]': expected a string"):
        load_cckeb(root, CARD)


# -- compositional reliability by hand -----------------------------------------------------------
PERSON = re.compile(r"Person \d+")


def _key(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


class ComposingModel:
    """A fake model that composes what it knows: who each picture shows, each person's nationality.
    The comp question on a picture answers the nationality of whoever the picture shows. Answers are
    words; teacher-forced token accuracy compares them word by word with the target."""

    family = "fake"

    def __init__(self, cases):
        self.shows = {}
        self.nationality = {}
        for case in cases:
            self.shows[_key(load_optional_image(case.image, case.case_id))] = case.original
            prompt, target, original = case.followup_edits[0]
            self.nationality[PERSON.search(prompt).group()] = original
        self.vocab: dict[str, int] = {}

    def answer(self, query) -> str:
        if query.image is not None and _key(query.image) in self.shows:
            shown = self.shows[_key(query.image)]
            if "Who is" in query.prompt or "Which person" in query.prompt:
                return shown
            if "person in the image" in query.prompt:
                return self.nationality.get(shown, "unknown")
        name = PERSON.search(query.prompt) if query.image is None else None
        if name and name.group() in self.nationality:
            return self.nationality[name.group()]
        return query.target  # locality questions: always the same answer

    def ids(self, text: str) -> list[int]:
        return [self.vocab.setdefault(word, len(self.vocab)) for word in text.split()]

    def teacher_forced(self, queries, k=10):
        results = []
        for query in queries:
            predicted, target = self.ids(self.answer(query)), self.ids(query.target)
            predicted = (predicted + [-1] * len(target))[: len(target)]
            hits = sum(p == t for p, t in zip(predicted, target))
            results.append(ForwardResult(hits / len(target), target, predicted, torch.zeros((3, k), dtype=torch.long), slice(1, 3)))
        return results

    def generate(self, queries, max_new_tokens=32, until=None):
        return [self.answer(q) for q in queries]


class PictureAndFactEditor(Editor):
    """Writes a visual edit into ``shows`` (a request with an image) and a textual edit into
    ``nationality`` (one without); ``visual_only`` ignores the textual edits."""

    name = "fake"

    def __init__(self, visual_only=False):
        super().__init__()
        self.visual_only, self.requests, self.undo = visual_only, [], []

    def apply(self, model, request):
        self.requests.append(request)
        if request.image is not None:
            table, key = model.shows, _key(request.image)
        else:
            table, key = model.nationality, PERSON.search(request.prompt).group()
        self.undo.append((table, key, table.get(key)))
        if request.image is not None or not self.visual_only:
            table[key] = request.target
        return EditHandle(editor=self.name, stats={"edit_images": 1})

    def restore(self, model, handle):
        table, key, value = self.undo.pop()
        table[key] = value


def test_compositional_reliability_by_hand(cckeb_root):
    cases, _ = load_cckeb(cckeb_root, CARD)
    model = ComposingModel(cases)
    editor = PictureAndFactEditor()
    scores = score_cases(model, editor, cases)
    assert model.shows and not editor.undo  # every edit undone
    # each case: the visual edit on its picture, then the textual edit, text only, with its original
    assert [(r.case_id, r.image is not None, r.original) for r in editor.requests] == [
        ("cckeb/eval/0", True, "Someone 204"), ("cckeb/eval/0#edit2", False, "French"),
        ("cckeb/eval/1", True, "Someone 205"), ("cckeb/eval/1#edit2", False, "North Land"),
        ("cckeb/eval/6", True, "Someone 210"), ("cckeb/eval/6#edit2", False, "French")]
    assert scores["comp_rel"] == scores["rel"] == scores["text_rel"] == scores["text_gen"] == 100.0
    assert scores["t_loc"] == scores["i_loc"] == scores["text_loc"] == 100.0
    # Without the textual edits the picture shows the new person, whose nationality is the old one:
    # "French" vs "Land 204": 0/2; "North Land" vs "South Land": 1/2; "French" vs "Land 210": 0/2.
    scores = score_cases(ComposingModel(cases), PictureAndFactEditor(visual_only=True), cases)
    assert scores["comp_rel"] == pytest.approx(100 * (0 + 1 / 2 + 0) / 3) and scores["text_rel"] == scores["comp_rel"]
    assert scores["rel"] == 100.0


def test_sequential_stream_scores_each_case_gap_edits_later(cckeb_root):
    """MemEIC's continual stream: with gap 1, case i is scored after case i+1's two edits."""
    cases, _ = load_cckeb(cckeb_root, CARD)
    model = ComposingModel(cases)
    editor = PictureAndFactEditor()
    score_cases(model, editor, cases, Protocol(sequential=True, sequential_gap=1))
    assert [r.case_id for r in editor.requests] == ["cckeb/eval/0", "cckeb/eval/0#edit2", "cckeb/eval/1",
                                                    "cckeb/eval/1#edit2", "cckeb/eval/6", "cckeb/eval/6#edit2"]
    assert not editor.undo


# -- the generated mini ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mini_root(tmp_path_factory) -> Path:
    return G.generate_any("cckeb", tmp_path_factory.mktemp("cckeb_mini"))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_mini_is_deterministic_and_loads(mini_root, tmp_path):
    assert _digest(G.generate_any("cckeb", tmp_path / "again")) == _digest(mini_root)
    world = W.build_world(0)
    entities = {e.name: e for e in world.all_entities()}
    cases, report = families.get("cckeb").load(mini_root, {"benchmark": "cckeb_mini", "family": "cckeb", "split": "eval"})
    assert len(cases) == 40 and report.n_skipped == 0
    records = json.loads((mini_root / "CCKEB_eval.json").read_text())
    assert any(isinstance(r["textual_edit"]["alt"], list) for r in records)  # the loader joins them
    for case, record, subject in zip(cases, records, world.entities["eval"]):
        new = entities[case.target]
        (question, city, old_city), = case.followup_edits
        probes = {p.kind: p for p in case.probes}
        assert case.original == subject.name != new.name and case.prompt == W.ENTITY_NAME_Q
        assert question == W.ENTITY_TEXT_Q["city"].format(name=new.name) and old_city == new.city != city
        # the comp question needs both edits: the picture -> the new entity -> its new city
        assert probes["comp_rel"].question == W.ENTITY_IMAGE_Q["city"] and probes["comp_rel"].answer == city != subject.city
        assert probes["comp_rel"].image == case.image
        for kind in ("t_loc", "i_loc", "text_loc"):
            assert subject.name not in probes[kind].question and new.name not in probes[kind].question
    train, _ = families.get("cckeb").load(mini_root, {"benchmark": "cckeb_mini", "family": "cckeb", "split": "train"})
    assert len(train) == 40 and not {c.original for c in train} & {c.original for c in cases}


def test_mini_knowledge_probes_ask_the_original_answers(mini_root):
    probes = G.knowledge_probes("cckeb", mini_root)
    assert {p["kind"] for p in probes} == set(KINDS)
    world = W.build_world(0)
    first = {p["kind"]: p for p in probes if p["case"] == "eval/0"}
    subject = world.entities["eval"][0]
    assert first["comp_rel"]["answer"] == subject.city and first["rel"]["answer"] == subject.name


@pytest.mark.slow
def test_cli_end_to_end_on_cckeb_mini(tmp_path):
    """mmke-eval on cckeb_mini with the shipped world model: FT-LLM writes both edits in."""
    out = tmp_path / "out"
    env = {**os.environ, "MMKE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mmke_eval.cli", "--tasks", "cckeb_mini", "--editor", "none,ft_llm", "--cases", "1",
         "--output_path", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| Task"))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == [title for _, title in families.get("cckeb").columns]
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in proc.stdout.splitlines() if line.startswith("| cckeb_mini_eval"))}
    assert set(rows) == {"none", "ft_llm"}, proc.stdout
    none, ft = (dict(zip(KINDS, map(float, rows[name][2:]))) for name in ("none", "ft_llm"))
    assert none["rel"] == none["text_rel"] == none["comp_rel"] == 0.0 and none["t_loc"] == none["text_loc"] == 100.0
    assert ft["rel"] >= 50 and ft["text_rel"] >= 50, rows["ft_llm"]


def test_task_template_lists_the_familys_metrics():
    import yaml

    from mmke_eval.lmms.taskfiles import IgnoreTagsLoader
    from mmke_eval.resources import tasks_dir

    spec = yaml.load((tasks_dir() / "cckeb" / "_default_template_yaml").read_text(), Loader=IgnoreTagsLoader)
    assert sorted(m["metric"] for m in spec["metric_list"]) == sorted(families.get("cckeb").metric_names())
    assert [name for name, _ in families.get("cckeb").columns] == KINDS


@pytest.mark.slow
def test_cli_runs_the_released_task_on_the_fixture(tiny_llava_dir, cckeb_root, tmp_path):
    """`--tasks cckeb --data PATH`: the task of the release layout, with its skips reported."""
    model_args = f"pretrained={tiny_llava_dir},device=cpu,device_map=cpu,dtype=float32"
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "mmke_eval.cli", "--tasks", "cckeb", "--model", "llava_hf", "--model_args", model_args,
         "--editor", "none", "--data", str(cckeb_root), "--output_path", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "mmke_table.json").read_text())
    (row,) = [r for r in rows if r["task"] == "cckeb_eval"]
    assert row["family"] == "cckeb" and row["t_loc"] == row["i_loc"] == row["text_loc"] == 100.0
    assert all(row[kind] is not None for kind in KINDS)
    assert ("cckeb/eval: 4 of 7 cases skipped: 1 empty alt; 1 no textual_edit; 1 no port_new; "
            "1 no comp question in port_new") in proc.stderr
