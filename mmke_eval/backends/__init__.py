"""lmms-eval backends for models lmms-eval has none for (BLIP-2, MiniGPT-4), registered through the
``lmms_eval.models`` entry point (mmke_eval/lmms/plugin.py): ``--model blip2_hf`` / ``minigpt4``."""
