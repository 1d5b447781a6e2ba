"""Old import path, kept only for benchmarks/edit_throughput.py: the fixture is mmke_tasks/mmke/fixture.py.
Remove once that script imports it from there."""

from mmke_tasks.mmke.fixture import write_mmke_fixture  # noqa: F401
