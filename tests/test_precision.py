"""FT edits on half-precision models: gradients survive float16 (loss scaling), and the results say so."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from editors.base import EditRequest
from editors.ft import FTConfig, FTEditor
from editors.precision import LossScaler, needs_loss_scaling
from mmke_eval.adapters.base import Query
from mmke_eval.adapters.llava_hf import LlavaHFAdapter


def test_small_gradients_underflow_in_float16_unless_the_loss_is_scaled():
    weight = torch.full((64,), 0.5, dtype=torch.float16, requires_grad=True)
    x = torch.linspace(1.0, 2.0, 64)

    def loss_fn():  # d loss / d weight = 1e-9 * x: below float16's smallest subnormal (6e-8)
        return (weight.float() * x * 1e-9).sum()

    expected = x * 1e-9
    _, (plain,) = LossScaler(enabled=False).gradients(loss_fn, [weight])
    assert torch.count_nonzero(plain) == 0  # every entry lost
    scaler = LossScaler(enabled=True)
    _, (scaled,) = scaler.gradients(loss_fn, [weight])
    assert scaled.dtype == torch.float32
    assert torch.allclose(scaled, expected, rtol=2e-3, atol=0)
    assert scaler.overflows == 0


def test_overflowing_scaled_gradients_halve_the_scale_and_recompute():
    weight = torch.ones(8, dtype=torch.float16, requires_grad=True)

    def loss_fn():  # gradient 10 per entry: 10 * 2**16 overflows float16 (max 65504)
        return (weight.float() * 10.0).sum()

    scaler = LossScaler(enabled=True)
    _, (grad,) = scaler.gradients(loss_fn, [weight])
    assert torch.equal(grad, torch.full((8,), 10.0))
    assert scaler.overflows >= 1 and scaler.scale < 2.0**16
    nan_weight = torch.ones(2, dtype=torch.float16, requires_grad=True)
    with pytest.raises(FloatingPointError):
        scaler.gradients(lambda: (nan_weight.float() * float("nan")).sum(), [nan_weight])


def test_loss_scaling_is_on_for_float16_only_by_default():
    assert needs_loss_scaling(torch.float16, "auto")
    assert not needs_loss_scaling(torch.bfloat16, "auto") and not needs_loss_scaling(torch.float32, "auto")
    assert needs_loss_scaling(torch.float32, "dynamic") and not needs_loss_scaling(torch.float16, "off")
    with pytest.raises(ValueError, match="loss_scaling"):
        needs_loss_scaling(torch.float16, "static")


@pytest.mark.parametrize("dtype, scaling", [(torch.float16, "dynamic"), (torch.bfloat16, "off"), (torch.float32, "off")])
def test_ft_edits_a_half_precision_model_records_its_precision_and_restores_exactly(tiny_llava_dir, dtype, scaling):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=dtype).eval()
    adapter = LlavaHFAdapter(model, AutoProcessor.from_pretrained(tiny_llava_dir))
    image = Image.new("RGB", (48, 40), (230, 30, 30))
    prompt, target = "What is shown in the image?", "A red circle on a white background"
    before = {name: t.clone() for name, t in model.state_dict().items()}
    editor = FTEditor(FTConfig(target="llm_last_mlp", lr=5e-2, steps=10))
    with editor.editing(adapter, EditRequest("c", prompt, target, image=image)) as handle:
        assert adapter.teacher_forced([Query(prompt, image, target)])[0].token_acc == 1.0
        assert all(model.get_parameter(name).dtype == dtype for name in handle.touched)  # no model-wide upcast
    assert handle.stats["compute_dtype"] == str(dtype).removeprefix("torch.")
    assert handle.stats["master_dtype"] == "float32" and handle.stats["loss_scaling"] == scaling
    precision = editor.describe()["precision"]
    assert precision["compute_dtype"] == [str(dtype).removeprefix("torch.")]
    assert all(torch.equal(t, before[name]) for name, t in model.state_dict().items())
