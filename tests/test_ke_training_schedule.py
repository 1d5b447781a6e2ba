"""KE trains as KE's own trainer does by default (issue 23, item 4): centered RMSprop, a linear
warm-up over 1k updates then a linear decay to 0 at 20k, and a learned multiplier alpha_lp from 1."""

import pytest
import torch

from mmke_eval import registry


@pytest.fixture(scope="module")
def adapter():
    from mmke_eval.testing.world import world_adapter

    return world_adapter()


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()`")  # the schedule alone, no updates
def test_ke_reference_optimizer_schedule_and_multiplier(adapter):
    # the world model's own family pins the old training (its shipped checkpoint); a real model's default is KE's
    editor = registry.build_editor("ke", family="llava", overrides={"checkpoint": ""})
    assert (editor.config.optimizer, editor.config.warmup_steps, editor.config.decay_steps,
            editor.config.lagrange_update, editor.config.max_steps) == ("rmsprop_centered", 1000, 20000, "learned", 20000)
    editor.ensure_ready(adapter, for_training=True)
    assert isinstance(editor.learned.lagrange, torch.nn.Parameter) and float(editor.learned.lagrange.detach()) == 1.0
    optimizer, scheduler = editor.build_optimizer()
    assert isinstance(optimizer, torch.optim.RMSprop) and optimizer.param_groups[0]["centered"]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([3e-4 / 1000, 0.1 / 1000])  # warm-up step 1 of 1000
    factors = {}
    for step in range(1, 20001):
        scheduler.step()
        if step in (999, 1000, 10500, 20000):
            factors[step] = optimizer.param_groups[0]["lr"] / 3e-4
    assert factors == pytest.approx({999: 1.0, 1000: 1.0, 10500: 0.5, 20000: 0.0})


def test_ke_learned_multiplier_rises_while_the_constraint_is_violated(adapter):
    editor = registry.build_editor("ke", family="llava", overrides={"checkpoint": "", "warmup_steps": "0", "decay_steps": "0",
                                                                   "margin": "1e-9"})
    editor.ensure_ready(adapter, for_training=True)
    optimizer, _ = editor.build_optimizer()
    lagrange = editor.learned.lagrange
    (lagrange * (torch.tensor(2.0) - 1e-9)).backward()  # the constraint term with the update norm above the margin
    optimizer.step()
    editor.after_step()
    assert float(lagrange.detach()) > 1.0  # ascent, not descent


def test_the_world_model_keeps_the_training_its_checkpoint_had():
    config = registry.build_editor("ke", family="mmke_mini_world").config
    assert (config.optimizer, config.warmup_steps, config.decay_steps, config.lagrange_update) == ("adam", 0, 0, "ascent")
