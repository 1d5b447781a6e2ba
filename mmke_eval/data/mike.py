"""Old import path, kept only for mini/train_world.py (the world model's curriculum): the loader is
mmke_tasks/mike/loader.py. Remove once the trainer imports it from there."""

from mmke_tasks.mike.loader import CSR_PROMPT, ELC_PROMPT, REPHRASE_PROMPT, VNA_PROMPT  # noqa: F401
