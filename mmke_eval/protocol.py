"""The scoring protocol: the options a run owns (``--model_args``), parsed strictly.

Light on purpose (no lmms-eval, no torch): the CLI checks a run's options with it before
starting anything, and the ``edited`` model builds its ``Protocol`` with it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmke_eval.data.augment import AUGMENTATIONS
from mmke_eval.options import OptionError, parse_bool, parse_choice, parse_int

PORT_IMAGES = ("auto", "data", "edit")
PROMPT_PATHS = ("auto", "trainer", "editor")  # = mmke_eval.prompts.PROMPT_PATH_OPTIONS (kept light: no jinja here)
LOC_SPANS = ("auto", "sequence", "query", "answer")
AVERAGES = ("case", "token")
FOLLOWUP_IMAGES = ("auto", "edit", "none")
ENTITY_ACCS = ("tokens", "generation")
PROTOCOL_FIELDS = ("t_loc_k", "i_loc_k", "loc_span", "generate", "sequential", "sequential_gap", "port_image",
                   "edit_images", "edit_augment", "augment_seed", "user_number", "prompt_path", "average", "followup_image",
                   "entity_acc")
PROTOCOL_OPTIONS = PROTOCOL_FIELDS + ("journal", "wait_for_lock")  # every --model_args key the edited model owns


def refuse_misspelt_options(base_args: dict[str, Any]) -> None:
    """Unknown keys go to the base backend, but one that looks like a protocol option is a typo."""
    for key in base_args:
        close = difflib.get_close_matches(key, PROTOCOL_OPTIONS, n=1, cutoff=0.8)
        if close:
            raise OptionError(f"unknown option {key!r}; did you mean {close[0]!r}? (protocol options: {', '.join(PROTOCOL_OPTIONS)})")


@dataclass(frozen=True)
class Protocol:
    """Scoring choices. Defaults are the MMKE-Bench reference protocol (docs/protocol.md)."""

    t_loc_k: int = 1  # text locality: top-1 agreement
    i_loc_k: int = 10  # image locality: top-10 agreement, element-wise in rank order
    # "sequence": the whole input, right-aligned (an in-context editor's prefix included, as EasyEdit
    # compares IKE); "query": every position but an in-context prefix; "answer": the answer span;
    # "auto": the editor's reference span (docs/protocol.md, "Locality span").
    loc_span: str = "auto"
    generate: bool = True  # greedy generations for the exact-match / contains columns
    sequential: bool = False  # apply edits cumulatively, restore only at the end
    # With sequential: case i is scored after edits 0..i+gap (VLKEB's gap); the last ``gap``
    # cases are edited but not scored, as in VLKEB. 0: right after its own edit (EasyEdit).
    sequential_gap: int = 0
    # Image of the portability question: "data" (the image the data names for it: the edit image
    # for entities, one_hop_img otherwise), "edit" (always the edit image), or "auto" (the
    # editor's reference: IKE asks user-type portability on the edit image).
    port_image: str = "auto"
    # Multi-step editing (MIKE): the edit sees K images of its subject (the case's edit image and
    # K-1 more that no probe uses); a family whose cases have fewer is an error, never a quiet 1.
    edit_images: int = 1
    # Augmentation of the edit image(s) before the edit (MIKE's study), seeded per case.
    edit_augment: str = "none"
    augment_seed: int = 0
    # MMKE-Bench's user number: cases in consecutive groups of N, all N edits live while each of
    # them is scored, undone before the next group. 1: independent edits.
    user_number: int = 1
    # Where the reference builds prompts differently on its code paths (MMEdit: EasyEdit's trainer
    # and editor paths, registry.yaml prompt_paths): "auto" (the editor's reference path: IKE's
    # numbers come from the editor path, every other editor's from the trainer), "trainer", "editor".
    prompt_path: str = "auto"
    # How a task's teacher-forced column is averaged: "case" (the mean within each case, then over
    # cases: MMKE-Bench, VLKEB, EasyEdit) or "token" (one ratio over every answer token, or every
    # locality position, of the task: KE's ke_eval.py, which its published table reports).
    average: str = "case"
    # VLKEB's edit twice: the image of the follow-up edit. "auto": the editor's reference (none for
    # FT-LLM, MEND, SERAC and KE; the edit image for FT-Alignment); "edit": always the edit image;
    # "none": never.
    followup_image: str = "auto"
    # MIKE's entity-oriented accuracy A (eq. 6): "tokens" (the paper's reading: teacher-forced token
    # accuracy of the answer, and 1 if every token of the entity name in it is right) or
    # "generation" (exact match of the greedy generation, and 1 if it contains the name).
    entity_acc: str = "tokens"

    def __post_init__(self):
        if self.sequential_gap < 0:
            raise ValueError("sequential_gap must be >= 0")
        if self.sequential_gap and not self.sequential:
            raise ValueError("sequential_gap needs sequential=true")
        if self.loc_span not in LOC_SPANS:
            raise ValueError(f"loc_span must be one of {LOC_SPANS}, not {self.loc_span!r}")
        if self.t_loc_k < 1 or self.i_loc_k < 1:
            raise ValueError("t_loc_k and i_loc_k must be >= 1")
        if self.port_image not in PORT_IMAGES:
            raise ValueError(f"port_image must be one of {PORT_IMAGES}, not {self.port_image!r}")
        if self.edit_images < 1:
            raise ValueError("edit_images must be >= 1")
        if self.user_number < 1:
            raise ValueError("user_number must be >= 1")
        if self.user_number > 1 and self.sequential:
            raise ValueError("user_number needs sequential=false (sequential editing keeps every edit anyway)")
        if self.prompt_path not in PROMPT_PATHS:
            raise ValueError(f"prompt_path must be one of {PROMPT_PATHS}, not {self.prompt_path!r}")
        if self.average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}, not {self.average!r}")
        if self.followup_image not in FOLLOWUP_IMAGES:
            raise ValueError(f"followup_image must be one of {FOLLOWUP_IMAGES}, not {self.followup_image!r}")
        if self.entity_acc not in ENTITY_ACCS:
            raise ValueError(f"entity_acc must be one of {ENTITY_ACCS}, not {self.entity_acc!r}")
        if self.entity_acc == "generation" and not self.generate:
            raise ValueError("entity_acc=generation scores greedy generations: it needs generate=true")
        if self.edit_augment not in AUGMENTATIONS:
            raise ValueError(f"edit_augment must be one of {AUGMENTATIONS}, not {self.edit_augment!r}")


# How each setting reads in figures (mmke-eval report --plot names variants of an editor by the
# settings in which they differ: "FT-LLM (sequential, gap 10)"); value -> text.
SETTING_TEXT: dict[str, Any] = {
    "t_loc_k": "T-Loc top-{}".format,
    "i_loc_k": "I-Loc top-{}".format,
    "loc_span": lambda v: "locality span per editor" if v == "auto" else f"locality over the {v}",
    "generate": lambda v: "with generations" if v else "no generations",
    "sequential": lambda v: "sequential" if v else "one edit at a time",
    "sequential_gap": "gap {}".format,
    "port_image": lambda v: "Port image per editor" if v == "auto" else f"Port on the {v} image",
    "edit_images": lambda v: f"{v} edit image{'s' * (v != 1)}",
    "edit_augment": "augmentation {}".format,
    "augment_seed": "augmentation seed {}".format,
    "user_number": "user number {}".format,
}


def describe_settings(values: dict[str, Any]) -> str:
    """Protocol settings (typed values) as a reader would say them: {sequential: True,
    sequential_gap: 1} -> "sequential, gap 1"; the gap of a run that is not sequential is left
    out (it has none). Keys that are not protocol options read as key=value."""
    parts = []
    for key, value in values.items():
        if key == "sequential_gap" and values.get("sequential") is False:
            continue
        text = SETTING_TEXT.get(key)
        parts.append(text(value) if text else f"{key}={value}")
    return ", ".join(parts)


def protocol_from_options(base_args: dict[str, Any] | None = None, **options: Any) -> Protocol:
    """A Protocol from option values as text (or typed); ``base_args`` are the keys meant for the
    base backend, where a near-miss of an option name is refused as a typo."""
    refuse_misspelt_options(base_args or {})
    defaults = Protocol()
    values = {name: options.get(name, getattr(defaults, name)) for name in PROTOCOL_FIELDS}
    return Protocol(
        t_loc_k=parse_int("t_loc_k", values["t_loc_k"], minimum=1),
        i_loc_k=parse_int("i_loc_k", values["i_loc_k"], minimum=1),
        loc_span=parse_choice("loc_span", values["loc_span"], LOC_SPANS),
        generate=parse_bool("generate", values["generate"]),
        sequential=parse_bool("sequential", values["sequential"]),
        sequential_gap=parse_int("sequential_gap", values["sequential_gap"], minimum=0),
        port_image=parse_choice("port_image", values["port_image"], PORT_IMAGES),
        edit_images=parse_int("edit_images", values["edit_images"], minimum=1),
        edit_augment=parse_choice("edit_augment", values["edit_augment"], AUGMENTATIONS),
        augment_seed=parse_int("augment_seed", values["augment_seed"]),
        user_number=parse_int("user_number", values["user_number"], minimum=1),
        prompt_path=parse_choice("prompt_path", values["prompt_path"], PROMPT_PATHS),
        average=parse_choice("average", values["average"], AVERAGES),
        followup_image=parse_choice("followup_image", values["followup_image"], FOLLOWUP_IMAGES),
        entity_acc=parse_choice("entity_acc", values["entity_acc"], ENTITY_ACCS),
    )


def check_model_args(model_args: dict[str, str]) -> Protocol:
    """Check the options a run owns in ``--model_args`` (before any model loads); the rest are the
    base backend's (``pretrained=`` must exist when it names a folder)."""
    owned = {key: value for key, value in model_args.items() if key in PROTOCOL_FIELDS}
    others = {key: value for key, value in model_args.items()
              if key not in PROTOCOL_OPTIONS and key not in ("base", "editor") and not key.startswith(("editor.", "adapter."))}
    protocol = protocol_from_options(others, **owned)
    check_pretrained(model_args.get("pretrained"))
    return protocol


def check_gpu(backend_cls: type, base_args: dict[str, Any], cuda_available: bool | None = None) -> None:
    """A backend that would load onto a GPU (its ``device`` or ``device_map``, given or by default:
    lmms-eval's backends default to ``device="cuda"``) on a machine where torch finds none is
    refused before loading, naming the options to set; torch would fail inside the backend with
    "Found no NVIDIA driver" or "Torch not compiled with CUDA enabled"."""
    import inspect

    params = inspect.signature(backend_cls.__init__).parameters
    wanted = []
    for key in ("device", "device_map"):
        given = str(base_args.get(key, "") or "").strip()
        default = params[key].default if key in params else ""
        value = given or (str(default).strip() if isinstance(default, str) else "")
        if value.lower().startswith("cuda"):
            wanted.append(f"{key}={value}" + ("" if given else f" ({backend_cls.__name__}'s default)"))
    if not wanted:
        return
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        fix = "device=cpu,device_map=cpu" if "device_map" in params else "device=cpu"
        raise ValueError(f"--model_args: {' and '.join(wanted)} needs a GPU, but torch finds none on this machine: "
                         f"add {fix} to --model_args (and dtype=float32), or run where torch.cuda.is_available() is true")


def check_device_map(backend_cls: type, base_args: dict[str, Any], several_processes: bool = False) -> None:
    """Several lmms-eval 0.7.3 backends (llava_hf, idefics2, ...) default to ``device_map=""`` and
    pass it to transformers, which refuses an empty device map after loading nothing: say so before
    loading, with the option to add. In several processes the backend fills it in itself."""
    import inspect

    param = inspect.signature(backend_cls.__init__).parameters.get("device_map")
    if several_processes or param is None or param.default != "" or str(base_args.get("device_map", "")).strip():
        return
    device = str(base_args.get("device", "")).strip() or "cuda"
    raise ValueError(f"--model_args: add device_map={device} (or device_map=auto): {backend_cls.__name__} passes its default "
                     f"device_map='' to transformers, which refuses it")


def check_pretrained(value: Any) -> None:
    """A ``pretrained=`` that names a missing folder fails as such (the backend would report a Hub
    "repo id" error). Something shaped like a Hub id (``owner/name``) is left to the backend,
    unless the Hub is offline and the local cache lacks it."""
    if not isinstance(value, str) or not value:
        return
    path = Path(value).expanduser()
    if path.is_dir():
        return
    looks_like_path = value.startswith(("/", ".", "~")) or value.count("/") != 1 or path.exists()
    if looks_like_path:
        raise FileNotFoundError(f"pretrained={value}: no such folder")
    import huggingface_hub

    if huggingface_hub.is_offline_mode() and not isinstance(huggingface_hub.try_to_load_from_cache(value, "config.json"), str):
        raise FileNotFoundError(
            f"pretrained={value}: no such folder, and not in the local Hugging Face cache (HF_HUB_OFFLINE is set)"
        )
