"""mmke_mini: the generated benchmark (generate.py, world.py) and the shipped world model (train_world/)."""

from pathlib import Path

# The trained world model shipped with the package (save_pretrained folder, fp16 weights).
WORLD_MODEL_DIR = Path(__file__).resolve().parent / "world_model"
# The lifelong-scale world's model (world.py: build_world(lifelong=True)); a task runs on it when its
# source card says "world_model": "lifelong" (mmke_mini_lifelong).
LIFELONG_WORLD_MODEL_DIR = Path(__file__).resolve().parent / "world_model_lifelong"
WORLD_MODELS = {"base": WORLD_MODEL_DIR, "lifelong": LIFELONG_WORLD_MODEL_DIR}

# The learned editors' checkpoints trained on the generated benchmark's train split, one folder
# per editor (``--editor_args checkpoint=mini``; each folder's editor.json holds its command).
EDITOR_CHECKPOINTS_DIR = Path(__file__).resolve().parent / "editors"
