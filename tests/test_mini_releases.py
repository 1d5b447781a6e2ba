"""The other families' minis (mmke_tasks/<family>/generator.py): release layouts their real loaders read,
answers that follow the world's chains, deterministic, and each family end to end on its mini."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmke_eval import families
from mmke_eval.mini import generate as G
from mmke_eval.mini import world as W
from mmke_tasks.mmedit.generator import ensure_mini as ensure_mmedit

WORLD = W.build_world(0)
ENTITIES = {e.name: e for e in WORLD.all_entities()}


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("releases")
    return {f: G.generate_any(f, base / f) for f in G.FAMILIES[1:]}


def _load(family: str, root: Path, **card):
    card = {"benchmark": f"{family}_mini", "family": family, "split": "eval", **card}
    return families.get(family).load(root, card)


def test_same_arguments_same_bytes(roots, tmp_path):
    again = G.generate_any("vlkeb", tmp_path / "again")
    digest = lambda root: {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                           for p in sorted(root.rglob("*")) if p.is_file()}
    assert digest(again) == digest(roots["vlkeb"])


@pytest.mark.parametrize("hop", [1, 2, 3, 4])
def test_vlkeb_hops_follow_the_new_entitys_chain(roots, hop):
    cases, report = _load("vlkeb", roots["vlkeb"], hop=hop)
    assert len(cases) == 40 and report.n_skipped == 0
    records = json.loads((roots["vlkeb"] / "eval_multihop.json").read_text())
    for case, record in zip(cases, records):
        new = ENTITIES[case.target]
        assert case.target != record["pred"] and case.prompt == W.ENTITY_NAME_Q
        (port,) = [p for p in case.probes if p.kind == "port"]
        assert port.question == W.ENTITY_HOP_Q[hop]
        assert port.answer == WORLD.entity_hops(new)[hop]
        # the original entity's chain is what the unedited model should answer
        assert record["mini"]["original_answers"][f"{hop}-hop"] == WORLD.entity_hops(ENTITIES[record["pred"]])[hop]
        if hop <= 3:  # another country, hence another city and ruler (a job may coincide)
            assert port.answer != record["mini"]["original_answers"][f"{hop}-hop"]


def test_vlkeb_entries_come_in_any_order_and_edit_twice_follows_the_second_edit(roots):
    records = json.loads((roots["vlkeb"] / "eval_multihop.json").read_text())
    orders = {tuple(e["port_type"] for e in r["port_new"]) for r in records}
    assert len(orders) > 1
    cases, report = _load("vlkeb", roots["vlkeb"], subset="edit_onehop")
    assert len(cases) == 40 and report.n_skipped == 0
    for case in cases:
        ((question, city),) = case.followup_edits
        (port,) = [p for p in case.probes if p.kind == "port"]
        assert question == W.ENTITY_HOP_Q[1] and port.answer == WORLD.city_country[city]
    train, _ = families.get("vlkeb").load(roots["vlkeb"], {"benchmark": "vlkeb_mini", "family": "vlkeb", "split": "train"})
    assert len(train) == 40 and not {c.original for c in train} & {c.original for c in cases}  # other subjects


@pytest.mark.parametrize("subset", ["vqa", "caption"])
def test_mmedit_layout_and_rephrases(roots, subset):
    cases, report = _load("mmedit", roots["mmedit"], subset=subset)
    assert len(cases) == 60 and report.n_skipped == 0
    for case in cases:
        assert Path(case.image).parent.name == "val2014"
        assert Path(case.rephrase_image).parent.name == "val2014_image_rephrase"
        assert case.target != case.original and case.rephrase_prompt != case.prompt
        if subset == "vqa":
            assert W.IMAGE_Q_REPHRASE[case.prompt] == case.rephrase_prompt


def test_mike_names_come_from_the_other_split_and_captions_name_them(roots):
    cases, report = _load("mike", roots["mike"], subset="elc")
    assert len(cases) == 40 and report.n_skipped == 0
    records = json.loads((roots["mike"] / "mike_eval.json").read_text())
    train_names = [e.name for e in WORLD.entities["train"]]
    for i, (case, record) in enumerate(zip(cases, records)):
        assert case.target == train_names[i] != record["mini"]["original_answers"]["name"]
        assert len(case.extra_images) == 3  # multi-step editing: up to 4 edit images
        (gen,) = [p for p in case.probes if p.kind == "i_gen"]
        assert gen.answer.startswith(case.target + ", a ")


def test_knowledge_probes_ask_the_original_answers(roots):
    probes = G.knowledge_probes("vlkeb", roots["vlkeb"])
    assert {p["kind"] for p in probes} == {"rel", "t_gen", "i_gen", "port_1hop", "port_2hop", "port_3hop", "port_4hop", "t_loc", "i_loc"}
    first = [p for p in probes if p["case"] == "eval/0"]
    entity = WORLD.entities["eval"][0]
    assert {p["kind"]: p["answer"] for p in first}["port_4hop"] == WORLD.entity_hops(entity)[4]
    kinds = {p["kind"] for p in G.knowledge_probes("mike", roots["mike"], "train")}
    assert kinds == {"vna", "vna_rephrase", "vna_other_image", "elc", "csr_yes", "csr_no", "t_loc"}


def test_make_mini_family_cli(tmp_path):
    from mmke_eval import cli

    assert cli.main(["make-mini", "--family", "mike", "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "mike_eval.json").is_file() and (tmp_path / "m" / "scenes").is_dir()
    with pytest.raises(SystemExit):
        cli.main(["make-mini", "--family", "nope", "--out", str(tmp_path / "x")])


def test_ensure_generated_per_family(tmp_path, monkeypatch):
    monkeypatch.setenv("MMKE_CACHE", str(tmp_path))
    root = ensure_mmedit()
    assert root.name == f"v{G.GENERATOR_VERSION}-seed0-mmedit" and (root / "vqa" / "vqa_eval.json").is_file()
    assert json.loads((root / G.STAMP_FILE).read_text())["family"] == "mmedit"
    assert ensure_mmedit() == root


def test_each_family_end_to_end_on_its_mini(tmp_path):
    """The CLI on each family's mini with the shipped world model: FT-LLM writes the edit in."""
    out = tmp_path / "out"
    env = {**os.environ, "MMKE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "mmke_eval.cli", "--tasks", "vlkeb_mini_hop2,mmedit_mini_vqa,mike_mini_vna",
         "--editor", "ft_llm", "--cases", "2", "--output_path", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ") and "_mini_" in line}
    assert set(rows) == {"vlkeb_mini_hop2", "mmedit_mini_vqa", "mike_mini_vna"}, proc.stdout
    for task, line in rows.items():
        cells = [c.strip() for c in line.strip("|").split("|")]
        rel = float(cells[2])  # first metric column: Rel, or MIKE's Rel (A)
        assert rel >= 50, (task, line)
