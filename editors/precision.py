"""Gradients that survive half precision: dynamic loss scaling for float16 models.

A float16 gradient smaller than 6e-8 is zero. FT-Alignment's gradient reaches the projector
through every language-model layer, and the reference avoids the problem by casting the whole
model to float32 for the edit (twice the memory of a 7B model). We keep the model in its dtype
and scale the loss instead, as mixed-precision training does: the backward pass runs on
``loss * scale``, the gradients are unscaled in float32, and a step whose gradients overflowed
(inf/nan) is computed again with half the scale. bfloat16 has float32's exponent range and
needs no scaling; float32 needs none either.

Measured on a 12-layer random LLaVA in float16 (benchmarks/ft_precision.py, docs/protocol.md):
without scaling, most projector gradient entries underflow to zero; with it, the gradients match
the float32 ones to float16 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

LOSS_SCALING = ("auto", "dynamic", "off")
INITIAL_SCALE = 2.0**16  # torch.amp.GradScaler's default
GROWTH_INTERVAL = 200  # good steps before the scale is doubled again
MIN_SCALE = 2.0**-24


def needs_loss_scaling(dtype: torch.dtype, mode: str) -> bool:
    if mode not in LOSS_SCALING:
        raise ValueError(f"loss_scaling must be one of {LOSS_SCALING}, not {mode!r}")
    return mode == "dynamic" or (mode == "auto" and dtype == torch.float16)


@dataclass
class LossScaler:
    """Dynamic loss scale. Kept across the edits of one editor, so the scale found once is reused."""

    enabled: bool
    scale: float = INITIAL_SCALE
    good_steps: int = 0
    overflows: int = 0  # steps recomputed because the scaled gradients were not finite

    def gradients(self, loss_fn: Callable[[], torch.Tensor], weights: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(loss, float32 gradients of ``loss_fn()`` with respect to ``weights``), finite.

        With scaling on, an overflow halves the scale and recomputes; the returned gradients are
        always of the unscaled loss.
        """
        while True:
            loss = loss_fn()
            scale = self.scale if self.enabled else 1.0
            grads = torch.autograd.grad(loss * scale if self.enabled else loss, list(weights))
            grads32 = [g.to(torch.float32) / scale for g in grads]
            if not self.enabled:
                return loss, grads32
            if all(torch.isfinite(g).all() for g in grads32):
                self.good_steps += 1
                if self.good_steps % GROWTH_INTERVAL == 0:
                    self.scale *= 2.0
                return loss, grads32
            self.overflows += 1
            self.good_steps = 0
            self.scale /= 2.0
            if self.scale < MIN_SCALE:
                raise FloatingPointError("the edit's gradients are not finite at any loss scale (inf/nan in the loss or the model)")

    def describe(self) -> dict:
        return {"loss_scaling": "dynamic" if self.enabled else "off", **({"loss_scale": self.scale} if self.enabled else {})}
