"""lmms-eval model registration (entry point group ``lmms_eval.models``, see pyproject.toml).

Besides the ``edited`` wrapper, the backends lmms-eval lacks (mmke_eval/backends/); they are
returned by the same entry point, so an installed mmke-eval needs no new entry point for them.
"""

from lmms_eval.models.registry_v2 import ModelManifest


def manifests() -> list[ModelManifest]:
    from mmke_eval.backends.no_torchvision import allow_image_only_processors

    allow_image_only_processors()  # Qwen2-VL / OneVision processors on a CPU torch without torchvision
    return [
        ModelManifest(model_id="edited", simple_class_path="mmke_eval.wrapper.EditedLMM"),
        ModelManifest(model_id="blip2_hf", simple_class_path="mmke_eval.backends.blip2_hf.Blip2HF"),
        ModelManifest(model_id="minigpt4", simple_class_path="mmke_eval.backends.minigpt4.MiniGPT4"),
    ]
