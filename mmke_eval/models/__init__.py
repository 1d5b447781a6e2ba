"""What ``LMMS_EVAL_PLUGINS=mmke_eval`` makes lmms-eval import (its plugin convention).

lmms-eval registers each ``AVAILABLE_MODELS`` entry as ``mmke_eval.models.<name>.<Class>`` (the
entry point in pyproject.toml registers the same model for installed copies), and importing
this module installs the patches that let lmms-eval find our tasks without ``--include_path``
(mmke_eval/lmms/patches.py).
"""

from mmke_eval.lmms.patches import install_task_loading

AVAILABLE_MODELS = {"edited": "EditedLMM"}

install_task_loading()
