"""TEMPORARY shim until the editable install is refreshed (entry point now mmke_eval.lmms.plugin:manifests)."""
from mmke_eval.lmms.plugin import manifests  # noqa: F401
