"""Source cards: data root by environment variable, generator or Hub download, and the task documents."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tarfile
import types
import zipfile
from dataclasses import fields
from pathlib import Path

import huggingface_hub
import pytest

from mmke_eval.data import source
from mmke_tasks.mmke.loader import load_cases
from mmke_eval.data.schema import DataError, ProbeDoc
from mmke_eval.data.source import load_probe_docs, resolve_root
from mmke_eval.run_context import RunContext, from_environment

ENV = "MMKE_TEST_DATA"
REPO = "kailinjiang/MMKE-Bench-dataset"


def card(**extra) -> dict:
    return {"benchmark": "mmke", "family": "mmke", "knowledge_type": "entity_level", "split": "eval", **extra}


@pytest.fixture(autouse=True)
def no_real_sources(monkeypatch):
    """No test may reach the Hub or read a developer's own data variable."""
    monkeypatch.delenv(ENV, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("snapshot_download called")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)


@pytest.fixture
def generator_module(monkeypatch):
    """A module "fake_mmke_generator" whose ensure_generated() returns whatever ``result`` holds."""
    module = types.ModuleType("fake_mmke_generator")
    module.calls = 0
    module.result = None

    def ensure_generated():
        module.calls += 1
        return module.result

    module.ensure_generated = ensure_generated
    monkeypatch.setitem(sys.modules, "fake_mmke_generator", module)
    return module


# --- environment variable -------------------------------------------------------------------------


def test_env_var_wins_over_generator_and_hub(mmke_fixture_root, monkeypatch, generator_module):
    monkeypatch.setenv(ENV, str(mmke_fixture_root))
    root = resolve_root(card(data_env=ENV, generator="fake_mmke_generator:ensure_generated", hf_dataset=REPO))
    assert root == mmke_fixture_root
    assert generator_module.calls == 0


def test_env_var_to_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=f"environment variable {ENV} points to .*nowhere, which is not an existing"):
        resolve_root(card(data_env=ENV, hf_dataset=REPO))


def test_env_var_to_folder_without_data_json(tmp_path, monkeypatch):
    (tmp_path / "data_image").mkdir()
    monkeypatch.setenv(ENV, str(tmp_path))
    with pytest.raises(DataError, match=f"{ENV} points to {tmp_path}, which has no data_json/"):
        resolve_root(card(data_env=ENV, hf_dataset=REPO))


def test_unset_env_var_falls_through_to_generator(mmke_fixture_root, generator_module):
    generator_module.result = str(mmke_fixture_root)  # a str is accepted too
    root = resolve_root(card(data_env=ENV, generator="fake_mmke_generator:ensure_generated"))
    assert root == mmke_fixture_root
    assert generator_module.calls == 1


# --- generator ------------------------------------------------------------------------------------


def test_generator_root_without_data_json(tmp_path, generator_module):
    generator_module.result = tmp_path
    with pytest.raises(DataError, match="generator fake_mmke_generator:ensure_generated points to .*no data_json/"):
        resolve_root(card(generator="fake_mmke_generator:ensure_generated"))


@pytest.mark.parametrize("spec", ["fake_mmke_generator", "fake_mmke_generator:no_such_function"])
def test_bad_generator_spec(generator_module, spec):
    with pytest.raises(DataError, match="generator"):
        resolve_root(card(generator=spec))


def test_card_without_any_source():
    with pytest.raises(DataError, match="names no data"):
        resolve_root(card(data_env=ENV))


# --- Hugging Face Hub -----------------------------------------------------------------------------


def test_unreachable_hub_tells_how_to_supply_data(monkeypatch):
    def offline(repo_id, repo_type=None, **kwargs):
        assert (repo_id, repo_type) == (REPO, "dataset")
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DataError) as caught:
        resolve_root(card(data_env=ENV, hf_dataset=REPO))
    message = str(caught.value)
    for expected in (REPO, "couldn't connect", f"environment variable {ENV}=PATH", "mmke-eval --data PATH",
                     "PATH/data_json/", "PATH/data_image/"):  # fmt: skip
        assert expected in message
    from mmke_eval.errors import root_cause

    assert root_cause(caught.value) is caught.value  # the CLI's last line is this message, not the Hub's error


def fake_snapshot(tmp_path: Path, fixture_root: Path) -> Path:
    """A Hub-cache-shaped snapshot folder holding the fixture's data_json/."""
    snapshot = tmp_path / "hub" / "datasets--kailinjiang--MMKE-Bench-dataset" / "snapshots" / "20697a5"
    snapshot.mkdir(parents=True)
    shutil.copytree(fixture_root / "data_json", snapshot / "data_json")
    return snapshot


def serve(monkeypatch, snapshot: Path) -> list:
    calls = []

    def download(repo_id, repo_type=None, **kwargs):
        calls.append((repo_id, repo_type))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    return calls


def test_hub_snapshot_with_loose_images_is_used_as_is(tmp_path, mmke_fixture_root, monkeypatch):
    snapshot = fake_snapshot(tmp_path, mmke_fixture_root)
    shutil.copytree(mmke_fixture_root / "data_image", snapshot / "data_image")
    # An archive in the snapshot, but the images are loose files: nothing to extract.
    zip_folder(mmke_fixture_root / "data_json", snapshot / "data_json_backup.zip", "")
    calls = serve(monkeypatch, snapshot)
    assert resolve_root(card(data_env=ENV, hf_dataset=REPO)) == snapshot
    assert calls == [(REPO, "dataset")]
    assert not (snapshot.parent.parent / "extracted").exists()


def zip_folder(folder: Path, archive: Path, arcname_root: str) -> None:
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder).as_posix()
            bundle.write(path, f"{arcname_root}/{relative}" if arcname_root else relative)


def one_archive_per_type_tar(snapshot: Path, images: Path) -> None:
    """data_image/entity.tar.gz holding entity/..., and so on."""
    (snapshot / "data_image").mkdir()
    for sub in sorted(p for p in images.iterdir()):
        with tarfile.open(snapshot / "data_image" / f"{sub.name}.tar.gz", "w:gz") as bundle:
            bundle.add(sub, arcname=sub.name)


def one_archive_per_type_zip_flat(snapshot: Path, images: Path) -> None:
    """data_image/entity.zip holding the files without a folder, and so on."""
    (snapshot / "data_image").mkdir()
    for sub in sorted(p for p in images.iterdir()):
        zip_folder(sub, snapshot / "data_image" / f"{sub.name}.zip", "")


@pytest.mark.parametrize(
    "pack",
    [
        pytest.param(lambda snap, img: zip_folder(img, snap / "data_image.zip", ""), id="zip-of-types"),
        pytest.param(lambda snap, img: zip_folder(img, snap / "data_image.zip", "data_image"), id="zip-of-folder"),
        pytest.param(one_archive_per_type_tar, id="per-type-tar.gz"),
        pytest.param(one_archive_per_type_zip_flat, id="per-type-zip-flat"),
    ],
)
def test_hub_snapshot_with_image_archives_is_extracted_once(tmp_path, mmke_fixture_root, monkeypatch, pack):
    snapshot = fake_snapshot(tmp_path, mmke_fixture_root)
    pack(snapshot, mmke_fixture_root / "data_image")
    serve(monkeypatch, snapshot)

    root = resolve_root(card(hf_dataset=REPO))
    assert root == snapshot.parent.parent / "extracted" / "20697a5"
    for knowledge_type in ("entity_level", "visual_knowledge", "user_specific"):
        extracted, _ = load_cases(root, knowledge_type, "eval")
        original, _ = load_cases(mmke_fixture_root, knowledge_type, "eval")
        for got, want in zip(extracted, original):
            assert got.probes[-1].image == want.probes[-1].image.replace(str(mmke_fixture_root), str(root))
            assert Path(got.image).read_bytes() == Path(want.image).read_bytes()

    # A second resolution finds the marker and extracts nothing.
    monkeypatch.setattr(source, "extract_archive", lambda *a: pytest.fail("extracted twice"))
    assert resolve_root(card(hf_dataset=REPO)) == root


def test_unextractable_archive_is_a_data_error(tmp_path, mmke_fixture_root, monkeypatch):
    snapshot = fake_snapshot(tmp_path, mmke_fixture_root)
    (snapshot / "data_image.zip").write_bytes(b"not a zip file")
    serve(monkeypatch, snapshot)
    with pytest.raises(DataError, match="could not extract the image archives"):
        resolve_root(card(hf_dataset=REPO))


# --- documents for the task hooks ---------------------------------------------------------------


def test_load_probe_docs_flattens_cases_and_records_skips(tmp_path, mmke_fixture_root, monkeypatch, caplog):
    root = Path(shutil.copytree(mmke_fixture_root, tmp_path / "data"))
    eval_json = root / "data_json" / "user_eval.json"
    eval_json.write_text(eval_json.read_text(encoding="utf-8").replace('"port_type": "1-hop"', '"port_type": "2-hop"', 1),
                         encoding="utf-8")  # fmt: skip
    monkeypatch.setenv(ENV, str(root))
    user_card = card(benchmark="mmke_test", knowledge_type="user_specific", data_env=ENV, hf_dataset=REPO)

    with caplog.at_level(logging.INFO, logger="mmke_eval"):
        context = RunContext()
        rows = load_probe_docs(user_card, context)

    assert len(rows) == 2 * 9  # case 0 skipped, two cases of nine probes kept
    assert set(rows[0]) == {f.name for f in fields(ProbeDoc)}
    assert [r["probe_id"] for r in rows[:9]] == [
        "t_rel_1", "t_rel_2", "i_rel_1", "i_rel_2", "i_gen_1", "i_gen_2", "t_loc", "i_loc", "port",
    ]  # fmt: skip
    assert {r["case_id"] for r in rows} == {"mmke_test/user_specific/eval/1", "mmke_test/user_specific/eval/2"}
    assert rows[0]["edit_image"] == str(root / "data_image" / "user" / "Grandmother+teapot+41.png")

    report = context.skip_reports[("mmke_test", "user_specific", "eval")]
    assert report.skipped == {"no 1-hop portability question": ["mmke_test/user_specific/eval/0"]}
    assert "1 of 3 cases skipped: 1 no 1-hop portability question" in caplog.text


def test_max_cases_keeps_the_first_kept_cases(mmke_fixture_root, monkeypatch):
    monkeypatch.setenv(ENV, str(mmke_fixture_root))
    entity_card = card(benchmark="mmke_test", knowledge_type="entity_level", data_env=ENV, hf_dataset=REPO)
    all_rows = load_probe_docs(entity_card)
    monkeypatch.setenv("MMKE_MAX_CASES", "2")  # the documented default of a run without --cases
    context = from_environment()
    rows = load_probe_docs(entity_card, context)
    first_two = sorted({r["case_id"] for r in all_rows})[:2]
    assert sorted({r["case_id"] for r in rows}) == first_two and len(rows) < len(all_rows)
    report = context.skip_reports[("mmke_test", "entity_level", "eval")]
    assert report.first_n == 2 and report.summary().endswith("the first 2 used (--cases)")
    monkeypatch.setenv("MMKE_MAX_CASES", "two")
    with pytest.raises(DataError, match="MMKE_MAX_CASES='two'"):
        load_probe_docs(entity_card)


def test_cases_n_with_a_sequential_gap_adds_g_edit_only_cases(mmke_fixture_root, monkeypatch):
    """VLKEB: score the first N cases, keep editing G more after them (when the data has them)."""
    monkeypatch.setenv(ENV, str(mmke_fixture_root))
    entity_card = card(benchmark="mmke_test", knowledge_type="entity_level", data_env=ENV, hf_dataset=REPO)
    ordered = list(dict.fromkeys(r["case_id"] for r in load_probe_docs(entity_card)))  # 3 cases
    context = RunContext(max_cases=1, edit_only_tail=1)
    rows = load_probe_docs(entity_card, context)
    assert [(r["case_id"], r["edit_only"]) for r in rows if r["probe"] == "t_loc"] == [(ordered[0], False), (ordered[1], True)]
    report = context.skip_reports[("mmke_test", "entity_level", "eval")]
    assert report.edit_only == 1 and "1 more edited after them without scoring" in report.summary()
    # more than the data has: as many as there are
    rows = load_probe_docs(entity_card, RunContext(max_cases=1, edit_only_tail=5))
    assert [r["case_id"] for r in rows if r["probe"] == "t_loc" and r["edit_only"]] == ordered[1:]


def test_card_missing_split():
    with pytest.raises(DataError, match="missing split"):
        load_probe_docs({"benchmark": "mmke", "knowledge_type": "entity_level", "hf_dataset": REPO})


def test_vlkeb_hub_snapshot_extracts_its_image_archive_and_keeps_the_json_files(tmp_path, monkeypatch):
    """HymanH/VLKEB-data: train/eval/eval_multihop.json beside VLKEB_images.tar.gz (shared docs 1.2)."""
    from mmke_tasks.vlkeb.loader import load_vlkeb
    from mmke_tasks.vlkeb.fixture import write_vlkeb_fixture

    release = write_vlkeb_fixture(tmp_path / "release")
    snapshot = tmp_path / "hub" / "datasets--HymanH--VLKEB-data" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for name in ("train.json", "eval.json", "eval_multihop.json"):
        shutil.copy(release / name, snapshot / name)
    with tarfile.open(snapshot / "VLKEB_images.tar.gz", "w:gz") as bundle:
        bundle.add(release / "VLKEB_images", arcname="VLKEB_images")
    serve(monkeypatch, snapshot)
    vlkeb_card = {"benchmark": "vlkeb", "family": "vlkeb", "hop": 1, "split": "eval", "hf_dataset": "HymanH/VLKEB-data"}
    root = resolve_root(vlkeb_card)
    assert root == snapshot.parent.parent / "extracted" / "abc123"
    cases, _ = load_vlkeb(root, vlkeb_card)
    want, _ = load_vlkeb(release, vlkeb_card)
    assert [c.case_id for c in cases] == [c.case_id for c in want]
    assert Path(cases[0].image).read_bytes() == Path(want[0].image).read_bytes()


# --- image paths stay inside the data folder ------------------------------------------------------


def _family_data(name: str, tmp_path: Path) -> tuple[Path, str, str, dict]:
    """A fresh copy of a family's fixture: (data root, its eval JSON, the image field, the card)."""
    from mmke_tasks.mike.fixture import write_mike_fixture
    from mmke_tasks.mmedit.fixture import write_mmedit_fixture
    from mmke_tasks.vlkeb.fixture import write_vlkeb_fixture
    from mmke_tasks.mmke.fixture import write_mmke_fixture

    write, json_name, field, source_card = {
        "mmke": (write_mmke_fixture, "data_json/entity_eval.json", "image", card()),
        "mmedit": (write_mmedit_fixture, "vqa/vqa_eval.json", "image", {"benchmark": "mmedit", "subset": "vqa", "split": "eval"}),
        "vlkeb": (write_vlkeb_fixture, "eval.json", "image", {"benchmark": "vlkeb", "split": "eval"}),
        "mike": (write_mike_fixture, "mike_eval.json", "images", {"benchmark": "mike", "subset": "vna", "split": "eval"}),
    }[name]
    root = tmp_path / "data" / name
    root.mkdir(parents=True)
    write(root)
    return root, json_name, field, source_card


@pytest.mark.parametrize("family", ["mmke", "vlkeb", "mmedit", "mike"])
def test_image_paths_leaving_the_data_folder_are_refused_naming_case_and_field(family, tmp_path, monkeypatch):
    from PIL import Image

    from mmke_eval import families

    root, json_name, field, source_card = _family_data(family, tmp_path)
    secret = tmp_path / "private.png"  # a file outside the data folder
    Image.new("RGB", (4, 4), "red").save(secret)
    records = json.loads((root / json_name).read_text())
    original = records[0][field]
    traversal = os.path.relpath(secret, root)  # ../../private.png, from the data folder itself
    monkeypatch.delenv("MMKE_IMAGES_OUTSIDE_DATA", raising=False)
    load = families.of_card(source_card).load
    named = f"{field}[0]" if field == "images" else field
    for bad in (traversal, str(secret)):
        records[0][field] = [bad, *original[1:]] if field == "images" else bad
        (root / json_name).write_text(json.dumps(records))
        with pytest.raises(DataError) as err:
            load(root, source_card)
        message = str(err.value)
        assert f"{json_name}: case 0 (" in message and f"field {named!r}" in message, message
        assert f"image {bad!r} is outside the data folder {root}" in message and "MMKE_IMAGES_OUTSIDE_DATA=1" in message
        monkeypatch.setenv("MMKE_IMAGES_OUTSIDE_DATA", "1")  # the user's explicit opt-in: read from there
        cases, report = load(root, source_card)
        assert cases[0].image == str(secret)
        assert source.data_record(root, report.files, cases, "test")["images_outside_data"] == 1  # the results say so
        monkeypatch.delenv("MMKE_IMAGES_OUTSIDE_DATA")
    # A symbolic link inside the folder that leads out of it counts as outside too.
    (root / "link.png").symlink_to(secret)
    records[0][field] = ["link.png", *original[1:]] if field == "images" else "link.png"
    (root / json_name).write_text(json.dumps(records))
    with pytest.raises(DataError, match=f"image 'link.png' is outside the data folder .*leads to {secret}"):
        load(root, source_card)
    monkeypatch.setenv("MMKE_IMAGES_OUTSIDE_DATA", "maybe")
    with pytest.raises(DataError, match="MMKE_IMAGES_OUTSIDE_DATA='maybe': expected 1/true/yes"):
        load(root, source_card)


def test_a_hub_snapshot_whose_images_link_into_its_blobs_is_inside(tmp_path, mmke_fixture_root):
    """huggingface_hub's cache: snapshots/REV/<file> are links to ../../blobs/<hash>, still the dataset's own folder."""
    snapshot = fake_snapshot(tmp_path, mmke_fixture_root)
    blobs = snapshot.parent.parent / "blobs"
    blobs.mkdir()
    for number, image in enumerate(sorted(p for p in (mmke_fixture_root / "data_image").rglob("*") if p.is_file())):
        blob = blobs / f"blob{number}"
        shutil.copy(image, blob)
        link = snapshot / "data_image" / image.relative_to(mmke_fixture_root / "data_image")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    cases, _ = load_cases(snapshot, "entity_level", "eval")
    assert cases and cases[0].image.startswith(str(snapshot))
