"""Does an FT edit's gradient survive float16? Figures for docs/protocol.md (issue 8.2).

Builds a random LLaVA deeper than the test models (LLM layers and width below), then compares
the gradient of the edit loss with respect to each FT parameter group in three settings:

* float32 model (the reference casts the whole model to float32 for FT edits),
* float16 model, plain backward (what FT did before loss scaling),
* float16 model, dynamic loss scaling (editors/precision.py, the default on float16 models),

at two points of an edit: the start (random model, large loss) and late in the edit (after
float32 FT has driven the loss down, where the gradients are small and underflow first). Printed
per group: the fraction of gradient entries that are zero in float16 but not in float32
(underflow), and the relative L2 error against the float32 gradient.

    python benchmarks/ft_precision.py [--layers 16] [--hidden 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch
from PIL import Image

from editors.precision import LossScaler
from mmke_eval.adapters.base import Query
from mmke_eval.adapters.llava_hf import LlavaHFAdapter
from mmke_eval.testing.tiny_llava import build_config, build_processor, build_tokenizer

PROMPT, TARGET = "What is shown in the image?", "A red circle on a white background"


def build_model(layers: int, hidden: int):
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    config = build_config(tokenizer)
    text = config.text_config
    text.num_hidden_layers, text.hidden_size, text.intermediate_size = layers, hidden, hidden * 11 // 4
    text.num_attention_heads = text.num_key_value_heads = max(hidden // 64, 1)
    text.head_dim = hidden // text.num_attention_heads
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(0)
    return LlavaForConditionalGeneration(config).eval(), processor


def gradients(adapter, group: str, query: Query, scaler: LossScaler | None) -> tuple[float, list[torch.Tensor]]:
    params = adapter.parameter_group(group)
    weights = list(params.values())
    flags = [(p, p.requires_grad) for p in adapter.model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(any(p is w for w in weights))
        scaler = scaler or LossScaler(enabled=False)
        loss, grads = scaler.gradients(lambda: adapter.target_loss(query), weights)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return float(loss.detach()), [g.flatten() for g in grads]


def compare(reference: list[torch.Tensor], other: list[torch.Tensor]) -> dict:
    ref, got = torch.cat(reference), torch.cat(other)
    nonzero = ref != 0
    underflow = ((got == 0) & nonzero).sum().item() / max(nonzero.sum().item(), 1)
    rel = ((got - ref).norm() / ref.norm()).item() if ref.norm() > 0 else float("nan")
    return {"underflow_fraction": round(underflow, 4), "relative_error": round(rel, 4)}


def drive_loss_down(adapter, group: str, query: Query, lr: float, steps: int) -> float:
    params = list(adapter.parameter_group(group).values())
    optimizer = torch.optim.Adam(params, lr=lr)
    loss = float("nan")
    for _ in range(steps):
        optimizer.zero_grad()
        loss_t = adapter.target_loss(query)
        loss_t.backward()
        optimizer.step()
        loss = float(loss_t.detach())
        if loss < 0.02:
            break
    adapter.model.zero_grad(set_to_none=True)
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    model32, processor = build_model(args.layers, args.hidden)
    image = Image.new("RGB", (48, 40), (230, 30, 30))
    query = Query(PROMPT, image, TARGET)
    rows = []
    for point in ("start", "late"):
        for group in ("alignment", "llm_last_mlp"):
            model = copy.deepcopy(model32)
            adapter32 = LlavaHFAdapter(model, processor)
            if point == "late":
                for p in model.parameters():
                    p.requires_grad_(False)
                for p in adapter32.parameter_group(group).values():
                    p.requires_grad_(True)
                drive_loss_down(adapter32, group, query, lr=1e-2, steps=120)
            loss32, g32 = gradients(adapter32, group, query, None)
            adapter16 = LlavaHFAdapter(copy.deepcopy(model).to(torch.float16), processor)
            started = time.perf_counter()
            _, g16 = gradients(adapter16, group, query, None)
            scaler = LossScaler(enabled=True)
            _, g16s = gradients(adapter16, group, query, scaler)
            row = {
                "point": point, "group": group, "loss_fp32": round(loss32, 5),
                "fp16_plain": compare(g32, g16), "fp16_loss_scaled": compare(g32, g16s),
                "loss_scale": scaler.scale, "seconds": round(time.perf_counter() - started, 2),
            }
            rows.append(row)
            print(f"{point:5s} {group:12s} loss {loss32:8.4f} | fp16 plain: underflow {row['fp16_plain']['underflow_fraction']:.2%}, "
                  f"rel.err {row['fp16_plain']['relative_error']:.4f} | fp16 scaled: underflow "
                  f"{row['fp16_loss_scaled']['underflow_fraction']:.2%}, rel.err {row['fp16_loss_scaled']['relative_error']:.4f}", flush=True)
    result = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "layers": args.layers, "hidden": args.hidden, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
