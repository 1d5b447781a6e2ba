"""Scoring cases without the harness gives the columns the task gives, on a tiny LLaVA."""

import pytest
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mmke_eval import registry
from mmke_eval.adapters.llava_hf import LlavaHFAdapter
from mmke_tasks.mmke.loader import load_cases
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


def test_unedited_bfloat16_model_has_exactly_full_locality(tiny_llava_dir, mmke_fixture_root):
    """Pre- and post-edit locality inputs go through the same batches: no padding or shape change
    can flip a near-tied top-10 order in half precision (issue 8.3)."""
    import torch

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.bfloat16).eval()
    # CPU kernels round the same whatever the batch; GPU kernels do not (tiling and split-K follow
    # the shapes). Simulate that: the logits move with the padded batch shape, by a fixed pattern.
    pattern = torch.randn(model.config.text_config.vocab_size, generator=torch.Generator().manual_seed(0))

    def shape_dependent_rounding(module, args, output):
        rows, width = output.shape[0], output.shape[1]
        return output + (0.05 * (rows * 31 + width) % 1.0) * pattern.to(output.dtype)

    model.lm_head.register_forward_hook(shape_dependent_rounding)
    adapter = LlavaHFAdapter(model, AutoProcessor.from_pretrained(tiny_llava_dir))
    cases = [case for knowledge_type in ("entity_level", "visual_knowledge", "user_specific")
             for case in load_cases(mmke_fixture_root, knowledge_type, "eval")[0]]
    scores = score_cases(adapter, registry.build_editor("none"), cases)
    assert scores["t_loc"] == 100.0 and scores["i_loc"] == 100.0
    assert scores["t_loc_em"] == 100.0 and scores["i_loc_em"] == 100.0
