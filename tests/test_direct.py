"""Scoring cases without the harness gives the columns the task gives, on a tiny LLaVA."""

import pytest
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mmke_eval import registry
from mmke_eval.adapters.llava_hf import LlavaHFAdapter
from mmke_eval.data.mmke import load_cases
from mmke_eval.direct import probe_requests, score_cases


@pytest.fixture(scope="module")
def adapter(tiny_llava_dir):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    return LlavaHFAdapter(model, AutoProcessor.from_pretrained(tiny_llava_dir))


def test_requests_follow_the_task_template_and_images(mmke_fixture_root):
    cases, _ = load_cases(mmke_fixture_root, "visual_knowledge", "eval")
    grouped = probe_requests(cases[:2])
    assert [len(g) for g in grouped] == [6, 6]
    assert [p.index for g in grouped for p in g] == list(range(12))
    t_rel = next(p for p in grouped[0] if p.doc["probe"] == "t_rel")
    assert t_rel.query.prompt == cases[0].probes[0].question and t_rel.query.image is None
    assert all(p.query.image is not None for p in grouped[0] if p.doc["probe"] in ("i_rel", "i_gen", "i_loc", "port"))


def test_unedited_model_has_full_locality_and_every_column(adapter, mmke_fixture_root):
    cases, _ = load_cases(mmke_fixture_root, "entity_level", "eval")
    scores = score_cases(adapter, registry.build_editor("none"), cases[:2])
    assert scores["t_loc"] == 100.0 and scores["i_loc"] == 100.0 and scores["t_loc_em"] == 100.0
    assert set(scores) == {
        "t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port",
        "t_rel_em", "i_rel_em", "i_gen_em", "t_loc_em", "i_loc_em", "port_em",
        "t_rel_contains", "i_rel_contains", "i_gen_contains", "port_contains",
    }
