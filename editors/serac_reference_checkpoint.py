"""serac_ref's checkpoint (editors/serac_reference.py): its files, and how a reference SERAC file
becomes one (``mmke-eval convert-checkpoint --editor serac``).

A SERAC file of the reference trainers (``SERAC_MULTI``: the EasyEdit-derived trainer's
``torch.save``'d dict) holds its classifier (DistilBERT), its ``scale``, the trained tensors of its
counterfactual LM and (BLIP-2) its projection of the Q-Former's outputs; each is checked against
the configs of ``cls_name`` and ``small_name``. The checkpoint's JSON holds the base model's
fingerprint (its alignment module, whose image features the counterfactual model reads).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from editors.base import ConfigError
from editors.learned import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, META_FILE, WEIGHTS_FILE, CheckpointError,
                             model_fingerprint, read_checkpoint_meta, read_checkpoint_weights)
from mmke_eval.reference.safe_pickle import ConversionError, describe_config, int_step, peek, read_reference, sha256_of
from mmke_eval.reference.weights import listing, shape_of

REFERENCE_FORMAT = "EasyEdit trainer (BaseTrainer.save_state), SERAC_MULTI"
# Buffers that older transformers saved and that are rebuilt from the config: a file may hold them.
REBUILT_BUFFERS = ("position_ids", "rotary_emb.inv_freq")


CLASS_NAME = "editors.serac_reference:SERACReferenceEditor"


def image_path_modules(adapter) -> dict[str, tuple[int, ...]]:
    """The base model's weights a checkpoint is fingerprinted on: its alignment module (LLaVA's
    projector; BLIP-2's Q-Former, query tokens and projection), whose outputs the counterfactual
    model reads."""
    return {name: tuple(p.shape) for name, p in adapter.parameter_group("alignment").items()}


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"format": CHECKPOINT_FORMAT, "editor": "serac_ref"})
    tmp.replace(folder / WEIGHTS_FILE)
    tmp = folder / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1, default=str) + "\n")
    tmp.replace(folder / META_FILE)


def checkpoint_meta(adapter, cls_name: str, small_name: str, converted_from: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "editor": "serac_ref", "class": CLASS_NAME,
        "config": {"cls_name": cls_name, "small_name": small_name},
        "base_model": model_fingerprint(adapter, image_path_modules(adapter)),
        "converted_from": converted_from,
    }


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"editor 'serac_ref': checkpoint={folder}: needs {META_FILE} and {WEIGHTS_FILE} (written by "
                              "`mmke-eval convert-checkpoint --editor serac`)")
    meta = read_checkpoint_meta(meta_path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{folder}: not an mmke-eval editor checkpoint (format {meta.get('format')!r})")
    if meta.get("class") != CLASS_NAME:
        raise CheckpointError(f"{folder} holds a {meta.get('editor')!r} checkpoint ({meta.get('class')}); editor 'serac_ref' "
                              "reads only converted reference SERAC files (`mmke-eval convert-checkpoint --editor serac`)")
    return meta, read_checkpoint_weights(weights_path)


def pretrained(loader, name: str, option: str, **kwargs):
    """``loader.from_pretrained(name)``; a failure names the option to set."""
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"editor 'serac_ref': {option}={name}: cannot load it ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); give a local folder with --editor_args "
                          f"{option}=PATH") from None


def meta_model(name: str, option: str) -> torch.nn.Module:
    """``cls_name``'s AutoModel (``option`` 'cls_name') or ``small_name``'s AutoModelForCausalLM,
    built from its config on the meta device (no weights read, no memory used): names and shapes."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = pretrained(AutoConfig, name, option)
    with torch.device("meta"):
        return (AutoModel if option == "cls_name" else AutoModelForCausalLM).from_config(config)


def own_projection(adapter) -> bool:
    """Whether the reference's counterfactual model reads this model's images through a projection
    of its own (BLIP-2: its ``language_projection`` of the Q-Former's outputs, never trained:
    pitfall 5) instead of the base model's image features (LLaVA)."""
    return callable(getattr(adapter, "query_outputs", None))


def is_rebuilt_buffer(key: str) -> bool:
    return key.endswith(REBUILT_BUFFERS)


# -- the reference's file -------------------------------------------------------------------------
def convert_reference_file(editor, adapter, reference: str | Path, output: str | Path, command: str = "") -> dict[str, Any]:
    """A reference SERAC_MULTI file as a serac_ref checkpoint (``editor``, editors/serac_reference.py): the
    classifier's DistilBERT tensors, the ``scale`` buffer, the counterfactual model's trained
    tensors and, for BLIP-2, its projection of the Q-Former's outputs, each checked against
    ``cls_name``'s and ``small_name``'s configs and this model's widths. Returns the meta."""
    path, out = Path(reference).expanduser(), Path(output).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--reference {reference}: no such file")
    if (out / META_FILE).exists():
        raise ConversionError(f"--output_path {out} already holds a checkpoint ({META_FILE}); choose another folder or remove it")
    ref = serac_reference_file(path)
    model = ref["model"]
    width = editor.check_adapter(adapter)
    cls_name, small_name = editor.default_names(adapter)
    lm = meta_model(small_name, "small_name")
    expected = {"classifier": tensor_shapes(meta_model(cls_name, "cls_name")), "replacement": tensor_shapes(lm)}
    names = {"classifier": f"cls_name={cls_name}", "replacement": f"small_name={small_name}"}
    embed = lm.get_input_embeddings().embedding_dim
    projection = own_projection(adapter)
    if projection:  # BLIP-2: the file's projection from the Q-Former's outputs into small_name's embeddings
        expected["language_projection"] = {"weight": (embed, width), "bias": (embed,)}
        names["language_projection"] = f"the projection from this model's Q-Former ({width}) into small_name={small_name} ({embed})"
    elif embed != width:
        raise ConversionError(f"small_name={small_name} embeds tokens in {embed} dimensions; this model's image features "
                              f"have {width}")
    tensors: dict[str, torch.Tensor] = {}
    rebuilt, base_keys = [], 0
    for key, value in model.items():
        if key == "model_config":
            continue
        if key.startswith("model."):  # the base model's, when a file holds them
            base_keys += 1
            continue
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor")
        if key == "scale":
            if value.numel() != 1:
                raise ConversionError(f"{path}: 'scale' has shape {shape_of(value)}; the similarity's scale is one number")
            tensors["scale"] = value.detach().float().reshape(())
            continue
        part, _, inner = key.partition(".")
        if part not in expected:
            hint = (f"; 'language_projection.*' belongs to a SERAC for BLIP-2 or MiniGPT-4, not for "
                    f"{type(adapter.model).__name__}") if part == "language_projection" else ""
            raise ConversionError(f"{path}: unexpected key {key!r} (a SERAC_MULTI state dict holds 'classifier.*', "
                                  f"'replacement.*', 'scale', 'model_config'{', language_projection.*' if projection else ''}{hint})")
        if inner not in expected[part]:
            if is_rebuilt_buffer(inner):
                rebuilt.append(key)
                continue
            raise ConversionError(f"{path}: {key!r} is not a tensor of {names[part]} ({listing(expected[part])})")
        if tuple(value.shape) != expected[part][inner]:
            raise ConversionError(f"{path}: {key!r} has shape {shape_of(value)}; {names[part]} has {list(expected[part][inner])} "
                                  f"for {inner}")
        # The classifier and the projection in float32 (they are small); the language model's tensors as trained.
        tensors[key] = value.detach().clone() if part == "replacement" else value.detach().float()
    if "scale" not in tensors:
        raise ConversionError(f"{path}: missing key 'scale' in 'model' (the scope similarity's buffer)")
    missing = sorted(k for k in expected["classifier"] if f"classifier.{k}" not in tensors)
    if missing:
        raise ConversionError(f"{path}: missing key {'classifier.' + missing[0]!r} ({len(missing)} of {names['classifier']}'s "
                              f"{len(expected['classifier'])} tensors missing)")
    trained = sorted(k[len("replacement."):] for k in tensors if k.startswith("replacement."))
    if not trained:
        raise ConversionError(f"{path}: no 'replacement.*' tensor: nothing of the counterfactual model was trained")
    for inner in expected.get("language_projection", {}):
        if f"language_projection.{inner}" not in tensors:
            raise ConversionError(f"{path}: missing key 'language_projection.{inner}' ({names['language_projection']}; "
                                  "the reference never trained it, but its values are the ones it used)")
    sha = sha256_of(path)
    step = int_step(ref.get("step"))
    converted = {
        "file": str(path.resolve()), "sha256": sha, "format": REFERENCE_FORMAT, "step": step,
        "replacement_tensors": trained,
        "replacement_layers": sorted({int(m.group(1)) for k in trained if (m := re.search(r"(?:^|\.)layers\.(\d+)\.", k))}),
        "classifier_tensors": len(expected["classifier"]), "scale": float(tensors["scale"]),
        "image_path": ("the file's language_projection of the Q-Former's outputs (untrained in the reference)" if projection
                       else "the base model's image features"),
        "ignored_keys": {"base_model": base_keys, "rebuilt_buffers": rebuilt},
        "model_config": describe_config(model.get("model_config")), "command": command,
    }
    meta = checkpoint_meta(adapter, cls_name, small_name, converted)
    save_checkpoint(out, tensors, meta)
    return meta


def tensor_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_serac_file(path: Path) -> None:
    """Refuse, reading no tensor, a file whose ``"model"`` is not a SERAC state dict."""
    top = peek(path)
    if isinstance(top, dict) and isinstance(top.get("model"), dict) and not any(str(k).startswith("classifier.") for k in top["model"]):
        raise ConversionError(f"{path}: no 'classifier.*' key in 'model': not a SERAC checkpoint (has "
                              f"{sorted(map(str, top['model']))[:4]})")


def serac_reference_file(path: Path) -> dict[str, Any]:
    """A reference SERAC file's dict, after checking that its ``"model"`` is a SERAC state dict."""
    check_serac_file(path)
    ref = read_reference(path, ("model",))
    if not isinstance(ref["model"], dict):
        raise ConversionError(f"{path}: 'model' holds a {type(ref['model']).__name__}, not the editor's state dict")
    return ref
