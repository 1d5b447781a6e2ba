"""TEMPORARY (coordinator): re-exports until r-cli's one task-YAML reader is merged."""
from mmke_eval.cli import check_task_names, source_cards, task_index  # noqa: F401
from mmke_eval.report.rows import task_cards  # noqa: F401
