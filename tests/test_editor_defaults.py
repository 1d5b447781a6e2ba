"""Editor defaults per benchmark family and model family (issue 23, item 1): the benchmark's own
reference hparams over the model family's values over the editor's defaults; --editor_args over all."""

from types import SimpleNamespace

import pytest

from mmke_eval import registry


def test_vlkeb_on_llava_uses_vlkeb_hparams():
    resolved = registry.resolve_editor_defaults("ft_llm", "llava", "vlkeb")
    assert resolved["steps"] == (10, "benchmarks.vlkeb.editors.ft_llm.llava")
    assert resolved["lr"] == (1.0e-4, "editors.ft_llm.defaults")
    assert registry.editor_defaults("ft_alignment", "llava", "vlkeb")["steps"] == 10
    assert registry.resolve_editor_defaults("ike", "llava", "vlkeb")["k"] == (32, "benchmarks.vlkeb.editors.ike.llava")


def test_vlkeb_on_blip2_uses_vlkeb_steps_and_blip2_rate():
    resolved = registry.resolve_editor_defaults("ft_llm", "blip2", "vlkeb")
    assert resolved["steps"] == (15, "benchmarks.vlkeb.editors.ft_llm.blip2")
    assert resolved["lr"] == (2.0e-4, "editors.ft_llm.families.blip2")
    assert registry.editor_defaults("mend", "blip2", "vlkeb")["max_steps"] == 50000


def test_mmedit_on_blip2_uses_easyedit_ike_k():
    assert registry.resolve_editor_defaults("ike", "blip2", "mmedit")["k"] == (32, "benchmarks.mmedit.editors.ike.blip2")
    # EasyEdit has no multimodal FT hparams: MMKE-Bench's apply
    assert registry.resolve_editor_defaults("ft_llm", "blip2", "mmedit")["steps"] == (40, "editors.ft_llm.defaults")


def test_mmke_on_llava_keeps_mmke_bench_hparams():
    assert registry.resolve_editor_defaults("ft_llm", "llava", "mmke")["steps"] == (40, "editors.ft_llm.defaults")
    assert registry.resolve_editor_defaults("ft_alignment", "llava", "mmke")["steps"] == (30, "editors.ft_alignment.defaults")
    assert registry.resolve_editor_defaults("ike", "llava", "mmke")["k"] == (25, "editors.ike.defaults")
    assert registry.editor_defaults("mend", "llava", "mmke")["max_steps"] == 30000


@pytest.mark.parametrize("benchmark", ["mmke", "vlkeb", "mmedit", "mike"])
def test_the_world_model_keeps_its_values_on_every_mini(benchmark):
    """No benchmark names the world model: the numbers of the generated minis do not move."""
    assert registry.editor_defaults("ft_llm", "mmke_mini_world", benchmark) == registry.editor_defaults("ft_llm", "mmke_mini_world")
    assert registry.editor_defaults("ike", "mmke_mini_world", benchmark)["k"] == 25
    assert registry.editor_defaults("mend", "mmke_mini_world", benchmark)["max_steps"] == 2000


def test_build_editor_records_where_each_value_came_from():
    editor = registry.build_editor("ft_llm", family="llava", overrides={"lr": "3e-4"}, benchmark="vlkeb")
    assert editor.config.steps == 10 and editor.config.lr == 3e-4
    source = editor.describe()["defaults_source"]
    assert source["benchmark"] == "vlkeb" and source["model_family"] == "llava"
    assert source["values"]["steps"] == "benchmarks.vlkeb.editors.ft_llm.llava"
    assert source["values"]["lr"] == "editor_args"
    assert source["values"]["target"] == "editors.ft_llm.defaults"


def test_a_run_resolves_each_task_for_its_own_benchmark():
    """--tasks mmke_entity,vlkeb: each task is edited with its own family's values."""
    from mmke_eval.lmms.model import EditedLMM

    lm = EditedLMM.__new__(EditedLMM)
    lm.adapter = SimpleNamespace(family="llava")
    lm.editor = registry.build_editor("ft_llm", family="llava")
    lm._editor_request = ("ft_llm", {})
    lm.editors_by_benchmark, lm.defaults_by_benchmark = {}, {}
    assert lm.editor_for("mmke").config.steps == 40
    assert lm.editor_for("mmke") is lm.editor  # the same values: the loaded editor is kept
    assert lm.editor_for("vlkeb").config.steps == 10
    assert lm.defaults_by_benchmark["vlkeb"]["values"]["steps"] == "benchmarks.vlkeb.editors.ft_llm.llava"


def test_an_unknown_editor_in_a_benchmark_declaration_is_named(monkeypatch):
    from mmke_eval import families  # the benchmark's declaration: mmke_tasks/vlkeb/family.yaml

    monkeypatch.setitem(families.declarations(), "vlkeb", {**families.declarations()["vlkeb"], "editors": {"ft_lmm": {"llava": {"steps": 1}}}})
    families.get.cache_clear()
    try:
        with pytest.raises(registry.RegistryError, match="unknown editor 'ft_lmm'"):
            registry.resolve_editor_defaults("ft_llm", "llava", "vlkeb")
    finally:
        families.get.cache_clear()


def test_list_shows_the_benchmark_values_per_model(capsys):
    from mmke_eval import cli

    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    vlkeb = out[out.index("  vlkeb"):]
    assert "ft_llm on llava: steps=10" in vlkeb and "ft_llm on blip2: steps=15" in vlkeb
    assert "ike on blip2: k=32" in out[out.index("  mmedit"):]
