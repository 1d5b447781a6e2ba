"""Train the mmke_mini world model: a small LLaVA that knows the world of ``generate.py`` (seed 0).

The shipped model was made in two runs (about 40 + 25 minutes on 2 cores):

    python -m mmke_eval.mini.train_world --out stage1
    python -m mmke_eval.mini.train_world --out mmke_eval/mini/world_model --init stage1 \
        --vision_steps 0 --steps 6000 --lr 5e-4 --warmup 200 --scene_share 0.5 --perception_frac 0 --eval_every 0

The second stage continues the first with half of the entity picture questions being MIKE's
scene questions ("Does {name} appear in the picture?"): from scratch the model learns to answer
"yes" to nearly all of them, and only the continuation teaches it to say "no".

* Architecture: ``transformers.LlavaForConditionalGeneration`` with a small CLIP vision tower and
  a small Llama language model; a byte-level BPE tokenizer trained on the world's text (every
  name and answer word is one token); a ``LlavaProcessor`` with a PIL CLIP image processor.
* Data: every fact of the world (all train and eval subjects, the locality facts, perception of
  drawings), asked exactly as the benchmark asks, on images the script draws itself from its own
  random stream: no image of the benchmark is ever trained on. Plus in-context editing examples in
  the IKE format whose answers must be read from the last ``New Fact:`` line (counterfactual facts
  drawn at random, with distractor demonstrations before them).
* Curriculum: perception questions first (shape, colour, pattern, arrows, item kind), then all.
* Deterministic: seeded sampling and initialisation; the same torch version and thread count give
  the same weights. Prints progress, writes ``train_log.txt`` and ``metrics.json`` beside the model.
* Measured at the end, on the saved (fp16) model reloaded in fp32: teacher-forced token accuracy of
  the benchmark's probes answered with the ORIGINAL facts, on the benchmark's own images (held
  out: rephrase, one-hop and locality images) and on fresh renders.

Modules, in the order a run uses them: ``config.py`` (the options), ``texts.py`` (every question
and answer trained on), ``build.py`` (tokenizer, processor, untrained LLaVA), ``examples.py``
(encoding, image pool, batches), ``vision.py`` (stage A), ``sampler.py`` (training examples),
``train.py`` (the loop), ``measure.py`` (the MMKE loader's probes scored by the product adapter),
``__main__.py`` (the command).
"""
