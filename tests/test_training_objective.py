"""Learned editors train on what the reference trains on (issue 23, item 4): by default the edit loss
sees the reference trainers' ``edit_outer`` (the rephrased question on the edit image) and
``edit_outer_image`` (the edit question on the rephrase image), never the scored T-Rel/I-Rel probes;
``train_objective=probes`` keeps ours (every scored non-locality probe)."""

import pytest

from mmke_eval import registry
from mmke_tasks.vlkeb.loader import load_vlkeb
from mmke_tasks.mmke.loader import load_cases
from mmke_eval.templates import render
from mmke_tasks.vlkeb.fixture import write_vlkeb_fixture
from mmke_eval.training.data import training_example

TEMPLATE = "mmke/probe.jinja"


def _same_image(a, b):
    return a is not None and b is not None and a.tobytes() == b.tobytes()


def test_reference_objective_on_vlkeb_is_exactly_the_t_gen_and_i_gen_inputs(tmp_path):
    case = load_vlkeb(write_vlkeb_fixture(tmp_path), {"benchmark": "vlkeb", "split": "eval"})[0][0]
    example = training_example(case, TEMPLATE)
    assert example.in_scope_kinds == ["edit_outer", "edit_outer_image"]
    outer, outer_image = example.in_scope
    # edit_outer: the rephrased question on the edit image; edit_outer_image: the edit question on the rephrase image
    assert outer.prompt == render(TEMPLATE, question=case.rephrase_prompt) and outer.target == case.target
    assert outer_image.prompt == render(TEMPLATE, question=case.prompt) and outer_image.target == case.target
    assert _same_image(outer.image, example.edit.image) and _same_image(outer_image.image, example.edit.rephrase_image)
    # ... which are VLKEB's T-Gen and I-Gen probes; Rel (the edit itself) is not trained on
    probes = training_example(case, TEMPLATE, objective="probes")
    assert probes.in_scope_kinds == ["rel", "t_gen", "i_gen"]
    assert [q.prompt for q in probes.in_scope[1:]] == [q.prompt for q in example.in_scope]
    assert len(example.locality) == len(probes.locality) == 2


def test_reference_objective_on_mmke_never_trains_on_t_rel_or_i_rel(mmke_fixture_root):
    case = load_cases(mmke_fixture_root, "entity_level", "train")[0][0]
    example = training_example(case, TEMPLATE)
    assert example.in_scope_kinds == ["edit_outer", "edit_outer_image"]
    assert [q.prompt for q in example.in_scope] == [render(TEMPLATE, question=q) for q in (case.rephrase_prompt, case.prompt)]
    ours = training_example(case, TEMPLATE, objective="probes")
    assert set(ours.in_scope_kinds) == {"t_rel", "i_rel", "i_gen"}


@pytest.mark.parametrize("name", ["mend", "serac", "ke"])
def test_the_reference_objective_is_the_default_for_real_models(name):
    assert registry.build_editor(name, family="llava").config.train_objective == "reference"
    assert registry.build_editor(name, family="llava", overrides={"train_objective": "probes"}).config.train_objective == "probes"
    with pytest.raises(ValueError, match="train_objective"):
        registry.build_editor(name, family="llava", overrides={"train_objective": "all"})


def test_the_shipped_checkpoints_load_and_say_what_they_were_trained_on():
    """Their editor.json predates the option: they were trained on every scored probe."""
    from mmke_eval.testing.world import world_adapter

    adapter = world_adapter()
    for name in ("mend", "ke", "serac"):
        editor = registry.build_editor(name, family=adapter.family)
        editor.ensure_ready(adapter)
        assert editor.describe()["checkpoint_info"]["train_objective"].startswith("probes")
