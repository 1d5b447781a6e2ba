"""Editing works on the shipped world model: each editor moves what it should and keeps what it should.

Runs the registry's editors with the world model's own defaults (family ``mmke_mini_world``) on the
first CASES_PER_TYPE eval cases of each knowledge type of the seed-0 benchmark, scored as the task
scores them (``mmke_eval.direct.score_cases``). The thresholds sit well inside the numbers measured
on these cases; docs/mmke-mini.md ("Editors on the world model") gives the run that measured them.
"""

from __future__ import annotations

import json

import pytest
import torch

from mmke_eval import registry
from mmke_eval.adapters.prefix_cache import PrefixCache
from mmke_tasks.mmke.loader import load_cases
from mmke_eval.data.schema import ProbeDoc
from mmke_eval.direct import score_cases
from mmke_eval.engine.evaluator import CaseEvaluator
from mmke_eval.protocol import Protocol

CASES_PER_TYPE = 8
TYPES = ("entity_level", "visual_knowledge", "user_specific")


@pytest.fixture(scope="module")
def adapter():
    from mmke_eval.testing.world import world_adapter

    return world_adapter()


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    from mmke_eval.mini.generate import generate

    root = generate(tmp_path_factory.mktemp("mini"), seed=0)  # the world the model was trained on
    return [case for kt in TYPES for case in load_cases(root, kt, "eval")[0][:CASES_PER_TYPE]]


def run(adapter, cases, editor_name: str, **protocol) -> dict[str, float]:
    editor = registry.build_editor(editor_name, family=adapter.family)
    return score_cases(adapter, editor, cases, Protocol(**protocol))


@pytest.fixture(scope="module")
def base(adapter, cases):
    return run(adapter, cases, "none")


@pytest.fixture(scope="module")
def ft_llm(adapter, cases):
    return run(adapter, cases, "ft_llm")


def test_world_model_gets_its_own_editor_defaults(adapter):
    assert adapter.family == "mmke_mini_world"
    assert registry.build_editor("ft_llm", family=adapter.family).config.lr == 3e-4
    assert registry.build_editor("ft_alignment", family=adapter.family).config.lr == 3e-3


def test_base_model_holds_the_original_knowledge_not_the_edit(base):
    # It answers the original facts (tests/test_world_model.py), so the edited answers score ~0.
    assert base["t_rel"] <= 10 and base["i_rel"] <= 10 and base["i_gen"] <= 10
    assert base["t_loc"] == 100 and base["i_loc"] == 100


def test_ft_llm_writes_the_edit_in(base, ft_llm):
    assert ft_llm["t_rel"] >= base["t_rel"] + 40, ft_llm
    assert ft_llm["i_rel"] >= base["i_rel"] + 40, ft_llm
    assert ft_llm["t_loc"] < 100  # the last MLP serves unrelated text too


def test_ike_edits_without_changing_a_weight(adapter, cases, base):
    before = {name: p.detach().clone() for name, p in adapter.model.named_parameters()}
    editor = registry.build_editor("ike", family=adapter.family)
    handle = editor.apply(adapter, CaseEvaluator(adapter, editor, Protocol()).edit_request(ProbeDoc.rows(cases[0])[0]))
    try:
        assert all(torch.equal(before[name], p) for name, p in adapter.model.named_parameters())
    finally:
        editor.restore(adapter, handle)
    scores = run(adapter, cases, "ike")
    assert scores["i_rel"] >= base["i_rel"] + 40, scores
    assert scores["i_gen"] >= base["i_gen"] + 40, scores
    assert all(torch.equal(before[name], p) for name, p in adapter.model.named_parameters())


def test_ft_alignment_edits_images_and_keeps_text_locality(adapter, cases, base):
    scores = run(adapter, cases, "ft_alignment")
    assert scores["t_loc"] == 100  # text-only inputs never pass through the projector
    assert scores["t_rel"] == base["t_rel"]  # nor do text-only reliability questions
    assert scores["i_rel"] >= base["i_rel"] + 30, scores


def test_sequential_edits_without_restore_lower_locality(adapter, cases, ft_llm):
    sequential = run(adapter, cases, "ft_llm", sequential=True)
    assert sequential["t_loc"] <= ft_llm["t_loc"] - 5, (sequential, ft_llm)
    assert sequential["i_loc"] <= ft_llm["i_loc"] - 15, (sequential, ft_llm)


def test_ike_answers_are_the_same_with_and_without_prefix_reuse(adapter, cases, monkeypatch):
    # The evaluator computes IKE's ~2k-token prefix once per image of a case; every response
    # (score, generation, top-k locality) must be the plain path's.
    from mmke_eval.direct import probe_requests

    grouped = probe_requests(cases[::CASES_PER_TYPE])  # one case per knowledge type
    editor = registry.build_editor("ike", family=adapter.family)

    def answers():
        results = [None] * sum(len(g) for g in grouped)
        CaseEvaluator(adapter, editor, Protocol()).answer_cases(grouped, results, progress=False)
        return [{**r, "edit": {k: v for k, v in r["edit"].items() if k != "seconds"}} for r in map(json.loads, results)]

    made = []
    add = PrefixCache.add
    monkeypatch.setattr(PrefixCache, "add", lambda self, entry: made.append(len(entry.ids)) or add(self, entry))
    reused = answers()
    rows = sum(len(g) for g in grouped) * 2  # a teacher-forced pass and a generation per probe
    assert 0 < len(made) <= rows / 2 and min(made) > 1000, made  # the demonstrations, computed far fewer times than used
    monkeypatch.setattr(adapter, "reuses_prefixes", False)
    assert answers() == reused
