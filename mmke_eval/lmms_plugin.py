"""lmms-eval model registration (entry point group ``lmms_eval.models``, see pyproject.toml)."""

from lmms_eval.models.registry_v2 import ModelManifest


def manifests() -> list[ModelManifest]:
    return [ModelManifest(model_id="edited", simple_class_path="mmke_eval.wrapper.EditedLMM")]
