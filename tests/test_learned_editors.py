"""MEND and KE: training lowers what they optimise, a trained one edits held-out cases of the world
model, checkpoints round-trip exactly and refuse another model, and training resumes where it stopped.

Trained on the world model (the shipped 1.4M-parameter LLaVA) with the registry's world-model
defaults; SERAC has its own file. A few hundred steps take seconds here.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from editors.learned import CheckpointError, META_FILE, WEIGHTS_FILE
from mmke_eval import registry
from mmke_tasks.mmke.loader import load_cases
from mmke_eval.direct import score_cases
from mmke_eval.protocol import Protocol
from mmke_eval.training.data import training_example
from mmke_eval.training.errors import TrainingError
from mmke_eval.training.loop import train, validate
from mmke_eval.training.state import RESUME_FILE, read_training_state

EDITORS = ("mend", "ke")
TEMPLATE = "mmke/probe.jinja"
QUICK = {"max_steps": "40", "val_every": "20", "val_cases": "4"}


@pytest.fixture(scope="module")
def adapter():
    from mmke_eval.testing.world import world_adapter

    return world_adapter()


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    from mmke_eval.mini.generate import generate

    return generate(tmp_path_factory.mktemp("mini"), seed=0)


@pytest.fixture(scope="module")
def train_cases(mini_root):
    return [(case, TEMPLATE) for case in load_cases(mini_root, "entity_level", "train")[0]]


DATA = {"tasks": ["test"], "files": {}, "cases": 0, "sha256": "test-data"}


def editor_for(name, adapter, **overrides):
    return registry.build_editor(name, family=adapter.family, overrides={**QUICK, **overrides})


def weights(adapter, names):
    params = dict(adapter.model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


@pytest.mark.parametrize("name", EDITORS)
def test_training_lowers_what_the_editor_optimises(name, adapter, train_cases, tmp_path):
    editor = editor_for(name, adapter)
    editor.ensure_ready(adapter, for_training=True)
    held_out = [training_example(*c) for c in train_cases[8:12]]
    before = validate(editor, adapter, held_out)[editor.validation_key]
    record = train(editor, adapter, train_cases[:12], DATA, tmp_path / name, progress=False)
    after = validate(editor, adapter, held_out)[editor.validation_key]
    assert record["steps"] == 40 and after < before
    meta = json.loads((tmp_path / name / META_FILE).read_text())
    assert meta["editor"] == name and meta["data"]["sha256"] == "test-data"
    assert set(meta["edited_modules"]) == set(editor.learned.names) and len(meta["edited_modules"]) == 6  # up/down x 3 layers


@pytest.mark.parametrize("name", EDITORS)
def test_a_trained_editor_edits_held_out_cases_and_restores_exactly(name, adapter, mini_root):
    # The checkpoint shipped beside the world model, trained on mmke_mini's train split by
    # `mmke-eval train-editor` (docs/editors.md); the eval cases were never trained on. Training
    # itself is tested above and from the command line below.
    editor = registry.build_editor(name, family=adapter.family)
    assert editor.config.checkpoint == "mini"
    cases = load_cases(mini_root, "entity_level", "eval")[0][:4]
    before = weights(adapter, [n for n, _ in adapter.model.named_parameters()])
    edited = score_cases(adapter, editor, cases, Protocol(generate=False))
    unedited = score_cases(adapter, registry.build_editor("none"), cases, Protocol(generate=False))
    assert edited["t_rel"] > unedited["t_rel"] + 15 and edited["i_rel"] > unedited["i_rel"] + 15
    assert all(torch.equal(before[n], p) for n, p in adapter.model.named_parameters())


def test_checkpoint_round_trips_exactly_and_edits_the_same(adapter, train_cases, mini_root, tmp_path):
    trained = editor_for("mend", adapter, max_steps="20", val_every="10")
    train(trained, adapter, train_cases[:12], DATA, tmp_path / "ck", progress=False)
    loaded = editor_for("mend", adapter, checkpoint=str(tmp_path / "ck"))
    loaded.ensure_ready(adapter)
    for key, value in trained.learned.state_dict().items():
        assert torch.equal(value, loaded.learned.state_dict()[key]), key
    request = training_example(*train_cases[0]).edit
    results = []
    for editor in (trained, loaded):
        with editor.editing(adapter, request) as handle:
            results.append(weights(adapter, handle.touched))
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])
    assert "checkpoint_info" in loaded.describe()


def test_a_checkpoint_for_another_model_is_refused_naming_both(adapter, train_cases, tmp_path, tiny_llava_dir):
    editor = editor_for("mend", adapter, max_steps="2", val_every="1", val_cases="1")
    train(editor, adapter, train_cases[:3], DATA, tmp_path / "ck", progress=False)
    # Same architecture, one edited weight changed: another fine-tune of the same model.
    name = editor.learned.names[0]
    params = dict(adapter.model.named_parameters())
    saved = params[name].detach().clone()
    try:
        with torch.no_grad():
            params[name].mul_(1.5)
        with pytest.raises(CheckpointError, match="another base model.*this run"):
            editor_for("mend", adapter, checkpoint=str(tmp_path / "ck")).ensure_ready(adapter)
    finally:
        with torch.no_grad():
            params[name].copy_(saved)
    # Another architecture: other edited modules.
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmke_eval.adapters.llava_hf import LlavaHFAdapter

    tiny = LlavaHFAdapter(LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval(), AutoProcessor.from_pretrained(tiny_llava_dir))
    with pytest.raises(CheckpointError, match="checkpoint .*this model"):
        registry.build_editor("mend", overrides={"checkpoint": str(tmp_path / "ck")}).ensure_ready(tiny)
    # Other settings that define what was learned.
    with pytest.raises(CheckpointError, match="rank: checkpoint"):
        editor_for("mend", adapter, checkpoint=str(tmp_path / "ck"), rank="7").ensure_ready(adapter)
    with pytest.raises(CheckpointError, match="holds a 'mend' checkpoint"):
        editor_for("ke", adapter, checkpoint=str(tmp_path / "ck")).ensure_ready(adapter)


def test_an_untrained_editor_without_a_checkpoint_says_how_to_train_one(adapter):
    with pytest.raises(Exception, match="train-editor --editor mend"):
        registry.build_editor("mend", overrides={"checkpoint": ""}).ensure_ready(adapter)


def train_until_interrupted(editor, loss, adapter, train_cases, out, monkeypatch):
    """Train ``editor`` with ``loss`` into ``out`` until Ctrl-C at training step 7 (after 6 steps and
    one validation of 2 cases); ``loss`` is its meta_loss again afterwards."""
    calls = {"n": 0}

    def failing(self, adapter_, example):
        calls["n"] += 1
        if calls["n"] == 7 + 2:
            raise KeyboardInterrupt
        return loss(self, adapter_, example)

    monkeypatch.setattr(type(editor), "meta_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        train(editor, adapter, train_cases[:8], DATA, out, progress=False)
    monkeypatch.setattr(type(editor), "meta_loss", loss)


def test_an_interrupted_training_resumes_at_its_last_saved_step_and_ends_the_same(adapter, train_cases, tmp_path, monkeypatch):
    settings = {"max_steps": "12", "val_every": "4", "val_cases": "2"}
    original = registry.editor_class("mend").meta_loss

    def noisy(self, adapter_, example):
        # A loss that draws from torch's, Python's and NumPy's generators (as dropout or sampling
        # would): a resumed run ends the same only if the saved state brings all three back.
        loss, parts = original(self, adapter_, example)
        return loss * (1 + 0.1 * torch.rand(()) + 0.1 * random.random() + 0.1 * float(np.random.rand())), parts

    monkeypatch.setattr(registry.editor_class("mend"), "meta_loss", noisy)
    whole = editor_for("mend", adapter, **settings)
    train(whole, adapter, train_cases[:8], DATA, tmp_path / "whole", progress=False)

    train_until_interrupted(editor_for("mend", adapter, **settings), noisy, adapter, train_cases, tmp_path / "resumed", monkeypatch)
    assert not (tmp_path / "resumed" / WEIGHTS_FILE).exists()
    assert (tmp_path / "resumed" / RESUME_FILE).is_file() and not (tmp_path / "resumed" / "resume.pt").exists()
    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # whatever ran in between
    resumed = editor_for("mend", adapter, **settings)
    record = train(resumed, adapter, train_cases[:8], DATA, tmp_path / "resumed", progress=False)
    assert record["steps"] == 12
    log = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert log == [4, 8, 12]  # step 4 from the first run, 8 and 12 after resuming at 4
    for key, value in whole.learned.state_dict().items():
        assert torch.equal(value, resumed.learned.state_dict()[key]), key  # bit for bit
    # The last states too (the best step may come before the interruption): networks, optimizer, generators.
    ends = [read_training_state(tmp_path / run / RESUME_FILE) for run in ("whole", "resumed")]
    for part in ("learned", "best"):
        assert ends[0][part].keys() == ends[1][part].keys()
        assert all(torch.equal(ends[0][part][k], ends[1][part][k]) for k in ends[0][part]), part
    for index, entries in ends[0]["optimizer"]["state"].items():
        for name, value in entries.items():
            assert torch.equal(value, ends[1]["optimizer"]["state"][index][name]), (index, name)
    assert torch.equal(ends[0]["rng"]["torch"], ends[1]["rng"]["torch"])
    assert ends[0]["rng"]["python"] == ends[1]["rng"]["python"] and ends[0]["rng"]["numpy"] == ends[1]["rng"]["numpy"]
    strip = [[{k: v for k, v in entry.items() if k != "seconds"} for entry in end["state"]["history"]] for end in ends]
    assert strip[0] == strip[1]
    # Another run into the same folder is refused.
    with pytest.raises(TrainingError, match="another training run"):
        train(editor_for("mend", adapter, **settings, seed="1"), adapter, train_cases[:8], DATA, tmp_path / "resumed", progress=False)


def test_a_resumed_training_continues_the_learning_rate_schedule(adapter, train_cases, tmp_path, monkeypatch):
    """KE's reference schedule (centered RMSprop, warm-up, linear decay): the scheduler's state is in
    the training state, so a resumed run ends bit for bit where an uninterrupted one ends."""
    settings = {"max_steps": "12", "val_every": "4", "val_cases": "2", "optimizer": "rmsprop_centered",
                "warmup_steps": "3", "decay_steps": "12", "lagrange_update": "learned"}
    whole = editor_for("ke", adapter, **settings)
    train(whole, adapter, train_cases[:8], DATA, tmp_path / "whole", progress=False)
    interrupted = editor_for("ke", adapter, **settings)
    train_until_interrupted(interrupted, type(interrupted).meta_loss, adapter, train_cases, tmp_path / "resumed", monkeypatch)
    saved = read_training_state(tmp_path / "resumed" / RESUME_FILE)
    assert saved["scheduler"]["last_epoch"] == 4  # saved at the step-4 validation
    resumed = editor_for("ke", adapter, **settings)
    train(resumed, adapter, train_cases[:8], DATA, tmp_path / "resumed", progress=False)
    for key, value in whole.learned.state_dict().items():
        assert torch.equal(value, resumed.learned.state_dict()[key]), key
    ends = [read_training_state(tmp_path / run / RESUME_FILE) for run in ("whole", "resumed")]
    assert ends[0]["scheduler"] == ends[1]["scheduler"] and ends[0]["scheduler"]["last_epoch"] == 12


class _CreatesAFile:
    """A pickle payload: unpickling it calls ``open(path, "w")``, creating the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_resume_file_is_refused_by_name_and_runs_nothing(adapter, train_cases, tmp_path):
    settings = {"max_steps": "4", "val_every": "2", "val_cases": "1"}
    folder, marker = tmp_path / "handed_over", tmp_path / "payload_ran"
    folder.mkdir()
    torch.save({"run_key": _CreatesAFile(marker), "state": {"step": 2}}, folder / "resume.pt")
    with pytest.raises(TrainingError, match=r"handed_over/resume\.pt: a pickled training state.*--restart"):
        train(editor_for("mend", adapter, **settings), adapter, train_cases[:4], DATA, folder, progress=False)
    assert not marker.exists()
    # --restart trains afresh there, deletes the pickle (still unread) and writes a state that runs no code.
    record = train(editor_for("mend", adapter, **settings), adapter, train_cases[:4], DATA, folder, restart=True, progress=False)
    assert record["steps"] == 4 and not marker.exists() and not (folder / "resume.pt").exists()
    from safetensors import safe_open

    with safe_open(str(folder / RESUME_FILE), framework="pt") as f:
        assert f.metadata()["format"] == "mmke-eval training state"


def test_a_corrupt_training_state_is_refused_naming_the_file_and_restart(adapter, train_cases, tmp_path):
    settings = {"max_steps": "4", "val_every": "2", "val_cases": "1"}
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / RESUME_FILE).write_bytes(b"\x80\x04garbage, not a training state" * 10)
    with pytest.raises(TrainingError, match=rf"ck/{RESUME_FILE}: not a readable mmke-eval training state .*--restart"):
        train(editor_for("mend", adapter, **settings), adapter, train_cases[:4], DATA, folder, progress=False)
    # A safetensors file of someone else's: refused by its format.
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(folder / RESUME_FILE), metadata={"format": "pt"})
    with pytest.raises(TrainingError, match=r"not a readable mmke-eval training state \(format 'pt'"):
        train(editor_for("mend", adapter, **settings), adapter, train_cases[:4], DATA, folder, progress=False)


def test_broken_checkpoint_files_are_refused_naming_the_file(adapter, tmp_path):
    import shutil

    from mmke_eval.mini import EDITOR_CHECKPOINTS_DIR

    folder = Path(shutil.copytree(EDITOR_CHECKPOINTS_DIR / "mend", tmp_path / "ck"))
    meta = (folder / META_FILE).read_text()
    (folder / META_FILE).write_text(meta[: len(meta) // 2])  # cut short, as by a full disk
    with pytest.raises(CheckpointError, match=rf"ck/{META_FILE}: invalid JSON at line \d+, column \d+ .*copy it again"):
        editor_for("mend", adapter, checkpoint=str(folder)).ensure_ready(adapter)
    (folder / META_FILE).write_text(meta)
    (folder / WEIGHTS_FILE).write_bytes(b"<html>404 Not Found</html>" * 20)  # a failed download
    with pytest.raises(CheckpointError, match=rf"ck/{WEIGHTS_FILE}: not a readable safetensors file .*copy it again"):
        editor_for("mend", adapter, checkpoint=str(folder)).ensure_ready(adapter)


def test_train_editor_then_evaluate_from_the_command_line(tmp_path):
    ck = tmp_path / "ke"
    train_cmd = [sys.executable, "-m", "mmke_eval.cli", "train-editor", "--editor", "ke", "--tasks", "mmke_mini_entity",
                 "--cases", "6", "--editor_args", "max_steps=4,val_every=2,val_cases=2", "--output_path", str(ck)]
    done = subprocess.run(train_cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "checkpoint=" in done.stdout and (ck / WEIGHTS_FILE).is_file()
    meta = json.loads((ck / META_FILE).read_text())
    assert meta["training"]["command"].startswith("mmke-eval train-editor --editor ke") and meta["data"]["cases"] == 6
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "mmke_eval.cli", "--tasks", "mmke_mini_entity", "--editor", "ke", "--editor_args",
                          f"checkpoint={ck}", "--cases", "2", "--output_path", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| mmke_mini_entity | ke |" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "mmke_eval.cli", "train-editor", "--editor", "ft_llm", "--output_path", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "not a learned editor" in bad.stderr


@pytest.mark.parametrize("name", EDITORS)
def test_sequential_edits_pile_up_and_are_all_undone(name, adapter, mini_root):
    """The shipped checkpoint, three cases edited in sequence: later edits act on the edited model,
    and the end of the task restores every weight bit-identically."""
    from mmke_eval.direct import probe_requests
    from mmke_eval.engine.evaluator import CaseEvaluator

    editor = registry.build_editor(name, family=adapter.family)  # checkpoint=mini
    editor.ensure_ready(adapter)
    cases = load_cases(mini_root, "user_specific", "eval")[0][:3]
    grouped = probe_requests(cases)
    before = weights(adapter, [n for n, _ in adapter.model.named_parameters()])
    applied = []
    original_apply = editor.apply

    def recording_apply(adapter_, request):
        params = dict(adapter_.model.named_parameters())
        applied.append({n: params[n].detach().clone() for n in editor.learned.names})
        return original_apply(adapter_, request)

    editor.apply = recording_apply
    results = [None] * sum(len(g) for g in grouped)
    CaseEvaluator(adapter, editor, Protocol(generate=False, sequential=True)).answer_cases(grouped, results, progress=False)
    assert len(applied) == 3
    first = editor.learned.names[0]
    assert torch.equal(applied[0][first], before[first]) and not torch.equal(applied[2][first], before[first])
    assert all(torch.equal(before[n], p) for n, p in adapter.model.named_parameters())
    assert all(json.loads(r)["score"] is not None for r in results)


def test_list_shows_the_learned_editors_with_their_defaults_per_family(capsys):
    from mmke_eval.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("serac", "mend", "ke"):
        assert f"  {name} " in out
    assert "rank=1920" in out and "meta_lr=1e-06" in out  # MEND's reference values
    assert 'cf_prefix="{prompt} {target} "' in out  # a string with a trailing space, quoted
    assert out.count("checkpoint=mini") == 3  # the world model's shipped checkpoints
