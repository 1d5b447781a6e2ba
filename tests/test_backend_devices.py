"""Our backends (mmke_eval/backends/) take the same device arguments as lmms-eval's: device and/or
device_map (issue 23: blip2_hf refused device_map while llava_hf needs it)."""

import pytest
import torch

from mmke_eval.backends.base import resolve_device
from mmke_eval.options import OptionError
from mmke_eval.testing.tiny_vlms import save_tiny


def test_blip2_hf_accepts_device_map(tmp_path):
    from mmke_eval.backends.blip2_hf import Blip2HF

    folder = save_tiny("blip2", tmp_path / "blip2")
    backend = Blip2HF(pretrained=str(folder), device_map="cpu", dtype="float32")
    assert backend.device == torch.device("cpu")
    assert next(backend.model.parameters()).device == torch.device("cpu")


def test_minigpt4_accepts_device_map(tmp_path):
    from mmke_eval.backends.minigpt4 import MiniGPT4

    folder = save_tiny("minigpt4", tmp_path / "minigpt4")
    backend = MiniGPT4(pretrained=str(folder), device_map="cpu", dtype="float32")
    assert backend.device == torch.device("cpu")


def test_device_and_device_map_resolve_to_one_device():
    assert resolve_device("cpu", None, "b") == torch.device("cpu")
    assert resolve_device(None, "cpu", "b") == torch.device("cpu")
    assert resolve_device("cpu", "cpu", "b") == torch.device("cpu")
    assert resolve_device(None, "auto", "b") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None, None, "b") == torch.device("cuda")  # the default, as before
    with pytest.raises(OptionError, match="disagree"):
        resolve_device("cpu", "cuda", "b")
    with pytest.raises(OptionError, match="one device"):
        resolve_device(None, "balanced", "b")
