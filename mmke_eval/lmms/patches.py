"""Every change mmke-eval makes to lmms-eval's internals, in one place, each with why.

Written for lmms-eval 0.7.3 (``TESTED_LMMS_EVAL``). Each patch wraps one function and forwards
``*args, **kwargs`` untouched, so a keyword a later lmms-eval adds passes through; each is
installed once (idempotent), and ``install`` checks the installed version first: on another
version every patch whose target still exists is installed with one warning naming them, and a
patch whose target is gone is not installed, with a line saying what is unsupported then.

* ``response_cache_bypass`` (run-time): lmms-eval's ``--use_cache`` keys answers by the prompt
  text only, not by the case's answers, images or edit, so for the `edited` model it would serve
  scores computed for other inputs. The `edited` model's requests skip it (the journal resumes
  finished cases instead). Without it (target gone): the `edited` model refuses ``--use_cache``.
* ``canonical_standard_errors`` (run-time): lmms-eval takes ``np.std`` of a task's per-document
  items in the order it collected them, which in several processes is rank by rank, so the last
  digit of a standard error depended on the number of processes. Items shaped like ours
  (``{"case", "score"}``) are put in one canonical order first; other tasks' items are left alone.
* ``one_task_index`` (task loading): every evaluation built a TaskManager that parses every task
  YAML lmms-eval ships (about 12 s on 2 CPU cores), once per editor of ``--editor a,b,c``. The
  index is kept and handed out again (a copy) while no file under the indexed folders changed.
  It also indexes our tasks from the start under ``LMMS_EVAL_PLUGINS=mmke_eval``: 0.7.3 adds a
  plugin's task folder only after it built its index, so a plugin's tasks were never found.
* ``package_includes`` (task loading): a task YAML's ``include:`` is looked up relative to the
  current folder, then to the YAML's folder, so ``include: mmke_tasks/mmke/_default_template_yaml``
  worked only from a checkout's root. Such a path is looked up in the installed ``mmke_tasks``.

``image_only_processors`` (a transformers change, mmke_eval/backends/no_torchvision.py) is not
installed here: the `edited` model applies it only while it loads a backend, and only where
torchvision is missing.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import logging
import os
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger("mmke_eval")

TESTED_LMMS_EVAL = "0.7.3"
PLUGINS_ENV = "LMMS_EVAL_PLUGINS"
PACKAGE = "mmke_eval"
TASKS_PACKAGE = "mmke_tasks"
_MARK = "_mmke_patch"
_warned_version = False
unsupported: dict[str, str] = {}  # patch name -> what does not work on this lmms-eval (for errors and tests)


def lmms_eval_version() -> str:
    from mmke_eval.resources import package_version

    return package_version("lmms_eval") or package_version("lmms-eval") or "unknown"


def _wrap(owner: Any, attribute: str, name: str, make: Callable[[Callable], Callable], missing: str) -> bool:
    """Replace ``owner.attribute`` by ``make(original)`` once; False (and ``missing`` recorded) if
    lmms-eval has no such attribute."""
    original = getattr(owner, attribute, None)
    if original is None:
        if name not in unsupported:
            unsupported[name] = missing
            logger.warning("mmke-eval: lmms-eval %s has no %s.%s: %s", lmms_eval_version(), getattr(owner, "__name__", owner),
                           attribute, missing)
        return False
    if getattr(original, _MARK, None) == name:
        return True
    replacement = functools.wraps(original)(make(original))
    setattr(replacement, _MARK, name)
    setattr(owner, attribute, replacement)
    return True


def _check_version(names: list[str]) -> None:
    global _warned_version
    version = lmms_eval_version()
    if version != TESTED_LMMS_EVAL and not _warned_version:
        _warned_version = True
        logger.warning("mmke-eval's changes to lmms-eval internals (%s) were written for lmms-eval %s; this is %s: "
                       "they are installed untested (mmke_eval/lmms/patches.py)", ", ".join(names), TESTED_LMMS_EVAL, version)


# -- task loading (every process that loads our tasks) ---------------------------------------------
def install_task_loading() -> None:
    """``one_task_index`` and ``package_includes``."""
    import lmms_eval.utils
    from lmms_eval.tasks import TaskManager

    _check_version(["one_task_index", "package_includes"])

    def one_task_index(index_tasks):
        signature = inspect.signature(index_tasks)

        def initialize_tasks(self, *args, **kwargs):
            call = signature.bind(self, *args, **kwargs)
            call.apply_defaults()
            call.arguments["include_path"] = with_plugin_tasks(call.arguments.get("include_path"))
            key = task_index_key(call.arguments["include_path"], call.arguments.get("include_defaults", True))
            if key not in _TASK_INDEXES:
                _TASK_INDEXES.clear()  # one index at a time: a changed file makes the old one useless
                _TASK_INDEXES[key] = index_tasks(*call.args, **call.kwargs)
            return copy.deepcopy(_TASK_INDEXES[key])
        return initialize_tasks

    _wrap(TaskManager, "initialize_tasks", "one_task_index", one_task_index,
          "tasks are indexed once per evaluation, and LMMS_EVAL_PLUGINS=mmke_eval finds no task (use --include_path)")

    # lmms-eval resolves an include by calling this module attribute with the joined path
    # (yaml_dir/include), so replacing the attribute reaches nested includes too.
    def package_includes(load_yaml_config):
        signature = inspect.signature(load_yaml_config)

        def load_yaml_config_with_package_includes(*args, **kwargs):
            call = signature.bind(*args, **kwargs)
            if call.arguments.get("yaml_path") is not None and call.arguments.get("yaml_config") is None:
                call.arguments["yaml_path"] = package_include(call.arguments["yaml_path"])
            return load_yaml_config(*call.args, **call.kwargs)
        return load_yaml_config_with_package_includes

    _wrap(lmms_eval.utils, "load_yaml_config", "package_includes", package_includes,
          "a task YAML outside a checkout cannot include mmke_tasks/... by package path")


_TASK_INDEXES: dict[str, dict] = {}


def task_index_key(include_path: Any, include_defaults: bool) -> str:
    """What a task index depends on: the indexed folders and the path, size and modification
    time of every file in them (lmms-eval's own task folder included)."""
    import lmms_eval.tasks

    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path or [])
    folders = ([str(Path(lmms_eval.tasks.__file__).parent)] if include_defaults else []) + [str(p) for p in paths]
    digest = hashlib.sha256(repr((folders, include_defaults)).encode())
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                try:
                    stat = os.stat(os.path.join(root, name))
                except OSError:
                    continue
                digest.update(f"{root}/{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def plugin_enabled() -> bool:
    return PACKAGE in [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",")]


def with_plugin_tasks(include_path: Any) -> Any:
    """``include_path`` plus our task folder when ``LMMS_EVAL_PLUGINS`` names mmke_eval (once)."""
    if not plugin_enabled():
        return include_path
    from mmke_eval.resources import tasks_dir

    paths = [include_path] if isinstance(include_path, str) else list(include_path or [])
    ours = tasks_dir()
    if not any(isinstance(p, str) and Path(p).expanduser().resolve() == ours for p in paths):
        paths.append(str(ours))
    return paths


def package_include(path: Any) -> Any:
    """A YAML path that does not exist but names a file of the ``mmke_tasks`` package
    (``.../mmke_tasks/<rest>``): that file in the installed package. Anything else: unchanged."""
    if not isinstance(path, (str, os.PathLike)) or os.path.isfile(path):
        return path
    parts = Path(path).parts
    if TASKS_PACKAGE not in parts:
        return path
    from mmke_eval.resources import tasks_dir

    last = len(parts) - 1 - parts[::-1].index(TASKS_PACKAGE)  # the last "mmke_tasks" in the path
    rest = parts[last + 1:]
    candidate = tasks_dir().joinpath(*rest)
    return str(candidate) if rest and candidate.is_file() else path


# -- evaluation (installed when an `edited` model is built) ----------------------------------------
def install_run_time(model_class: type) -> None:
    """``response_cache_bypass`` (for instances of ``model_class``) and ``canonical_standard_errors``."""
    from lmms_eval.caching.response_cache import ResponseCache
    from lmms_eval.evaluator_utils import TaskOutput

    _check_version(["response_cache_bypass", "canonical_standard_errors"])

    def response_cache_bypass(original):
        warned = []

        def execute(self, lm, reqtype, requests, *args, **kwargs):
            if isinstance(lm, model_class):
                if not warned:
                    logger.warning("lmms-eval's --use_cache is off for the edited model (its key lacks the case content); "
                                   "finished cases are resumed from the journal (journal=PATH) instead")
                    warned.append(True)
                return getattr(lm, reqtype)(requests)
            return original(self, lm, reqtype, requests, *args, **kwargs)
        return execute

    _wrap(ResponseCache, "execute", "response_cache_bypass", response_cache_bypass,
          "--use_cache cannot be bypassed for the edited model: do not pass --use_cache")

    def canonical_standard_errors(original):
        def calculate_clt_aggregate_metric(self, *args, **kwargs):
            for key, items in list(self.sample_metrics.items()):
                if items and all(isinstance(x, dict) and "case" in x and "score" in x for x in items):
                    self.sample_metrics[key] = sorted(items, key=lambda x: (str(x["case"]), repr(x["score"])))
            return original(self, *args, **kwargs)
        return calculate_clt_aggregate_metric

    _wrap(TaskOutput, "calculate_clt_aggregate_metric", "canonical_standard_errors", canonical_standard_errors,
          "standard errors of multi-process runs may differ in the last digit from one process's")
