"""Benchmark families: each is one folder ``mmke_tasks/<family>/`` whose ``family.yaml`` declares it.

mmke-eval finds the families by scanning ``mmke_tasks/*/family.yaml`` (the folder's name is the
family's name); no other module names a family. A declaration holds:

* ``title``; ``releases`` (each benchmark of the family, a source card's ``benchmark``: the
  published data and the generated mini, by its name in figures); ``subsets`` (a task's subset,
  its card's knowledge_type or subset, by its name in figures; ``eval``: a task with neither, the
  benchmark's main eval file; a hop k is "k-hop").
* ``loader`` ("module:function", called with the data root and the task's source card), ``layout``
  (what a data folder holds, for messages), ``required`` (entries a data folder must have),
  ``demonstrations`` (the reader of IKE's pool from the train split; default: the EasyEdit-format
  src/alt/rephrase/loc fields), ``train_ignores`` (source-card keys left out to read the train split).
* ``probes``, its probe kinds in table order: name, table title, ``locality`` (the top-k option
  comparing pre- and post-edit outputs; otherwise the probe is scored against its answer),
  ``image`` (none | edit | rephrase | locality | data: the one the record names), ``portability``
  (the port_image option applies), ``template`` (a prompt template of its own), ``entity_metric``
  (MIKE-style entity-oriented accuracy). Each kind gives the metrics <name>, <name>_em, (not
  locality) <name>_contains and (entity_metric) <name>_entity; the family's task template lists them.
* ``table``: the main table's columns, when not the probe kinds in order; ``prompt_paths``: the
  templates per code path of the reference (``PROMPT_PATHS``); ``editors``: the reference's own
  hparams per editor and model family (over registry.yaml's editor defaults).
* ``mini``: its generated mini, ``generator`` (a module with ``files(world)`` and
  ``knowledge_probes(root, split)``, mmke_eval/mini/generate.py) and ``default`` (the world's own layout).

The wrapper, the metrics, the task hooks, IKE, the mini generator and the report read these
declarations; no module branches on a benchmark's name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

IMAGES = ("none", "edit", "rephrase", "locality", "data")
# A family's prompt paths (``prompt_paths``): where the reference builds prompts differently on its
# code paths (EasyEdit's MMEdit: the trainer's collate_fn and the MultimodalEditor), the template
# of each probe kind per path and knowledge type; ``edit`` names the edit request's prompt and
# rephrase prompt. Which path a run uses is the ``prompt_path`` option (mmke_eval/prompts.py).
PROMPT_PATHS = ("trainer", "editor")
EDIT_PROMPT = "edit"
LOCALITY_OPTIONS = ("t_loc_k", "i_loc_k")


DECLARATION = "family.yaml"  # in each family's folder mmke_tasks/<family>/


class FamilyError(ValueError):
    """A bad benchmark declaration (mmke_tasks/<family>/family.yaml); the message names the file and key."""


@dataclass(frozen=True)
class ProbeKind:
    name: str
    title: str
    locality: str | None = None  # the protocol option giving k: "t_loc_k" | "i_loc_k"; None: scored against the answer
    image: str = "none"  # none | edit | rephrase | locality | data (the image the record names for it)
    portability: bool = False  # the port_image option applies
    template: str | None = None  # prompt template for this kind; None: the task's
    entity_metric: bool = False  # MIKE's entity-oriented accuracy A (<name>_entity; protocol option entity_acc)

    @property
    def is_locality(self) -> bool:
        return self.locality is not None

    def metric_names(self) -> list[str]:
        """The columns this kind contributes: its score, exact match, and (not locality) contains."""
        names = [self.name, f"{self.name}_em"] + ([] if self.is_locality else [f"{self.name}_contains"])
        return names + ([f"{self.name}_entity"] if self.entity_metric else [])


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    loader: str  # "module:function" (root, card) -> (cases, SkipReport)
    demonstrations: str  # "module:function" (train_file) -> [(src, alt, question, answer)]
    probes: tuple[ProbeKind, ...]
    layout: str = "the benchmark's release layout"  # for error messages: what a data folder holds
    required: tuple[str, ...] = ()  # entries a data folder must have (checked before loading)
    table: tuple[tuple[str, str], ...] = ()  # (metric, title) of the main table; default: the probe kinds
    # Source-card keys that pick eval-only files (VLKEB's hop, subset): left out to read the train split.
    train_ignores: tuple[str, ...] = ()
    # path -> ((knowledge type, ((kind or "edit", template), ...)), ...); empty: one way to prompt.
    prompt_paths: tuple[tuple[str, tuple[tuple[str, tuple[tuple[str, str], ...]], ...]], ...] = ()

    def path_template(self, path: str, knowledge_type: str, key: str) -> str | None:
        """The template ``path`` declares for ``key`` (a probe kind, or "edit") of a knowledge type, or None."""
        for name, per_type in self.prompt_paths:
            if name == path:
                for kt, templates in per_type:
                    if kt == knowledge_type:
                        return dict(templates).get(key)
                return None
        raise FamilyError(f"benchmark {self.name!r} declares no prompt path {path!r}; its paths: "
                          f"{', '.join(n for n, _ in self.prompt_paths) or 'none'}")
    releases: tuple[tuple[str, str], ...] = ()  # (card's benchmark, its name in figures)
    subsets: tuple[tuple[str, str], ...] = ()  # (card's knowledge_type / subset, or "eval": its name in figures)
    # editor -> model family -> values: the reference's own hparams (registry.editor_defaults' third layer)
    editors: tuple[tuple[str, tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]], ...] = ()
    mini: str | None = None  # the module generating its mini (mmke_eval/mini/generate.py); None: no mini
    mini_default: bool = False  # the world's own layout: make-mini's default, cache folder without the family name

    def editor_defaults(self) -> dict[str, dict[str, dict[str, Any]]]:
        """editor -> model family -> values, as declared (``editors``)."""
        return {editor: {model: dict(values) for model, values in per_model} for editor, per_model in self.editors}

    def probe(self, kind: str) -> ProbeKind:
        for probe in self.probes:
            if probe.name == kind:
                return probe
        raise FamilyError(f"benchmark {self.name!r} has no probe kind {kind!r}; its kinds: {', '.join(p.name for p in self.probes)}")

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(metric, title) of the main table, in the declared order."""
        return list(self.table) or [(p.name, p.title) for p in self.probes]

    def metric_names(self) -> list[str]:
        return [name for p in self.probes for name in p.metric_names()]

    def load(self, root, card: dict):
        return _import(self.loader, f"{where(self.name)} loader")(root, card)

    def train_card(self, card: dict) -> dict:
        """The source card of the train split the card's cases come from (editor training)."""
        return {**{k: v for k, v in card.items() if k not in self.train_ignores}, "split": "train"}

    def release_title(self, benchmark: str | None) -> str:
        """The declared name of one benchmark of the family (``mmke_mini``: "MMKE-Bench mini
        (generated)"); an undeclared one is named with the family's title beside it."""
        declared = dict(self.releases)
        if benchmark in declared:
            return declared[benchmark]
        return self.title if benchmark in (None, self.name) else f"{benchmark} ({self.title})"

    def subset_title(self, card: dict) -> str:
        """A task's subset as figures name it: the declared name of its card's knowledge type or
        subset, "k-hop" for a hop, the declared ``eval`` name for a task with neither."""
        if card.get("hop") is not None:
            return f"{card['hop']}-hop"
        key = str(card.get("knowledge_type") or card.get("subset") or "eval")
        return dict(self.subsets).get(key, key)

    def demonstration_pool(self, train_file: str) -> list[tuple[str, str, str, str]]:
        return _import(self.demonstrations, f"{where(self.name)} demonstrations")(train_file)


def _import(path: str, key: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise FamilyError(f"{key}: cannot import {path!r} ({err})") from None


def where(family: str) -> str:
    """The declaration file of ``family``, as messages name it."""
    return f"mmke_tasks/{family}/{DECLARATION}"


@lru_cache(maxsize=None)
def declarations() -> dict[str, dict[str, Any]]:
    """Every family's declaration as written, by name: ``mmke_tasks/<name>/family.yaml``, sorted by name."""
    import yaml

    from mmke_eval.resources import tasks_dir

    declared = {}
    for path in sorted(tasks_dir().glob(f"*/{DECLARATION}")):
        with open(path, encoding="utf-8") as f:
            entry = yaml.safe_load(f)
        if not isinstance(entry, dict):
            raise FamilyError(f"{path}: expected a mapping of the family's keys (mmke_eval/families.py)")
        declared[path.parent.name] = entry
    return declared


def _probe_kind(family: str, index: int, entry: Any) -> ProbeKind:
    key = f"{where(family)} probes[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise FamilyError(f"{key}: expected a mapping with a name")
    unknown = set(entry) - {"name", "title", "locality", "image", "portability", "template", "entity_metric"}
    if unknown:
        raise FamilyError(f"{key}: unknown key(s) {sorted(unknown)}")
    locality = entry.get("locality")
    if locality is not None and locality not in LOCALITY_OPTIONS:
        raise FamilyError(f"{key}.locality: expected one of {LOCALITY_OPTIONS}, not {locality!r}")
    image = entry.get("image", "none")
    if image not in IMAGES:
        raise FamilyError(f"{key}.image: expected one of {IMAGES}, not {image!r}")
    return ProbeKind(entry["name"], str(entry.get("title", entry["name"])), locality, image,
                     bool(entry.get("portability", False)), entry.get("template"), bool(entry.get("entity_metric", False)))


@lru_cache(maxsize=None)
def get(name: str) -> Family:
    """The declared family ``name``; an unknown name lists the known ones."""
    declared = declarations()
    if name not in declared:
        raise FamilyError(f"unknown benchmark family {name!r}; declared in mmke_tasks/*/{DECLARATION}: {', '.join(sorted(declared))}")
    entry = declared[name]
    for required in ("loader", "probes"):
        if required not in entry:
            raise FamilyError(f"{where(name)}: missing {required!r}")
    probes = tuple(_probe_kind(name, i, p) for i, p in enumerate(entry["probes"]))
    if len({p.name for p in probes}) != len(probes):
        raise FamilyError(f"{where(name)} probes: probe names must be unique")
    mini = entry.get("mini") or {}
    if not isinstance(mini, dict) or set(mini) - {"generator", "default"} or (mini and not isinstance(mini.get("generator"), str)):
        raise FamilyError(f"{where(name)} mini: expected {{generator: module, default: true|false}}")
    return Family(
        name=name,
        title=str(entry.get("title", name)),
        loader=entry["loader"],
        demonstrations=entry.get("demonstrations", "mmke_eval.data.easyedit:demonstration_pool"),
        probes=probes,
        layout=str(entry.get("layout", Family.layout)),
        required=tuple(entry.get("required", ())),
        table=_table(name, entry.get("table") or [], probes),
        train_ignores=tuple(entry.get("train_ignores", ())),
        prompt_paths=_prompt_paths(name, entry.get("prompt_paths") or {}, probes),
        releases=_names(name, "releases", entry.get("releases")),
        subsets=_names(name, "subsets", entry.get("subsets")),
        editors=_editors(name, entry.get("editors") or {}),
        mini=mini.get("generator"),
        mini_default=bool(mini.get("default", False)),
    )


def _editors(family: str, declared: Any):
    """The declared editor values: editor -> model family -> {key: value} (editor names are checked
    against registry.yaml where they are used: mmke_eval/registry.py)."""
    if not isinstance(declared, dict) or not all(
            isinstance(per_model, dict) and all(isinstance(v, dict) for v in per_model.values()) for per_model in declared.values()):
        raise FamilyError(f"{where(family)} editors: expected editor -> model family -> {{key: value}}")
    return tuple((str(editor), tuple((str(model), tuple(values.items())) for model, values in per_model.items()))
                 for editor, per_model in declared.items())


def _prompt_paths(family: str, declared: Any, probes: tuple[ProbeKind, ...]):
    """The declared prompt paths: every path of PROMPT_PATHS, each {knowledge type: {kind or edit: template}}."""
    from mmke_eval.resources import resource_path

    key = f"{where(family)} prompt_paths"
    if not declared:
        return ()
    if not isinstance(declared, dict) or sorted(declared) != sorted(PROMPT_PATHS):
        raise FamilyError(f"{key}: expected a mapping with exactly the paths {PROMPT_PATHS}")
    known = {p.name for p in probes} | {EDIT_PROMPT}
    paths = []
    for path in PROMPT_PATHS:
        per_type = declared[path] or {}
        if not isinstance(per_type, dict):
            raise FamilyError(f"{key}.{path}: expected {{knowledge type: {{probe kind or edit: template}}}}")
        entries = []
        for knowledge_type, templates in per_type.items():
            if not isinstance(templates, dict) or set(templates) - known:
                raise FamilyError(f"{key}.{path}.{knowledge_type}: expected {{probe kind or edit: template}}, "
                                  f"kinds among {', '.join(sorted(known))}")
            for name, template in templates.items():
                if not isinstance(template, str) or not (resource_path("templates") / template).is_file():
                    raise FamilyError(f"{key}.{path}.{knowledge_type}.{name}: no template {template!r} under templates/")
            entries.append((str(knowledge_type), tuple(sorted(templates.items()))))
        paths.append((path, tuple(entries)))
    return tuple(paths)


def _names(family: str, key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise FamilyError(f"{where(family)} {key}: expected a mapping of names to non-empty titles")
    return tuple((str(k), v) for k, v in value.items())


def _table(family: str, entries: list, probes: tuple[ProbeKind, ...]) -> tuple[tuple[str, str], ...]:
    """The declared main-table columns: each {metric, title}, a metric one of the family's."""
    known = {name for p in probes for name in p.metric_names()}
    columns = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("metric") not in known:
            raise FamilyError(f"{where(family)} table[{i}]: expected {{metric, title}} with a metric "
                              f"of this family ({', '.join(sorted(known))})")
        columns.append((entry["metric"], str(entry.get("title", entry["metric"]))))
    return tuple(columns)


def names() -> list[str]:
    return sorted(declarations())


def with_mini() -> list[Family]:
    """The families that declare a generated mini, the default one first, then by name."""
    found = [family for family in map(get, names()) if family.mini]
    return sorted(found, key=lambda family: (not family.mini_default, family.name))


def of_card(card: dict) -> Family:
    """The family a source card belongs to: its ``family`` key, else its ``benchmark``."""
    return get(card.get("family") or card["benchmark"])


def kind_of(doc: dict) -> ProbeKind:
    """The declared kind of a probe document (its ``family`` and ``probe`` fields)."""
    return get(doc["family"]).probe(doc["probe"])
