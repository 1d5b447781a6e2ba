"""Old import path, kept only for benchmarks/edit_throughput.py: the loader is mmke_tasks/mmke/loader.py.
Remove once that script imports it from there."""

from mmke_tasks.mmke.loader import load_cases  # noqa: F401
