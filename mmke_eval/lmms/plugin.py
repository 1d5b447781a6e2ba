"""mmke-eval's models in lmms-eval's registry (the entry point group ``lmms_eval.models``,
pyproject.toml): the ``edited`` wrapper, and the backends lmms-eval lacks (mmke_eval/backends/:
``blip2_hf``, ``minigpt4``), so an installed mmke-eval needs no other entry point for them.

lmms-eval loads entry-point manifests over its own (``overwrite=True``): a name lmms-eval ships
itself is never registered here, so a later lmms-eval that adds, say, ``minigpt4`` keeps its own,
and a log line says ours is not registered.

Our tasks come in through ``--include_path`` (``mmke-eval`` adds it itself) or through
``LMMS_EVAL_PLUGINS=mmke_eval``: lmms-eval then imports ``mmke_eval.models``, which installs the
task-loading patches (mmke_eval/lmms/patches.py).
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmms_eval.models.registry_v2 import ModelManifest

logger = logging.getLogger("mmke_eval")

MODELS = {
    "edited": "mmke_eval.lmms.model.EditedLMM",
    "blip2_hf": "mmke_eval.backends.blip2_hf.Blip2HF",
    "minigpt4": "mmke_eval.backends.minigpt4.MiniGPT4",
}


def lmms_eval_model_names() -> set[str]:
    """The models lmms-eval itself ships. This runs while ``lmms_eval.models`` is being imported
    (it builds its registry, then calls the entry points): its tables are read from the module
    object, never imported again (a circular import lmms-eval would only log)."""
    module = sys.modules.get("lmms_eval.models")
    names: set[str] = set()
    for table in ("AVAILABLE_SIMPLE_MODELS", "AVAILABLE_CHAT_TEMPLATE_MODELS"):
        for name, class_name in (getattr(module, table, None) or {}).items():
            # lmms-eval's own are class names in its package; a plugin's (LMMS_EVAL_PLUGINS) are full paths
            if "." not in str(class_name) or str(class_name).startswith("lmms_eval."):
                names.add(name)
    return names


def manifests() -> list[ModelManifest]:
    from lmms_eval.models.registry_v2 import ModelManifest

    theirs = lmms_eval_model_names()
    for name in sorted(theirs & MODELS.keys()):
        logger.warning("mmke-eval: lmms-eval ships a model named %r: it is kept, and mmke-eval's %s is not registered", name, MODELS[name])
    return [ModelManifest(model_id=name, simple_class_path=path) for name, path in MODELS.items() if name not in theirs]
