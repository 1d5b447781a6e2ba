"""Strict option values: booleans, numbers and choices we own are parsed, never guessed."""

import pytest

from editors.base import ConfigError
from editors.ft import FTConfig
from mmke_eval.options import OptionError, parse_bool, parse_choice, parse_float, parse_int
from mmke_eval.protocol import check_model_args, refuse_misspelt_options


@pytest.mark.parametrize("text", ["true", "TRUE", "1", "yes", "Yes", True, 1])
def test_true_words(text):
    assert parse_bool("sequential", text) is True


@pytest.mark.parametrize("text", ["false", "False", "0", "no", "NO", False, 0])
def test_false_words(text):
    assert parse_bool("sequential", text) is False


@pytest.mark.parametrize("text", ["off", "on", "maybe", "", "2", 2, None, "nope"])
def test_anything_else_is_not_a_boolean_and_the_message_names_the_option(text):
    with pytest.raises(OptionError, match="option generate=.*expected a boolean"):
        parse_bool("generate", text)


def test_numbers():
    assert parse_int("k", "12") == 12 and parse_int("k", 12) == 12 and parse_int("k", -2.0) == -2
    for bad in ("1.5", 1.5, "ten", True, None):
        with pytest.raises(OptionError, match="option k=.*whole number"):
            parse_int("k", bad)
    with pytest.raises(OptionError, match="option k=-1: must be >= 0"):
        parse_int("k", "-1", minimum=0)
    assert parse_float("lr", "1e-4") == 1e-4
    with pytest.raises(OptionError, match="finite"):
        parse_float("lr", "nan")
    assert parse_choice("loc_span", "answer", ("auto", "answer")) == "answer"
    with pytest.raises(OptionError, match="expected one of auto, answer"):
        parse_choice("loc_span", "prompt", ("auto", "answer"))


def test_editor_arguments_use_the_same_rules():
    assert FTConfig.from_dict({"steps": "5", "lr": "0.01"}, editor="ft_llm").steps == 5
    with pytest.raises(ConfigError, match="argument steps='5.5'"):
        FTConfig.from_dict({"steps": "5.5"}, editor="ft_llm")


def test_a_key_close_to_a_protocol_option_is_a_typo_not_a_backend_argument():
    with pytest.raises(OptionError, match="did you mean 'sequential_gap'"):
        refuse_misspelt_options({"sequential_gapp": "3"})
    refuse_misspelt_options({"pretrained": "x", "device_map": "cpu", "attn_implementation": "eager"})  # the backend's own


def test_the_cli_checks_owned_options_before_loading_anything(tmp_path):
    protocol = check_model_args({"sequential": "yes", "sequential_gap": "3", "pretrained": str(tmp_path), "device": "cpu"})
    assert protocol.sequential is True and protocol.sequential_gap == 3
    with pytest.raises(OptionError, match="option generate='off'"):
        check_model_args({"generate": "off"})
    with pytest.raises(FileNotFoundError, match="pretrained=/no/such/model: no such folder"):
        check_model_args({"pretrained": "/no/such/model"})
    check_model_args({"editor.steps": "5", "adapter.prompt_format": "chat", "journal": "x.jsonl"})  # owned elsewhere


def test_an_unknown_editor_argument_gets_the_close_name():
    from mmke_eval import registry

    with pytest.raises(ConfigError, match=r"editor 'ft_llm': unknown argument\(s\) \['step'\]; did you mean 'steps'\?"):
        registry.build_editor("ft_llm", overrides={"step": "3"})


@pytest.mark.parametrize("editor, key, value, message", [
    ("ft_llm", "steps", "-5", "editor 'ft_llm': steps must be >= 0"),  # FT's class says 'ft'
    ("ft_alignment", "lr", "0", "editor 'ft_alignment': lr must be > 0"),
    ("mend", "max_steps", "0", "editor 'mend': max_steps must be >= 1"),  # a message that named no editor
])
def test_a_bad_editor_value_names_the_editor_as_the_user_wrote_it(editor, key, value, message):
    from mmke_eval import registry

    with pytest.raises(ConfigError) as caught:
        registry.build_editor(editor, overrides={key: value})
    assert str(caught.value).startswith(message)
