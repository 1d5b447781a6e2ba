"""The editor contract: apply an edit, let the caller probe, restore exactly.

Weight editors snapshot only the tensors they touch and copy them back on restore; in-context
editors (IKE) change no weight and hand back a prompt prefix instead. ``editing`` restores in
a ``finally`` so an exception mid-probe never leaves an edited model behind.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from mmke_eval.options import OptionError, parse_bool, parse_float, parse_int


@dataclass(frozen=True)
class EditRequest:
    """What to edit. Images are PIL images (already loaded) or None."""

    case_id: str
    prompt: str  # edit prompt (MMKE ``src``)
    target: str  # new knowledge (MMKE ``alt``)
    image: Any = None
    original: str = ""  # MMKE ``pred``
    rephrase_prompt: str = ""
    rephrase_image: Any = None
    knowledge_type: str = ""
    train_file: str = ""  # train split of the same benchmark/type (IKE demonstrations)
    family: str = ""  # the benchmark family (registry.yaml), which knows how to read train_file
    extra_images: tuple = ()  # more edit images of the same subject (multi-step editing: edit_images=K)


@dataclass
class EditHandle:
    """What an applied edit left behind, enough to restore it and to query the edited model."""

    editor: str
    touched: tuple[str, ...] = ()  # parameter names modified
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # original values of ``touched``
    prefix: str = ""  # context put before every post-edit prompt (IKE)
    stats: dict[str, Any] = field(default_factory=dict)  # e.g. steps, final loss, seconds
    # Answers the post-edit queries in the adapter's place (``teacher_forced`` and ``generate``
    # with the adapter's signatures): SERAC sends in-scope inputs to its counterfactual model.
    responder: Any = None


class ConfigError(ValueError):
    """A bad editor argument. The message names the editor and the key."""


@dataclass
class EditorConfig:
    """Base of editor configs. Subclasses add typed fields with ``metadata={"help": ...}``."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], editor: str = "") -> "EditorConfig":
        """Build from strings or typed values; unknown keys and bad values raise ConfigError."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(values) - set(fields))
        if unknown:
            close = [hint for key in unknown for hint in difflib.get_close_matches(key, fields, n=1)]
            did_you_mean = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"editor {editor!r}: unknown argument(s) {unknown}{did_you_mean} (known: {sorted(fields)})")
        kwargs = {}
        for key, value in values.items():
            try:
                kwargs[key] = _coerce(value, hints[key])
            except (TypeError, ValueError) as err:
                raise ConfigError(f"editor {editor!r}: argument {key}={value!r}: {err}") from None
        try:
            return cls(**kwargs)
        except ConfigError as err:  # the class's checks name its class ('ft'); say the editor as the user wrote it
            if not editor:
                raise
            message = re.sub(r"^editor '[^']*':\s*", "", str(err))
            raise ConfigError(f"editor {editor!r}: {message}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, hint: Any) -> Any:
    """A typed value from text (or a value already typed); anything not understood raises."""
    try:
        if hint is bool:
            return parse_bool("", value)
        if hint is int:
            return parse_int("", value)
        if hint is float:
            return parse_float("", value)
    except OptionError as err:
        raise ValueError(str(err).split(": ", 1)[1]) from None
    if hint is str:
        return str(value)
    return value


class Editor(ABC):
    """Base class of all editors."""

    name: str = ""
    config_class: type[EditorConfig] = EditorConfig
    # Locality span of this method in the reference code: whole sequence for weight editors,
    # answer positions only for IKE (shared docs, section 2.2).
    reference_locality_span: str = "sequence"
    # Image of the portability question in this method's reference code, per knowledge type:
    # "edit" (the edit image) where it is not the image the data names ("data", the default).
    reference_port_images: dict[str, str] = {}
    # The reference code path whose prompts this method's published numbers come from, where a
    # family builds prompts differently per path (MMEdit, registry.yaml prompt_paths): EasyEdit's
    # MultimodalTrainer ("trainer") trained and scored MEND/SERAC; FT and KE have no public
    # MMEdit code and are scored as VLKEB/MMKE-Bench score them, through the trainer.
    reference_prompt_path: str = "trainer"
    # VLKEB's edit twice (edit_onehop test_edit_onehop.py): whether this method's second edit sees
    # the edit image in the reference. It does not for FT-LLM, MEND, SERAC and KE (text only);
    # FT-Alignment, which edits the vision-language module, says so below.
    reference_followup_image: bool = False
    # Multi-step editing (``edit_images=K``, MIKE): how this editor uses K images of the edit's
    # subject, or None when it cannot (then ``multi_image_refusal`` says why and K > 1 is refused
    # before any edit). Each edit's ``handle.stats["edit_images"]`` says how many it used.
    multi_image: str | None = None
    multi_image_refusal: str = "it has no multi-step editing"
    # An editor with a side memory (GRACE's codebook, WISE's side FFN, a LoRA adapter) changes no
    # weight of the model: it adds its own modules or parameters beside them while edits are live,
    # and restoring the last live edit removes them (state_dict keys and values as before).
    side_memory: bool = False

    def __init__(self, config: EditorConfig | None = None):
        self.config = config if config is not None else self.config_class()

    def multi_image_rule(self) -> str | None:
        """How K > 1 edit images are used (config-dependent for some editors), or None: refused."""
        return self.multi_image

    def check_edit_images(self, k: int) -> None:
        """Refuse ``edit_images=k`` in one line when this editor cannot use several edit images."""
        if k > 1 and self.multi_image_rule() is None:
            raise ConfigError(f"editor {self.name!r} cannot use edit_images={k}: {self.multi_image_refusal}; "
                              "run it with edit_images=1")

    @abstractmethod
    def apply(self, adapter, request: EditRequest) -> EditHandle:
        """Edit the adapter's model (or build a prompt prefix) for one request."""

    def restore(self, adapter, handle: EditHandle) -> None:
        """Copy back exactly the tensors the edit touched."""
        params = dict(adapter.model.named_parameters())
        with torch.no_grad():
            for name in handle.touched:
                params[name].copy_(handle.saved[name])
        handle.saved.clear()

    @contextmanager
    def editing(self, adapter, request: EditRequest) -> Iterator[EditHandle]:
        handle = self.apply(adapter, request)
        try:
            yield handle
        finally:
            self.restore(adapter, handle)

    def edited_group(self) -> str | None:
        """The adapter parameter group this editor changes, or None when it changes no weight."""
        return None

    def edited_layers(self) -> int | tuple[int, ...]:
        """How many of the last layers its group spans (``parameter_group(group, last_k=...)``), or
        the layer indices themselves (a tuple: MEMIT's and AlphaEdit's layers 4-8)."""
        return 1

    # Set by registry.build_editor: the model and benchmark family its defaults were resolved for,
    # and for each config key the registry entry (or editor_args) its value came from.
    defaults_source: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        return {"editor": self.name, **self.config.to_dict(),
                **({"defaults_source": self.defaults_source} if self.defaults_source else {})}

    def summarize(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        """What the results should say about one task's edits, from each edit's ``handle.stats``."""
        return {}


class NoEdit(Editor):
    """The unedited model: pre-edit scores under the same protocol."""

    name = "none"
    multi_image = "no edit is made: no edit image is used (edit_images 0 in each edit report)"

    def apply(self, adapter, request: EditRequest) -> EditHandle:
        return EditHandle(editor=self.name, stats={"edit_images": 0})
