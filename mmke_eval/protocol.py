"""The scoring protocol: the options a run owns (``--model_args``), parsed strictly.

Light on purpose (no lmms-eval, no torch): the CLI checks a run's options with it before
starting anything, and the ``edited`` model builds its ``Protocol`` with it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from mmke_eval.data.augment import AUGMENTATIONS
from mmke_eval.options import OptionError, parse_bool, parse_choice, parse_int

PORT_IMAGES = ("auto", "data", "edit")
PROMPT_PATHS = ("auto", "trainer", "editor")  # = mmke_eval.prompts.PROMPT_PATH_OPTIONS (kept light: no jinja here)
LOC_SPANS = ("auto", "sequence", "query", "answer")
AVERAGES = ("case", "token")
FOLLOWUP_IMAGES = ("auto", "edit", "none")
ENTITY_ACCS = ("tokens", "generation")


def _option(default: Any, parse: Callable[[str, Any], Any], help: str, text: Callable[[Any], str] | None = None):
    """A protocol option, declared once: its default, its parser (text or typed value -> value, or
    OptionError naming it), its help (``--model_args`` help, docs/protocol.md) and how a figure
    names a setting of it (``describe_settings``)."""
    return field(default=default, metadata={"parse": parse, "help": help, "text": text})


def _whole(minimum: int | None = None):
    return lambda name, value: parse_int(name, value, minimum=minimum)


def _one_of(choices: tuple[str, ...]):
    return lambda name, value: parse_choice(name, value, choices)


@dataclass(frozen=True)
class Protocol:
    """Scoring choices, every one a ``--model_args`` option. Defaults are the MMKE-Bench reference
    protocol (docs/protocol.md). The fields are the one declaration: parsing, help, the results
    record (``asdict``), the journal key and figure labels all read them."""

    t_loc_k: int = _option(1, _whole(1), "text locality: top-k agreement (1: top-1)", "T-Loc top-{}".format)
    i_loc_k: int = _option(10, _whole(1), "image locality: top-k agreement, element-wise in rank order", "I-Loc top-{}".format)
    # "sequence": the whole input, right-aligned (an in-context editor's prefix included, as EasyEdit
    # compares IKE); "query": every position but an in-context prefix; "answer": the answer span;
    # "auto": the editor's reference span (docs/protocol.md, "Locality span").
    loc_span: str = _option("auto", _one_of(LOC_SPANS), "positions compared for locality: auto|sequence|query|answer",
                            lambda v: "locality span per editor" if v == "auto" else f"locality over the {v}")
    generate: bool = _option(True, parse_bool, "greedy generations for the exact-match / contains columns",
                             lambda v: "with generations" if v else "no generations")
    sequential: bool = _option(False, parse_bool, "apply edits cumulatively, restore only at the end",
                               lambda v: "sequential" if v else "one edit at a time")
    # With sequential: case i is scored after edits 0..i+gap (VLKEB's gap); the last ``gap``
    # cases are edited but not scored, as in VLKEB. 0: right after its own edit (EasyEdit).
    sequential_gap: int = _option(0, _whole(0), "with sequential: score each case after G more edits (VLKEB)", "gap {}".format)
    # Lifelong editing (WISE, GRACE, LiveEdit): per task, a stream of T edits made one after another
    # and never undone in between; every edit made so far is scored at 1, 10, 100, 1000 and T edits
    # (retention), and each edit right after its own (immediate). 0: no stream.
    lifelong: int = _option(0, _whole(0), "lifelong editing: a stream of T edits per task, scored at 1, 10, 100, 1000 and T edits",
                            lambda v: f"lifelong stream of {v}" if v else "no stream")
    # Image of the portability question: "data" (the image the data names for it: the edit image
    # for entities, one_hop_img otherwise), "edit" (always the edit image), or "auto" (the
    # editor's reference: IKE asks user-type portability on the edit image).
    port_image: str = _option("auto", _one_of(PORT_IMAGES), "image of the portability question: auto|data|edit",
                              lambda v: "Port image per editor" if v == "auto" else f"Port on the {v} image")
    # Multi-step editing (MIKE): the edit sees K images of its subject (the case's edit image and
    # K-1 more that no probe uses); a family whose cases have fewer is an error, never a quiet 1.
    edit_images: int = _option(1, _whole(1), "multi-step editing: the edit sees K images of its subject",
                               lambda v: f"{v} edit image{'s' * (v != 1)}")
    # Augmentation of the edit image(s) before the edit (MIKE's study), seeded per case.
    edit_augment: str = _option("none", _one_of(AUGMENTATIONS), f"augmentation of the edit image(s): {'|'.join(AUGMENTATIONS)}",
                                "augmentation {}".format)
    augment_seed: int = _option(0, _whole(), "seed of edit_augment (per case)", "augmentation seed {}".format)
    # MMKE-Bench's user number: cases in consecutive groups of N, all N edits live while each of
    # them is scored, undone before the next group. 1: independent edits.
    user_number: int = _option(1, _whole(1), "MMKE-Bench's user number: N edits live together", "user number {}".format)
    # Where the reference builds prompts differently on its code paths (MMEdit: EasyEdit's trainer
    # and editor paths, registry.yaml prompt_paths): "auto" (the editor's reference path: IKE's
    # numbers come from the editor path, every other editor's from the trainer), "trainer", "editor".
    prompt_path: str = _option("auto", _one_of(PROMPT_PATHS), "the reference's prompt path: auto|trainer|editor")
    # How a task's teacher-forced column is averaged: "case" (the mean within each case, then over
    # cases: MMKE-Bench, VLKEB, EasyEdit) or "token" (one ratio over every answer token, or every
    # locality position, of the task: KE's ke_eval.py, which its published table reports).
    average: str = _option("case", _one_of(AVERAGES), "teacher-forced columns averaged per case or per token: case|token")
    # VLKEB's edit twice: the image of the follow-up edit. "auto": the editor's reference (none for
    # FT-LLM, MEND, SERAC and KE; the edit image for FT-Alignment); "edit": always the edit image;
    # "none": never.
    followup_image: str = _option("auto", _one_of(FOLLOWUP_IMAGES), "image of VLKEB's follow-up edit: auto|edit|none")
    # MIKE's entity-oriented accuracy A (eq. 6): "tokens" (the paper's reading: teacher-forced token
    # accuracy of the answer, and 1 if every token of the entity name in it is right) or
    # "generation" (exact match of the greedy generation, and 1 if it contains the name).
    entity_acc: str = _option("tokens", _one_of(ENTITY_ACCS), "MIKE's entity accuracy A from: tokens|generation")

    def __post_init__(self):
        for spec in fields(self):  # a value built in code goes through the same parser as one typed
            object.__setattr__(self, spec.name, spec.metadata["parse"](spec.name, getattr(self, spec.name)))
        if self.sequential_gap and not self.sequential:
            raise OptionError("sequential_gap needs sequential=true")
        if self.user_number > 1 and self.sequential:
            raise OptionError("user_number needs sequential=false (sequential editing keeps every edit anyway)")
        if self.lifelong and (self.sequential or self.user_number > 1):
            raise OptionError("lifelong=T is its own schedule (a stream of T edits, scored at checkpoints): drop "
                              + ("sequential=true" if self.sequential else "user_number"))
        if self.entity_acc == "generation" and not self.generate:
            raise OptionError("entity_acc=generation scores greedy generations: it needs generate=true")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "Protocol":
        """A Protocol from option values as text (or typed); unknown keys are not looked at."""
        return cls(**{spec.name: spec.metadata["parse"](spec.name, options[spec.name])
                      for spec in fields(cls) if spec.name in options})


PROTOCOL_FIELDS = tuple(spec.name for spec in fields(Protocol))
# Run options the edited model owns besides the protocol (they change no number).
RUN_OPTIONS = {"journal": "where finished cases are written (resume); mmke-eval sets <output_path>/<editor>/cases.jsonl",
               "wait_for_lock": "another run holds the output folder: wait for it (else refused)"}
PROTOCOL_OPTIONS = PROTOCOL_FIELDS + tuple(RUN_OPTIONS)  # every --model_args key the edited model owns


def options_help() -> str:
    """Every option with its default and help, for ``--model_args`` help."""
    return "; ".join(f"{spec.name} (default {spec.default}): {spec.metadata['help']}" for spec in fields(Protocol))


def refuse_misspelt_options(base_args: dict[str, Any]) -> None:
    """Unknown keys go to the base backend, but one that looks like a protocol option is a typo."""
    for key in base_args:
        close = difflib.get_close_matches(key, PROTOCOL_OPTIONS, n=1, cutoff=0.8)
        if close:
            raise OptionError(f"unknown option {key!r}; did you mean {close[0]!r}? (protocol options: {', '.join(PROTOCOL_OPTIONS)})")


def describe_settings(values: dict[str, Any]) -> str:
    """Protocol settings (typed values) as a reader would say them: {sequential: True,
    sequential_gap: 1} -> "sequential, gap 1"; the gap of a run that is not sequential is left
    out (it has none). Keys without a declared text read as key=value."""
    texts = {spec.name: spec.metadata["text"] for spec in fields(Protocol)}
    parts = []
    for key, value in values.items():
        if key == "sequential_gap" and values.get("sequential") is False:
            continue
        text = texts.get(key)
        parts.append(text(value) if text else f"{key}={value}")
    return ", ".join(parts)


def protocol_from_options(base_args: dict[str, Any] | None = None, **options: Any) -> Protocol:
    """A Protocol from option values as text (or typed); ``base_args`` are the keys meant for the
    base backend, where a near-miss of an option name is refused as a typo."""
    refuse_misspelt_options(base_args or {})
    return Protocol.from_options(options)


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
