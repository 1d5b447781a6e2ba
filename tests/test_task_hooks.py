"""The task hooks (mmke_tasks/hooks.py), loaded the way lmms-eval loads them: `!function mmke_tasks.hooks.x`."""

import importlib.util
import json

import pytest



@pytest.fixture(scope="module")
def hooks():
    return importlib.import_module("mmke_tasks.hooks")


DOC = {"case_id": "mmke/entity_level/eval/0", "family": "mmke", "probe": "t_rel", "answer": "Rome", "question": "Where does Bolo live?", "image": ""}


def test_scored_response_gives_the_teacher_forced_score_and_generation_columns(hooks):
    response = json.dumps({"mmke_probe": 1, "probe": "t_rel", "score": 0.5, "generated": "the Rome."})
    scores = hooks.process_results(DOC, [response])
    assert scores == {
        "t_rel": {"case": DOC["case_id"], "score": 0.5},
        "t_rel_em": {"case": DOC["case_id"], "score": 1.0},
        "t_rel_contains": {"case": DOC["case_id"], "score": 1.0},
    }


def test_locality_generation_column_compares_with_the_pre_edit_generation(hooks):
    doc = {**DOC, "probe": "t_loc", "answer": "1969"}
    response = json.dumps({"mmke_probe": 1, "probe": "t_loc", "score": 0.9, "generated": "1970", "pre_generated": "1969"})
    scores = hooks.process_results(doc, [response])
    assert scores == {"t_loc": {"case": doc["case_id"], "score": 0.9}, "t_loc_em": {"case": doc["case_id"], "score": 0.0}}


def test_plain_model_output_is_scored_by_generation_only(hooks):
    scores = hooks.process_results(DOC, ["I think it is Paris"])
    assert set(scores) == {"t_rel_em", "t_rel_contains"}
    assert scores["t_rel_contains"]["score"] == 0.0
    # a JSON-looking answer of a plain model is not mistaken for a scored response
    assert set(hooks.process_results(DOC, ['{"answer": "Rome"}'])) == {"t_rel_em", "t_rel_contains"}


def test_prompt_comes_from_the_named_template(hooks):
    assert hooks.doc_to_text(DOC, {"prompt_template": "mmke/probe.jinja"}) == "Where does Bolo live?"
    assert hooks.doc_to_text(DOC, {"prompt_template": "mmke/short_answer.jinja"}) == "Question: Where does Bolo live? Short answer:"
    with pytest.raises(FileNotFoundError, match="nope.jinja"):
        hooks.doc_to_text(DOC, {"prompt_template": "mmke/nope.jinja"})


def test_missing_image_names_case_and_file(hooks, tmp_path):
    from mmke_eval.data.schema import DataError

    with pytest.raises(DataError, match=r"mmke/entity_level/eval/0.*missing\.png"):
        hooks.doc_to_visual({**DOC, "image": str(tmp_path / "missing.png")})


def test_case_mean_aggregation_is_in_percent(hooks):
    assert hooks.case_mean([{"case": "a", "score": 1.0}, {"case": "b", "score": 0.0}]) == 50.0
