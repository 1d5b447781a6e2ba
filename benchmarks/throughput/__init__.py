"""The pieces of ``benchmarks/edit_throughput.py`` (the script is the entry point and documents the method):

* ``models.py``: the models and data of ``--model tiny|world|compute``;
* ``memory.py``: peak-RSS measurement;
* ``paths.py``: the timed paths, ours, the naive per-probe loop and the limit, and the call counter;
* ``worker.py``: one (editor, path) run in a fresh process;
* ``report.py``: the scores check (ours against naive, probe by probe), the table and the JSON figures.
"""

DEFAULT_EDITORS = ("none", "ft_llm", "ft_alignment", "ike")
KNOWLEDGE_TYPE = "entity_level"
SEED = 0
MODES = ("ours", "naive")  # compared probe by probe
ALL_MODES = MODES + ("limit",)  # limit: the unavoidable work only, no responses (see run_limit)
MODELS = ("tiny", "world", "compute")
