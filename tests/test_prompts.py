"""Prompts per reference code path (mmke_eval/prompts.py): MMEdit's trainer and editor paths, and
the lmms-eval hooks and the direct scorer building the same prompt for every probe kind."""

from __future__ import annotations

import importlib

import pytest

from mmke_eval import prompts
from mmke_tasks.mmedit.loader import load_mmedit
from mmke_eval.data.schema import ProbeDoc
from mmke_tasks.mmedit.fixture import write_mmedit_fixture

KINDS = ("rel", "t_gen", "i_gen", "t_loc", "i_loc")


@pytest.fixture(scope="module")
def mmedit_cases(tmp_path_factory):
    root = write_mmedit_fixture(tmp_path_factory.mktemp("mmedit"))
    return {subset: load_mmedit(root, {"benchmark": "mmedit", "subset": subset, "split": "eval"})[0]
            for subset in ("vqa", "caption")}


def doc(subset: str, kind: str, question: str = "What sport is this?") -> dict:
    return {"family": "mmedit", "knowledge_type": subset, "probe": kind, "question": question}


def test_mmedit_prompt_per_path_by_hand():
    wrapped, raw = "Question: What sport is this? Short answer:", "What sport is this?"
    # EasyEdit's MMEdit-era VQADataset.collate_fn (MultimodalTrainer: MEND, SERAC): the edit,
    # rephrase and OK-VQA questions wrapped; the NQ question as is.
    assert {k: prompts.probe_prompt(doc("vqa", k), path="trainer") for k in KINDS} == \
        {"rel": wrapped, "t_gen": wrapped, "i_gen": wrapped, "t_loc": raw, "i_loc": wrapped}
    # CaptionDataset.collate_fn: only the OK-VQA question.
    assert {k: prompts.probe_prompt(doc("caption", k), path="trainer") for k in KINDS} == \
        {"rel": raw, "t_gen": raw, "i_gen": raw, "t_loc": raw, "i_loc": wrapped}
    # MultimodalEditor (IKE): every question as the record holds it, m_loc_q included.
    for subset in ("vqa", "caption"):
        assert {k: prompts.probe_prompt(doc(subset, k), path="editor") for k in KINDS} == dict.fromkeys(KINDS, raw)
    # The edit itself (edit_inner / edit_outer) follows the path too.
    assert prompts.edit_prompts("mmedit", "vqa", "How many?", "What number?", "trainer") == \
        ("Question: How many? Short answer:", "Question: What number? Short answer:")
    assert prompts.edit_prompts("mmedit", "vqa", "How many?", "What number?", "editor") == ("How many?", "What number?")
    assert prompts.edit_prompts("mmedit", "caption", "a photo of", "describe", "trainer") == ("a photo of", "describe")
    # Families with one way to prompt are untouched by the path.
    mmke = {"family": "mmke", "knowledge_type": "entity_level", "probe": "t_rel", "question": "Where?"}
    assert prompts.probe_prompt(mmke, path="trainer") == prompts.probe_prompt(mmke, path="editor") == "Where?"
    assert prompts.edit_prompts("vlkeb", "eval", "Who?", "Which?", "trainer") == ("Who?", "Which?")


def test_the_path_defaults_to_the_editors_reference_and_the_option_forces_one():
    from editors.base import NoEdit
    from editors.ft import FTEditor
    from editors.ike import IKEEditor
    from mmke_eval.protocol import OptionError, protocol_from_options

    assert prompts.resolve("auto", IKEEditor()) == "editor"  # EasyEdit scores IKE through MultimodalEditor
    assert prompts.resolve("auto", FTEditor()) == prompts.resolve("auto", NoEdit()) == "trainer"
    assert prompts.resolve("editor", FTEditor()) == "editor" and prompts.resolve("trainer", IKEEditor()) == "trainer"
    assert protocol_from_options(prompt_path="editor").prompt_path == "editor"
    assert protocol_from_options().prompt_path == "auto"
    with pytest.raises(OptionError, match="prompt_path"):
        protocol_from_options(prompt_path="hf")


@pytest.mark.parametrize("path", ["trainer", "editor"])
def test_hooks_and_direct_scorer_build_the_same_prompt_for_every_mmedit_probe(mmedit_cases, path):
    """The two places that build prompts: lmms-eval's doc_to_text (on the path the `edited` model
    set) and mmke_eval.direct (on the path it is given)."""
    from mmke_eval import direct

    from mmke_eval.run_context import RunContext, activated

    hooks = importlib.import_module("mmke_tasks.hooks")
    seen = set()
    for subset, cases in mmedit_cases.items():
        for probes in direct.probe_requests(cases, path=path):
            for probe in probes:
                with activated(RunContext(prompt_path=path)):  # as the `edited` model of a run sets it
                    assert probe.query.prompt == hooks.doc_to_text(probe.doc, {"prompt_template": "mmke/probe.jinja"}), (path, probe.doc)
                assert probe.query.prompt == prompts.probe_prompt(probe.doc, path=path)
                seen.add((subset, probe.doc["probe"]))
    assert seen == {(subset, kind) for subset in ("vqa", "caption") for kind in KINDS}


def test_the_edit_request_and_the_record_follow_the_resolved_path(mmedit_cases):
    from editors.base import NoEdit
    from editors.ike import IKEEditor
    from mmke_eval.protocol import Protocol
    from mmke_eval.engine.evaluator import CaseEvaluator

    case = mmedit_cases["vqa"][0]
    first = ProbeDoc.rows(case)[0]
    trainer = CaseEvaluator(None, NoEdit(), Protocol())
    assert trainer.prompt_path == "trainer"
    request = trainer.edit_request(first)
    assert (request.prompt, request.rephrase_prompt) == (f"Question: {case.prompt} Short answer:",
                                                         f"Question: {case.rephrase_prompt} Short answer:")
    editor = CaseEvaluator(None, IKEEditor(), Protocol())
    assert editor.prompt_path == "editor" and editor.edit_request(first).prompt == case.prompt
    assert CaseEvaluator(None, IKEEditor(), Protocol(prompt_path="trainer")).edit_request(first).prompt == request.prompt


def test_the_edited_model_sets_the_path_lmms_eval_renders_with_and_records_it(tiny_llava_dir):
    """lmms-eval builds the model before it renders the tasks' prompts (doc_to_text)."""
    from mmke_eval.lmms.model import EditedLMM

    hooks = importlib.import_module("mmke_tasks.hooks")
    question = doc("vqa", "rel")
    for option, editor, expected in (("auto", "ike", "editor"), ("auto", "none", "trainer"), ("editor", "none", "editor")):
        lm = EditedLMM(base="llava_hf", editor=editor, pretrained=str(tiny_llava_dir), device="cpu", device_map="cpu",
                       prompt_path=option)
        record = lm.describe()["protocol"]
        assert (record["prompt_path"], record["prompt_path_resolved"]) == (option, expected)
        assert hooks.doc_to_text(question, {}) == prompts.probe_prompt(question, path=expected)
    assert hooks.doc_to_text(question, {}) == "What sport is this?"  # the last model: the editor path


FIXTURES = {"mmke": "write_mmke_fixture", "vlkeb": "write_vlkeb_fixture", "mmedit": "write_mmedit_fixture",
            "mike": "write_mike_fixture"}


@pytest.mark.parametrize("path", ["trainer", "editor"])
def test_hooks_and_direct_scorer_build_the_same_prompt_for_every_probe_kind_of_every_family(tmp_path_factory, path):
    """Every task of every family (its fixture in the release layout, loaded through the task's own
    source card): lmms-eval's doc_to_text on the run's prompt path, the direct scorer and the one
    prompt builder give the same text for every probe kind the family declares."""
    import json

    from mmke_eval import direct, families
    from mmke_eval.data.source import load_probe_docs
    from mmke_eval.data.schema import EditCase
    from mmke_eval.resources import tasks_dir
    from mmke_eval.run_context import RunContext, activated

    hooks = importlib.import_module("mmke_tasks.hooks")
    seen: dict[str, set] = {}
    for family, writer in FIXTURES.items():
        fixture = importlib.import_module(f"mmke_tasks.{family}.fixture")
        root = getattr(fixture, writer)(tmp_path_factory.mktemp(family))
        for card_file in sorted((tasks_dir() / family / "sources").glob("*.json")):
            card = json.loads(card_file.read_text())
            with activated(RunContext(data_root=root, prompt_path=path)):  # as a run with --data sets it
                docs = load_probe_docs(card)
                cases, _ = families.of_card(card).load(root, card)
                for probes in direct.probe_requests(cases, path=path):
                    for probe in probes:
                        hooked = hooks.doc_to_text(probe.doc, {"prompt_template": "mmke/probe.jinja"})
                        assert probe.query.prompt == hooked == prompts.probe_prompt(probe.doc, path=path), (card, probe.doc)
                        seen.setdefault(family, set()).add(probe.doc["probe"])
            assert {d["probe"] for d in docs} <= seen[family]
            assert isinstance(cases[0], EditCase)
    for family in FIXTURES:
        assert seen[family] == {kind.name for kind in families.get(family).probes}, family
