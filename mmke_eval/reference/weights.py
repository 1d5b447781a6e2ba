"""The reference's names of the edited weights, matched to the adapter's parameters, and the
checked copy of a reference tensor into an editor's state dict.

The reference names the edited weights by its own model code (``model.layers.31.mlp.down_proj.weight``,
``opt_model.model.decoder.layers.31.fc1.weight``); they are matched to the adapter's parameters by
layer index and module (``up_proj``/``down_proj``, ``fc1``/``fc2``). Every tensor is checked
against the shape the editor needs on this model; a file that does not fit is refused, naming the
key and both shapes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import torch

from mmke_eval.reference.safe_pickle import ConversionError

_OUR_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:mlp\.)?(\w+)\.weight$")


def layer_and_module(name: str) -> tuple[int, str]:
    """``(layer index, module)`` of an edited weight's name: ``...layers.31.mlp.down_proj.weight`` ->
    ``(31, "down_proj")``, ``...decoder.layers.31.fc1.weight`` -> ``(31, "fc1")``."""
    m = _OUR_NAME.search(name)
    if not m:
        raise ConversionError(f"cannot tell the layer and module of {name!r} (expected '...layers.N.[mlp.]MODULE.weight')")
    return int(m.group(1)), m.group(2)


def match_weights(ours: list[str], reference: list[str], what: str,
                  key_of: Callable[[str], tuple[int, str]] = layer_and_module) -> dict[str, str]:
    """reference name -> our name, by layer index and module (``key_of`` a reference name: the
    weight's name by default; an editor whose file names its networks otherwise gives its own);
    both sides must be the same set."""
    by_key = {layer_and_module(n): n for n in ours}
    mapping, seen = {}, set()
    for ref in reference:
        key = key_of(ref)
        if key not in by_key:
            raise ConversionError(
                f"{what}: the reference edits {ref!r} (layer {key[0]}, {key[1]}), which this model's edited weights "
                f"do not include: {listing(ours)} (set --editor_args layers=N / target=..., or --inner_params)"
            )
        if key in seen:
            raise ConversionError(f"{what}: two reference weights at layer {key[0]}, {key[1]}")
        seen.add(key)
        mapping[ref] = by_key[key]
    left = [n for k, n in by_key.items() if k not in seen]
    if left:
        raise ConversionError(f"{what}: the reference has nothing for this model's edited weight(s) {listing(left)}")
    return mapping


def listing(names) -> str:
    """At most six of ``names``, sorted, and how many more."""
    names = sorted(names)
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


# How the reference's model code names an edited weight (its hparams' inner_params), by family.
REFERENCE_NAMES = {
    "llava": "model.layers.{layer}.mlp.{module}.weight",  # original LLaVA (LlavaLlamaForCausalLM)
    "blip2": "opt_model.model.decoder.layers.{layer}.{module}.weight",  # LAVIS Blip2OPT
    "minigpt4": "llama_model.model.layers.{layer}.mlp.{module}.weight",  # MiniGPT-4's LLaMA
}


def default_inner_params(ours: list[str], family: str = "") -> list[str]:
    """The reference's ``inner_params`` for our edited weights, in its order: layers ascending and,
    in each layer, ``down_proj`` before ``up_proj``, ``fc1`` before ``fc2`` (the hparams' order;
    modes and step sizes are indexed by it). Named as the reference's model code names them where
    the family is one the reference runs (else our names, which match by layer and module alike)."""
    pattern = REFERENCE_NAMES.get(family)
    keyed = sorted((layer_and_module(n), n) for n in ours)
    return [pattern.format(layer=layer, module=module) if pattern else name for (layer, module), name in keyed]


def shape_of(t) -> list[int]:
    return list(t.shape)


def copy_checked(target: dict[str, torch.Tensor], source: dict[str, Any], ours: str, theirs: str, path: Path,
          rows: list[int] | None = None) -> None:
    """Copy ``source[theirs]`` into ``target[ours]`` after checking it is there with the right shape
    (``rows``: take these rows of it, in this order)."""
    if theirs not in source:
        raise ConversionError(f"{path}: missing key {theirs!r} (needed for {ours})")
    tensor = source[theirs]
    if not isinstance(tensor, torch.Tensor):
        raise ConversionError(f"{path}: key {theirs!r} holds a {type(tensor).__name__}, not a tensor")
    if rows is not None:
        if tensor.dim() < 1 or tensor.shape[0] != len(rows):
            raise ConversionError(f"{path}: {theirs!r} has shape {shape_of(tensor)}; this model needs "
                                  f"{[len(rows), *target[ours].shape[1:]]} (one row per edited weight of its shape)")
        tensor = tensor[rows]
    if tuple(tensor.shape) != tuple(target[ours].shape):
        raise ConversionError(f"{path}: {theirs!r} has shape {shape_of(tensor)}; the editor on this model needs "
                              f"{shape_of(target[ours])} for {ours}")
    target[ours] = tensor.detach().to(torch.float32)  # copied by load_state_dict
