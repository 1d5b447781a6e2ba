"""mmke_mini's benchmark generator: deterministic, MMKE-Bench fields per type, disjoint splits, images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmke_eval.mini import generate as G

COMMON = ["knowledge_type", "src", "pred", "alt", "rephrase", "image", "image_rephrase",
          "loc", "loc_ans", "m_loc", "m_loc_q", "m_loc_a", "port_new"]
PAIRED = ["rel_1", "rel_1_ans", "rel_2", "rel_2_ans", "m_rel_1", "m_rel_1_ans", "m_rel_2", "m_rel_2_ans"]
FIELDS = {
    "entity": COMMON + PAIRED,
    "user": COMMON + PAIRED + ["one_hop_img"],
    "visual": COMMON + ["rel", "rel_ans", "m_rel", "m_rel_ans", "image_rephrase_question", "one_hop_img"],
}
KNOWLEDGE_TYPE = {"entity": "entity_level", "user": "user_specific", "visual": "visual_knowledge"}
IMAGE_FIELDS = ("image", "image_rephrase", "m_loc", "one_hop_img")


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory) -> Path:
    return G.generate(tmp_path_factory.mktemp("mini"), seed=0)


def _records(root: Path, stem: str, split: str) -> list[dict]:
    return json.loads((root / "data_json" / f"{stem}_{split}.json").read_text())


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(mini_root, tmp_path):
    again = G.generate(tmp_path / "again", seed=0)
    assert _digest(again) == _digest(mini_root)
    other = G.generate(tmp_path / "other", seed=1, n_eval=3, n_train=2)
    assert _records(other, "entity", "eval")[0]["pred"] != _records(mini_root, "entity", "eval")[0]["pred"]


@pytest.mark.parametrize("stem", ["entity", "user", "visual"])
def test_fields_counts_and_answers(mini_root, stem):
    for split in ("train", "eval"):
        records = _records(mini_root, stem, split)
        assert len(records) == 40
        for rec in records:
            assert set(rec) == set(FIELDS[stem]) | {G.EXTRA_KEY}, sorted(set(rec) ^ set(FIELDS[stem]))
            assert rec["knowledge_type"] == KNOWLEDGE_TYPE[stem]
            assert rec["alt"] and rec["alt"] != rec["pred"]
            (port,) = rec["port_new"]
            assert port["port_type"] == "1-hop" and set(port["Q&A"]) == {"Question", "Answer"}
            original = rec[G.EXTRA_KEY]["original_answers"]
            # every edited answer differs from the original one, the portability answer included
            if stem == "visual":
                assert rec["rel_ans"] == rec["m_rel_ans"] != original["rel_ans"]
            else:
                for n in (1, 2):
                    assert rec[f"rel_{n}_ans"] == rec[f"m_rel_{n}_ans"] != original[f"rel_{n}_ans"]
            assert port["Q&A"]["Answer"] != original["port"]
            for value in rec.values():
                if isinstance(value, str):
                    assert value.strip() == value and value


def test_train_and_eval_share_no_case(mini_root):
    for stem in ("entity", "user", "visual"):
        train = {r["pred"] for r in _records(mini_root, stem, "train")}
        evals = {r["pred"] for r in _records(mini_root, stem, "eval")}
        assert len(train) == 40 and len(evals) == 40 and not train & evals
        train_images = {r["image"] for r in _records(mini_root, stem, "train")}
        assert not train_images & {r["image"] for r in _records(mini_root, stem, "eval")}


def test_images_exist_and_rephrase_images_differ(mini_root):
    for stem in ("entity", "user", "visual"):
        for split in ("train", "eval"):
            for rec in _records(mini_root, stem, split):
                arrays = {}
                for field in IMAGE_FIELDS:
                    if field in rec:
                        with Image.open(mini_root / "data_image" / rec[field]) as im:
                            assert im.size == (64, 64) and im.mode == "RGB"
                            arrays[field] = np.asarray(im, dtype=np.int16)
                assert np.abs(arrays["image"] - arrays["image_rephrase"]).mean() > 5
                if "one_hop_img" in arrays:
                    assert np.abs(arrays["image"] - arrays["one_hop_img"]).mean() > 5


def test_loads_through_the_mmke_loader(mini_root):
    from mmke_tasks.mmke.loader import load_cases

    for kt in ("entity_level", "visual_knowledge", "user_specific"):
        cases, report = load_cases(mini_root, kt, "eval", benchmark="mmke_mini")
        assert len(cases) == 40 and report.n_skipped == 0
        kinds = [p.kind for p in cases[0].probes]
        assert {"t_rel", "i_rel", "i_gen", "t_loc", "i_loc", "port"} == set(kinds)


def test_ensure_generated_is_idempotent_and_regenerates_when_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("MMKE_CACHE", str(tmp_path / "cache"))
    root = G.ensure_generated()
    assert root == tmp_path / "cache" / "mmke_mini" / f"v{G.GENERATOR_VERSION}-seed0"
    stamp = root / G.STAMP_FILE
    mtime = stamp.stat().st_mtime_ns
    assert G.ensure_generated() == root and stamp.stat().st_mtime_ns == mtime
    stamp.write_text(json.dumps({"generator": "mmke_mini", "version": -1, "seed": 0}))
    (root / "data_json" / "entity_eval.json").write_text("[]")
    assert G.ensure_generated() == root
    assert len(_records(root, "entity", "eval")) == 40
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_world_words_single_and_names_unique():
    from mmke_eval.mini.world import build_world

    world = build_world(0)
    names = [e.name for e in world.all_entities()] + list(world.users) + world.cities + world.countries
    assert len(names) == len(set(names))
    with pytest.raises(ValueError):
        build_world(0, n_eval=60, n_train=60)  # more signs than distinct drawings
