"""The ``edited`` model under the module path lmms-eval's LMMS_EVAL_PLUGINS convention expects."""

from mmke_eval.lmms.model import EditedLMM

__all__ = ["EditedLMM"]
