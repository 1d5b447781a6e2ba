"""mmke-eval inside lmms-eval: the models' registration and two fixes to lmms-eval 0.7.3's task loading.

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

Both wrap one lmms-eval function each, leave every other call unchanged, and are installed once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lmms_eval.models.registry_v2 import ModelManifest

PLUGINS_ENV = "LMMS_EVAL_PLUGINS"
PACKAGE = "mmke_eval"
TASKS_PACKAGE = "mmke_tasks"


def manifests() -> list[ModelManifest]:
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
            return index_tasks(self, include_path=with_plugin_tasks(include_path), include_defaults=include_defaults)

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
