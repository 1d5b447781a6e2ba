"""Reports from lmms-eval results.

* ``rows``: the rows and Markdown table of one run (what ``mmke-eval`` prints after a run);
* ``runs``: results folders (ours and plain lmms-eval ones) read back as runs, with what
  identifies them: model, editor, protocol, data;
* ``tables``: paper-style tables across runs (``mmke-eval report``), Markdown, LaTeX or CSV;
* ``compare``: what changed between two runs, per metric and per case (``mmke-eval compare``);
* ``plots``: radar, grouped-bar and sequential-gap figures (matplotlib, imported only for --plot).
"""

from mmke_eval.report.rows import NO_SCORED_CASE, format_table, table_rows, task_families

__all__ = ["NO_SCORED_CASE", "format_table", "table_rows", "task_families"]
