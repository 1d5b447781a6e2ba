import pytest

from editors.base import ConfigError
from mmke_eval import registry


def test_unknown_editor_suggests_the_closest_name():
    with pytest.raises(registry.RegistryError, match="Did you mean 'ft_llm'"):
        registry.build_editor("ft_lm")


def test_defaults_family_overrides_and_user_overrides_stack():
    assert registry.editor_defaults("ft_llm") == {"target": "llm_last_mlp", "steps": 40, "lr": 1e-4}
    assert registry.editor_defaults("ft_llm", family="blip2")["lr"] == 2e-4
    editor = registry.build_editor("ft_alignment", family="llava", overrides={"steps": "5"})
    assert editor.name == "ft_alignment"
    assert editor.config.steps == 5 and editor.config.target == "alignment" and editor.config.lr == 1e-4


def test_bad_editor_argument_names_the_key():
    with pytest.raises(ConfigError, match="stepz"):
        registry.build_editor("ft_llm", overrides={"stepz": 3})
    with pytest.raises(ConfigError, match="steps='many'"):
        registry.build_editor("ft_llm", overrides={"steps": "many"})


def test_unknown_adapter_is_reported():
    with pytest.raises(registry.RegistryError, match="unknown adapter 'qwen9'"):
        registry.adapter_class("qwen9")
