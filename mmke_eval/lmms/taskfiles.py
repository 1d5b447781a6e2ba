"""The one reader of lmms-eval task YAMLs and of our tasks' source cards.

A task YAML is read with ``yaml.SafeLoader`` and lmms-eval's ``!function`` tags ignored (nothing is
imported); ``include`` chains are resolved as lmms-eval does (the including file's keys win). A
source card is the small JSON file a task's ``dataset_kwargs.data_files`` names: which benchmark,
subset and split the task reads, and where its data comes from (``data_env``, ``hf_dataset``, ...).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from mmke_eval.resources import tasks_dir

DEFAULT_PROMPT_TEMPLATE = "mmke/probe.jinja"
CARD_MAX_BYTES = 65536  # a card is one short line; a larger file is a task's own data


class IgnoreTagsLoader(yaml.SafeLoader):
    """Reads task YAMLs without resolving lmms-eval's !function tags (nothing gets imported)."""


IgnoreTagsLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def read_yaml(path: Path) -> dict:
    """One task or group YAML as written (no include resolved); an empty file is ``{}``."""
    with open(path) as f:
        return yaml.load(f, Loader=IgnoreTagsLoader) or {}


def task_config(path: Path) -> dict:
    """The task YAML with its ``include`` chain resolved (later keys win)."""
    spec = read_yaml(path)
    if spec.get("include"):
        base = task_config(include_path(path, str(spec["include"])))
        spec = {**base, **{k: v for k, v in spec.items() if k != "include"}}
    return spec


def include_path(path: Path, include: str) -> Path:
    """Where lmms-eval finds a YAML's ``include``: next to the YAML, else from the current folder,
    else (``mmke_tasks/...``) in the installed task package (mmke_eval/lmms/patches.py)."""
    from mmke_eval.lmms.patches import package_include

    for candidate in (path.parent / include, Path(include)):
        if candidate.is_file():
            return candidate.resolve()
    return Path(package_include(str(path.parent / include))).resolve()


def task_index(extra_dirs: list[str] = ()) -> tuple[dict[str, Path], dict[str, list[str]]]:
    """Our task YAMLs (and those under ``extra_dirs``, e.g. --include_path): task name -> its YAML
    file, group name -> its members."""
    tasks, groups = {}, {}
    folders = [tasks_dir()] + [Path(d).expanduser() for d in extra_dirs]
    for path in sorted(p for folder in folders for p in folder.rglob("*.yaml")):
        spec = read_yaml(path)
        if isinstance(spec.get("task"), str):
            tasks[spec["task"]] = path
        elif spec.get("group") and isinstance(spec.get("task"), list):
            groups[spec["group"]] = [t for t in spec["task"] if isinstance(t, str)]
    return tasks, groups


def named_tasks(task_names: str, extra_dirs: list[str] = ()) -> tuple[list[tuple[str, Path]], list[str]]:
    """(task, its YAML) of every named task and group member, groups expanded in place (depth
    first, in the groups' order), and the names that are neither ours nor under ``extra_dirs``."""
    tasks, groups = task_index(extra_dirs)
    pending, found, unknown = [t.strip() for t in task_names.split(",") if t.strip()], [], []
    while pending:
        name = pending.pop(0)
        if name in groups:
            pending = groups[name] + pending
        elif name in tasks:
            found.append((name, tasks[name]))
        else:
            unknown.append(name)
    return found, unknown


def read_source_card(path: Path) -> dict | None:
    """The source card at ``path``; None for anything else (a task's own data file, a missing file)."""
    try:
        if path.stat().st_size > CARD_MAX_BYTES:
            return None
        card = json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(card, dict):
        return None
    return card if isinstance(card.get("benchmark"), str) or isinstance(card.get("family"), str) else None


def config_cards(config: dict, folder: Path) -> list[dict]:
    """The source cards a task config's ``dataset_kwargs.data_files`` names (relative to ``folder``)."""
    data_files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
    cards = []
    for name in data_files.values() if isinstance(data_files, dict) else []:
        card = read_source_card(folder / str(name))
        if card is not None:
            cards.append(card)
    return cards


def prompt_template(config: dict) -> str:
    """The prompt template a task's probes are rendered with (its ``lmms_eval_specific_kwargs``)."""
    default = (config.get("lmms_eval_specific_kwargs") or {}).get("default") or {}
    return default.get("prompt_template", DEFAULT_PROMPT_TEMPLATE)


def source_cards(task_names: str, extra_dirs: list[str] = ()) -> list[dict]:
    """The source cards of the named tasks and groups (ours and those under ``extra_dirs``);
    names that are not ours (lmms-eval's tasks) have none."""
    found, _ = named_tasks(task_names, extra_dirs)
    return [card for _, path in found for card in config_cards(task_config(path), path.parent)]


def cards_by_task(task_names: str, extra_dirs: list[str] = ()) -> dict[str, dict]:
    """{task: its (first) source card} of the named tasks and groups' members that have one."""
    found, _ = named_tasks(task_names, extra_dirs)
    out = {}
    for task, path in found:
        cards = config_cards(task_config(path), path.parent)
        if cards:
            out[task] = cards[0]
    return out


def task_cards(results: dict[str, Any]) -> dict[str, dict]:
    """Task -> its source card: as recorded in the results (``mmke.cards``, written by mmke-eval),
    else read from the card file the task config names, else (results made on another machine)
    the card of that file name in the installed task folder."""
    recorded = (results.get("mmke") or {}).get("cards") or {}
    cards: dict[str, dict] = {task: card for task, card in recorded.items() if isinstance(card, dict)}
    for task, config in (results.get("configs") or {}).items():
        if task in cards:
            continue
        data_files = ((config or {}).get("dataset_kwargs") or {}).get("data_files") or {}
        for path in data_files.values() if isinstance(data_files, dict) else []:
            card = read_source_card(Path(str(path))) or installed_card(Path(str(path)).name)
            if card is not None:
                cards[task] = card
                break
    return cards


def installed_card(name: str) -> dict | None:
    """The card of that file name in our installed task folder (``<family>/sources/<name>``, the
    mini's ``<family>/mini/sources/<name>``)."""
    for path in sorted(tasks_dir().glob(f"*/sources/{name}")) + sorted(tasks_dir().glob(f"*/mini/sources/{name}")):
        return read_source_card(path)
    return None


# -- names ---------------------------------------------------------------------------------------
# --tasks values lmms-eval answers with a listing instead of a run.
LMMS_EVAL_LISTINGS = ("list", "list_groups", "list_tags", "list_subtasks")


class UnknownTask(ValueError):
    pass


def check_task_names(task_names: str, extra_dirs: list[str] = ()) -> None:
    """Every name of --tasks is one of our tasks or groups, one of lmms-eval's (its own task folder
    and --include_path), a task YAML file, or a wildcard matching one; else an error with the
    close name, before anything loads (lmms-eval finds out after the model has loaded, and its
    `lmms-eval --tasks list` does not show our tasks)."""
    import difflib
    import fnmatch

    tasks, groups = task_index(extra_dirs)
    ours = {*tasks, *groups}
    names = [name.strip() for name in task_names.split(",") if name.strip()]
    if not names:
        raise UnknownTask("--tasks: no task named")

    def known(name: str, among: set[str] | frozenset[str]) -> bool:
        return name in among or ("*" in name and any(fnmatch.fnmatchcase(task, name) for task in among))

    unknown = [name for name in names if not (known(name, ours) or name in LMMS_EVAL_LISTINGS or os.path.isfile(name))]
    if not unknown:
        return
    theirs = lmms_eval_task_names(tuple(extra_dirs))  # only now: indexing lmms-eval's tasks takes seconds
    unknown = [name for name in unknown if not known(name, theirs)]
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, ours, n=1) or difflib.get_close_matches(name, theirs, n=1)
    did_you_mean = f" Did you mean {close[0]!r}?" if close else ""
    others = f" (and {len(unknown) - 1} more unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    raise UnknownTask(f"--tasks {name}: no such task or group{others}.{did_you_mean} `mmke-eval list` lists ours; "
                      "lmms-eval's own are listed by `lmms-eval --tasks list`")


@lru_cache(maxsize=4)
def lmms_eval_task_names(extra_dirs: tuple[str, ...] = ()) -> frozenset[str]:
    """Names lmms-eval knows (tasks, groups, tags) from its own task folder, ours and ``extra_dirs``.
    The index is kept (mmke_eval/lmms/patches.py): the run's lmms-eval, given the same folders, reuses it.
    lmms-eval's log of the YAMLs it cannot read is silenced while it indexes, and only then."""
    from loguru import logger as eval_logger

    from lmms_eval.tasks import TaskManager
    from mmke_eval.lmms.patches import install_task_loading

    install_task_loading()
    eval_logger.disable("lmms_eval")
    try:
        return frozenset(TaskManager("ERROR", include_path=[str(tasks_dir()), *extra_dirs]).all_tasks)
    finally:
        eval_logger.enable("lmms_eval")
