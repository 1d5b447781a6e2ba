"""mmke-eval inside lmms-eval: the models' registration and three fixes to lmms-eval 0.7.3's task loading.

Besides the ``edited`` wrapper, the entry point returns the backends lmms-eval lacks
(mmke_eval/backends/: ``blip2_hf``, ``minigpt4``), so an installed mmke-eval needs no new entry
point for them. The ``edited`` model is registered through the entry point group ``lmms_eval.models`` (see
pyproject.toml). Our tasks come in through ``--include_path``, which ``mmke-eval`` adds itself,
or through ``LMMS_EVAL_PLUGINS=mmke_eval``: lmms-eval then imports ``mmke_eval.models``, which
calls ``install_fixes``:

* **Plugin tasks.** lmms-eval 0.7.3 adds ``<plugin>.tasks`` to its task path only after it has
  built its task index (``__main__.cli_evaluate_single``), so a plugin's tasks are never found
  ("Tasks not found"). The fix indexes our task folder from the start when ``LMMS_EVAL_PLUGINS``
  names ``mmke_eval``.
* **Includes by package path.** A task YAML's ``include:`` is looked up relative to the current
  folder, then to the YAML's own folder, so ``include: mmke_tasks/mmke/_default_template_yaml``
  works only from a checkout's root. The fix looks such a path up in the installed ``mmke_tasks``
  folder when neither place has it, so a task written anywhere can include our templates.

* **One task index per process.** Every evaluation builds a TaskManager, which parses every
  task YAML lmms-eval ships (about 12 s on 2 CPU cores), so ``mmke-eval --editor a,b,c`` paid it
  once per editor. The index is kept and handed out again (a copy) while no file under the
  indexed folders changed: the key holds every file's path, size and modification time.

Each wraps one lmms-eval function, leaves every other call unchanged, and is installed once.
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmms_eval.models.registry_v2 import ModelManifest

PLUGINS_ENV = "LMMS_EVAL_PLUGINS"
PACKAGE = "mmke_eval"
TASKS_PACKAGE = "mmke_tasks"


def manifests() -> list[ModelManifest]:
    # Imported here, not at the top: importing lmms_eval.models builds its registry, which calls
    # this function; a top-level import would make importing this module first leave 'edited'
    # out of the registry (a circular import lmms-eval only logs).
    from lmms_eval.models.registry_v2 import ModelManifest

    from mmke_eval.backends.no_torchvision import allow_image_only_processors

    allow_image_only_processors()  # Qwen2-VL / OneVision processors on a CPU torch without torchvision
    return [
        ModelManifest(model_id="edited", simple_class_path="mmke_eval.wrapper.EditedLMM"),
        ModelManifest(model_id="blip2_hf", simple_class_path="mmke_eval.backends.blip2_hf.Blip2HF"),
        ModelManifest(model_id="minigpt4", simple_class_path="mmke_eval.backends.minigpt4.MiniGPT4"),
    ]


def install_fixes() -> None:
    """Install both fixes (idempotent)."""
    import lmms_eval.utils
    from lmms_eval.tasks import TaskManager

    if not getattr(TaskManager.initialize_tasks, "_mmke_fix", False):
        index_tasks = TaskManager.initialize_tasks

        def initialize_tasks(self, include_path=None, include_defaults=True):
            include_path = with_plugin_tasks(include_path)
            key = task_index_key(include_path, include_defaults)
            if key not in _TASK_INDEXES:
                _TASK_INDEXES.clear()  # one index at a time: a changed file makes the old one useless
                _TASK_INDEXES[key] = index_tasks(self, include_path=include_path, include_defaults=include_defaults)
            return copy.deepcopy(_TASK_INDEXES[key])

        initialize_tasks._mmke_fix = True
        TaskManager.initialize_tasks = initialize_tasks

    if not getattr(lmms_eval.utils.load_yaml_config, "_mmke_fix", False):
        load_yaml_config = lmms_eval.utils.load_yaml_config

        # lmms-eval resolves an include by calling this module attribute with the joined path
        # (yaml_dir/include), so replacing the attribute reaches nested includes too.
        def load_yaml_config_with_package_includes(yaml_path=None, yaml_config=None, yaml_dir=None, mode="full"):
            if yaml_path is not None and yaml_config is None:
                yaml_path = package_include(yaml_path)
            return load_yaml_config(yaml_path=yaml_path, yaml_config=yaml_config, yaml_dir=yaml_dir, mode=mode)

        load_yaml_config_with_package_includes._mmke_fix = True
        lmms_eval.utils.load_yaml_config = load_yaml_config_with_package_includes


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
