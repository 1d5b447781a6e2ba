"""The shipped mmke_mini world model: loads offline and knows the world (original facts, locality items)."""

from __future__ import annotations

import json
import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmke_eval.mini import generate as G  # noqa: E402
from mmke_eval.mini import world as W  # noqa: E402
from mmke_tasks.mmke import generator as mmke_generator  # noqa: E402

from mmke_eval.mini import WORLD_MODEL_DIR as MODEL_DIR  # noqa: E402

# Measured on the full eval split in the run that made the shipped weights (world_model/metrics.json),
# minus a margin for the small sample drawn here.
THRESHOLDS = {"t_rel": 80.0, "i_rel": 80.0, "i_gen": 80.0, "port": 80.0, "t_loc": 80.0, "i_loc": 80.0}
PER_KIND = 24

@pytest.fixture(scope="module")
def loaded():
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = LlavaForConditionalGeneration.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(MODEL_DIR)
    return model, processor


@pytest.fixture(scope="module")
def eval_records():
    """The eval split's records and the drawings they name (drawn only when a test needs one)."""
    records, images = mmke_generator.build_records(W.build_world(0))
    return {key: recs for key, recs in records.items() if key[1] == "eval"}, images


@pytest.fixture(scope="module")
def eval_root(eval_records, tmp_path_factory):
    """The eval split in the release layout, with only the drawings its records name (the family
    loader, which the measurement asks through, reads files)."""
    records, images = eval_records
    root = tmp_path_factory.mktemp("mmke_mini_eval")
    (root / "data_json").mkdir()
    for (stem, split), recs in records.items():
        (root / "data_json" / f"{stem}_{split}.json").write_text(json.dumps(recs))
    named = {v for recs in records.values() for rec in recs for v in rec.values() if isinstance(v, str) and v in images}
    G.write_images(root / "data_image", {rel: images[rel] for rel in named})
    return root


def test_shipped_files_small_and_complete():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {"train_log.txt", "metrics.json"} <= names
    size = sum(p.stat().st_size for p in MODEL_DIR.iterdir())
    assert size < 12e6, f"world model folder is {size / 1e6:.1f} MB"
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "llava"
    assert config["mmke_family"] == "mmke_mini_world"  # registry.yaml's editor defaults for it


def test_trained_on_the_current_world():
    """A change to the world (WORLD_VERSION bump) must come with a retrained model."""
    metrics = json.loads((MODEL_DIR / "metrics.json").read_text())
    assert metrics["world_version"] == W.WORLD_VERSION


def test_world_words_are_single_tokens(loaded):
    _, processor = loaded
    world = W.build_world(0)
    for word in world.words():
        assert len(processor.tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1, word


def test_answers_original_knowledge_and_locality(loaded, eval_root):
    """Benchmark images are held out: the world model never trained on them."""
    from mmke_eval.mini.train_world.measure import original_probes, summarise, token_accuracies

    model, processor = loaded
    probes = original_probes(eval_root, splits=("eval",))
    rng = random.Random(0)
    sample = []
    for kind in THRESHOLDS:
        sample += rng.sample([p for p in probes if p["kind"] == kind], PER_KIND)
    table = summarise(sample, token_accuracies(model, processor, sample, batch=48))
    for kind, threshold in THRESHOLDS.items():
        assert table[kind]["all"] >= threshold, (kind, table[kind])


def test_raw_format_matches_the_processor(loaded, eval_records):
    """The benchmark's raw input (BOS, image tokens, "question answer") through the saved processor."""
    _, processor = loaded
    records, images = eval_records
    rec = records[("entity", "eval")][0]
    image = W.render(*images[rec["image"]])
    enc = processor(text="<image>" + rec["m_rel_1"] + " " + rec["m_rel_1_ans"], images=[image], return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert ids[0] == processor.tokenizer.bos_token_id
    assert ids[1:17] == [image_id] * 16 and image_id not in ids[17:]
    assert enc["pixel_values"].shape[-2:] == (32, 32)


# The other families' minis (mmke_tasks/<family>/generator.py): what their probes build on, sampled, with the same margin.
FAMILY_KINDS = {
    "vlkeb": ("rel", "t_gen", "port_2hop", "port_3hop", "port_4hop", "i_loc"),
    "mmedit": ("rel", "t_gen", "i_loc"),
    "mike": ("vna", "vna_rephrase", "elc", "csr_yes", "csr_no"),
}


@pytest.mark.parametrize("family", sorted(FAMILY_KINDS))
def test_knows_what_the_other_families_ask(loaded, family, tmp_path):
    from mmke_eval.mini import generate as G
    from mmke_eval.mini.train_world.measure import summarise, token_accuracies

    model, processor = loaded
    probes = G.knowledge_probes(family, G.generate_any(family, tmp_path / family))
    rng = random.Random(1)
    sample = []
    for kind in FAMILY_KINDS[family]:
        sample += rng.sample([p for p in probes if p["kind"] == kind], 16)
    table = summarise(sample, token_accuracies(model, processor, sample, batch=48))
    for kind in FAMILY_KINDS[family]:
        assert table[kind]["all"] >= 80.0, (family, kind, table[kind])
    measured = json.loads((MODEL_DIR / "metrics.json").read_text())["other_families"][f"{family}_eval"]
    assert min(v["all"] for v in measured.values()) >= 90.0, measured  # the bar, on the whole eval split
