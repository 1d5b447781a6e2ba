"""The name task YAMLs use for the hooks (``!function mmke_tasks.hooks.process_docs``); they live
in mmke_eval/lmms/hooks.py with the rest of the lmms-eval glue."""

from mmke_eval.lmms.hooks import case_mean, doc_to_text, doc_to_visual, process_docs, process_results

__all__ = ["case_mean", "doc_to_text", "doc_to_visual", "process_docs", "process_results"]
