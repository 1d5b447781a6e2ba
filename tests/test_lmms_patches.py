"""Every change to lmms-eval's internals is guarded (mmke_eval/lmms/patches.py): it forwards
keywords it does not know, says when the lmms-eval version is not the one it was written for and
what does not work when its target is gone; our backends never replace one lmms-eval ships; the
processor fallback for a missing torchvision acts only while the edited model loads its backend."""

from __future__ import annotations

import logging
import types

import pytest

from mmke_eval.lmms import patches, plugin


def test_a_patch_forwards_keywords_a_later_lmms_eval_adds():
    calls = []

    class Owner:
        @staticmethod
        def target(a, *, new_keyword=None):
            calls.append((a, new_keyword))
            return "original"

    def make(original):
        def wrapped(*args, **kwargs):
            return original(*args, **kwargs)
        return wrapped

    assert patches._wrap(Owner, "target", "probe_patch", make, "nothing")
    assert patches._wrap(Owner, "target", "probe_patch", make, "nothing")  # once: not wrapped twice
    assert Owner.target(1, new_keyword=2) == "original" and calls == [(1, 2)]
    assert Owner.target.__wrapped__.__name__ == "target"


def test_a_patch_whose_target_is_gone_says_what_is_unsupported(caplog):
    owner = types.SimpleNamespace(__name__="lmms_eval.somewhere")
    with caplog.at_level(logging.WARNING, logger="mmke_eval"):
        assert not patches._wrap(owner, "gone", "gone_patch", lambda f: f, "this feature is off")
    assert patches.unsupported["gone_patch"] == "this feature is off"
    assert "has no lmms_eval.somewhere.gone: this feature is off" in caplog.text


def test_another_lmms_eval_version_is_named_once(monkeypatch, caplog):
    monkeypatch.setattr(patches, "lmms_eval_version", lambda: "9.9.9")
    monkeypatch.setattr(patches, "_warned_version", False)
    with caplog.at_level(logging.WARNING, logger="mmke_eval"):
        patches._check_version(["one_task_index"])
        patches._check_version(["one_task_index"])
    assert caplog.text.count("were written for lmms-eval 0.7.3; this is 9.9.9") == 1


def test_the_installed_patches_keep_the_signatures_they_wrap():
    import inspect

    import lmms_eval.utils
    from lmms_eval.tasks import TaskManager

    patches.install_task_loading()
    for function in (TaskManager.initialize_tasks, lmms_eval.utils.load_yaml_config):
        assert getattr(function, patches._MARK)
        assert inspect.signature(function) == inspect.signature(function.__wrapped__)


def test_our_backends_never_replace_one_lmms_eval_ships(monkeypatch, caplog):
    import lmms_eval.models as models

    monkeypatch.setattr(models, "AVAILABLE_SIMPLE_MODELS", {"llava_hf": "LlavaHf", "minigpt4": "MiniGPT4",
                                                           "edited": "mmke_eval.models.edited.EditedLMM"})
    monkeypatch.setattr(models, "AVAILABLE_CHAT_TEMPLATE_MODELS", {})
    with caplog.at_level(logging.WARNING, logger="mmke_eval"):
        names = [manifest.model_id for manifest in plugin.manifests()]
    # minigpt4 is lmms-eval's own here (a class name in its package); edited came from our plugin variable
    assert names == ["edited", "blip2_hf"]
    assert "lmms-eval ships a model named 'minigpt4': it is kept" in caplog.text


def test_the_processor_fallback_acts_only_inside_the_block(monkeypatch):
    transformers_utils = pytest.importorskip("transformers.utils")
    from transformers import ProcessorMixin

    from mmke_eval.backends import no_torchvision

    monkeypatch.setattr(transformers_utils, "is_torchvision_available", lambda: False)
    monkeypatch.setattr(no_torchvision, "_INSTALLED", False)
    strict = ProcessorMixin.__dict__["check_argument_for_proper_class"]
    with no_torchvision.image_only_processors() as needed:
        assert needed and ProcessorMixin.__dict__["check_argument_for_proper_class"] is not strict
    assert ProcessorMixin.__dict__["check_argument_for_proper_class"] is strict and not no_torchvision._INSTALLED
