"""Training learned editors (SERAC, MEND, KE) on a benchmark's train split: ``data`` (the cases
and what the editors train on), ``loop`` (the training loop and validation), ``state`` (the resumable
training state, ``resume.safetensors``). ``mmke-eval train-editor`` (mmke_eval/cli/train.py) is
a thin shell over them."""
