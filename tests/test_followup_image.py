"""VLKEB's edit twice (issue 23, item 6): the reference's second edit has no image for FT-LLM, MEND,
SERAC and KE; only FT-Alignment's has one. Declared by each editor; ``followup_image`` overrides."""

import json

import pytest
from PIL import Image

from mmke_eval import registry
from mmke_eval.protocol import Protocol, protocol_from_options
from mmke_eval.engine.evaluator import CaseEvaluator

REFERENCE = {"ft_llm": None, "ft_alignment": "edit", "mend": None, "serac": None, "ke": None, "serac_ref": None}


def _doc(tmp_path):
    image = tmp_path / "edit.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    return {"case_id": "c1", "family": "vlkeb", "edit_prompt": "Who is this?", "edit_target": "Ada", "edit_original": "Bo",
            "edit_image": str(image), "rephrase_prompt": "Name this?", "rephrase_image": "", "knowledge_type": "",
            "train_file": "", "edit_extra_images": "", "followup_edits": json.dumps([["Who founded it?", "Romulus"]])}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_the_second_edit_has_the_image_only_where_the_reference_gives_one(name, tmp_path):
    editor = registry.build_editor(name, family="llava")
    evaluator = CaseEvaluator(None, editor, Protocol())
    first, second = evaluator.edit_requests(_doc(tmp_path))
    assert first.image is not None  # the case's own edit always sees its image
    assert second.prompt == "Who founded it?" and second.target == "Romulus"
    assert (second.image is not None) == (REFERENCE[name] == "edit")
    assert evaluator.followup_image == (REFERENCE[name] or "none")


@pytest.mark.parametrize("choice, has_image", [("edit", True), ("none", False)])
def test_followup_image_option_overrides_every_editor(choice, has_image, tmp_path):
    for name in ("ft_llm", "ft_alignment", "mend"):
        evaluator = CaseEvaluator(None, registry.build_editor(name, family="llava"), protocol_from_options(followup_image=choice))
        second = evaluator.edit_requests(_doc(tmp_path))[1]
        assert (second.image is not None) == has_image and evaluator.followup_image == choice
    with pytest.raises(Exception, match="followup_image"):
        protocol_from_options(followup_image="rephrase")
