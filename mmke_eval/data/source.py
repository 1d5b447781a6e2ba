"""Where a task's data comes from: source cards, data roots, and the documents the task hooks load.

A *source card* is the one-line JSON file next to each task YAML, for example::

    {"benchmark": "mmke", "knowledge_type": "entity_level", "split": "eval",
     "hf_dataset": "kailinjiang/MMKE-Bench-dataset", "data_env": "MMKE_DATA"}
    {"benchmark": "mmke_mini", "knowledge_type": "entity_level", "split": "eval",
     "generator": "mmke_eval.mini.generate:ensure_generated", "data_env": "MMKE_MINI_DATA"}

``resolve_root`` finds the data root, in this order: the folder named by the card's environment
variable (``data_env``); else the card's ``generator`` ("module:function", called with no arguments,
returning the root); else a download of the card's ``hf_dataset`` from the Hugging Face Hub.

What the Hub dataset ``kailinjiang/MMKE-Bench-dataset`` holds (checked 2026-11 from public pages,
not by downloading it; no network here):

* ``data_json/{entity,visual,user}_{train,eval}.json``, flat names (the file page of
  ``data_json/visual_train.json``, 363 kB, commit 20697a5 "Add data_json and data_image folders
  with all contents"). The upstream README draws a nested ``data_json/entity/train.json`` tree
  instead, which the loader also accepts.
* ``data_image/{entity,visual,user}/...`` images, which that commit uploaded as a folder; the JSON
  names them relative to ``data_image/`` (e.g. ``entity/Spider-Man+2.jpg``). Third-party notes
  count 636 entity train and 955 entity eval records. No archive is mentioned anywhere, but that
  could not be confirmed file by file.

So a snapshot is used as it is when it has loose images. In case images do come as archives
(.zip, .tar, .tar.gz, .tgz) instead, they are extracted once into
``<hub cache>/datasets--<owner>--<name>/extracted/<revision>/`` (beside ``snapshots/``, where
huggingface_hub's cache tools do not look), with ``data_json`` linked in and a marker file that
makes later calls skip the work. An archive at ``D/S.zip`` lands under ``D/S/``; members that
already start with ``S/`` are not nested twice (so ``data_image.zip`` holding ``entity/...`` and
``data_image/entity.zip`` holding ``entity/...`` both give ``data_image/entity/...``).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from mmke_eval import families, run_context
from mmke_eval.data.records import data_folders, inside
from mmke_eval.data.schema import DataError, ProbeDoc
from mmke_eval.run_context import RunContext

logger = logging.getLogger("mmke_eval")

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
EXTRACTED_MARKER = ".mmke_eval_extracted"

def load_probe_docs(card: dict, context: RunContext | None = None) -> list[dict]:
    """One lmms-eval document per probe of every edit case the card's data holds, as the run
    (``context``, by default the active run's: mmke_eval/run_context.py) asks: its data root, its
    first N cases; what was read and skipped is recorded in the context."""
    context = context or run_context.current()
    key = card_key(card)
    family = families.of_card(card)
    root = resolve_root(card, family, context.data_root)
    cases, report = family.load(root, card)
    first_n = context.max_cases
    edit_only: list = []
    if first_n is not None:
        # VLKEB's sequential protocol scores the first N cases and keeps editing G more after them.
        edit_only = cases[first_n : first_n + context.edit_only_tail]
        cases, report.first_n, report.edit_only = cases[:first_n], first_n, len(edit_only)
    context.skip_reports[key] = report
    context.data_records[key] = data_record(root, report.files, cases + edit_only,
                                            describe_origin(card, context.data_root))
    logger.info("%s from %s: %s", "/".join(key), root, report.summary())
    return [row for case in cases for row in ProbeDoc.rows(case)] + [
        row for case in edit_only for row in ProbeDoc.rows(case, edit_only=True)
    ]


def describe_origin(card: dict, data_root: Path | None = None) -> str:
    env_name = card.get("data_env")
    if data_root is not None:
        return f"--data {data_root}"
    if env_name and os.environ.get(env_name):
        return f"environment variable {env_name}"
    if card.get("generator"):
        return f"generator {card['generator']}"
    return f"Hugging Face dataset {card.get('hf_dataset')}"


def data_record(root: Path, data_files: list[str], cases: list, origin: str) -> dict:
    """The data folder and a content hash of what was used: the files the loader read and every image of the loaded cases."""
    from mmke_eval.journal import digest, file_digest

    files = {os.path.relpath(path, root): file_digest(str(path)) for path in data_files}
    images = sorted({path for case in cases
                     for path in (case.image, case.rephrase_image, *case.extra_images, *(p.image for p in case.probes)) if path})
    image_hashes = [(os.path.relpath(path, root), file_digest(path)) for path in images]
    record = {
        "root": str(root),
        "origin": origin,
        "files": files,
        "images": len(image_hashes),
        "images_sha256": digest(image_hashes),
        "sha256": digest([files, image_hashes]),
    }
    folders = data_folders(root)
    outside = sum(not inside(path, folders) for path in images)
    if outside:  # read only because the user set MMKE_IMAGES_OUTSIDE_DATA=1: the results say so
        record["images_outside_data"] = outside
    return record


# The fields of a source card that name what it loads, in the order of its key.
CARD_KEY_FIELDS = ("benchmark", "knowledge_type", "subset", "hop", "split")


def card_key(card: dict) -> tuple[str, ...]:
    """(benchmark, [knowledge_type], [subset], [hop], split): names the card's data in reports."""
    missing = [field for field in ("benchmark", "split") if not card.get(field)]
    if missing:
        raise DataError(f"source card {card!r} is missing {', '.join(missing)}")
    return tuple(f"{card[field]}-hop" if field == "hop" else str(card[field]) for field in CARD_KEY_FIELDS if card.get(field))


def resolve_root(card: dict, family: families.Family | None = None, data_root: Path | str | None = None) -> Path:
    """The data root of a source card: the run's ``--data``, else its environment variable, else
    generator, else Hub download."""
    family = family or families.of_card(card)
    env_name = card.get("data_env")
    if data_root is not None:
        return checked_root(Path(data_root).expanduser(), f"--data {data_root}", family)
    if env_name and os.environ.get(env_name):
        return checked_root(Path(os.environ[env_name]).expanduser(), f"the environment variable {env_name}", family)
    if card.get("generator"):
        return root_from_generator(card["generator"], family)
    if card.get("hf_dataset"):
        return root_from_hub(card["hf_dataset"], env_name, family)
    if env_name:  # a benchmark you bring yourself (MMEdit, MIKE)
        raise DataError(
            f"source card {'/'.join(card_key(card))} names no data: pass `mmke-eval --data PATH` or set the "
            f"environment variable {env_name}=PATH, where PATH holds {family.layout}"
        )
    raise DataError(
        f"source card {card!r} names no data: it needs a 'generator', an 'hf_dataset', "
        "or a 'data_env' variable that is set"
    )


def check_available(card: dict, data_root: Path | str | None = None) -> None:
    """Fail now, before any model loads, where a card's data cannot be had: a data folder that is
    not one, no source at all, or a Hub dataset while offline (HF_HUB_OFFLINE) that is not in the
    local cache. A generator, or a download while online, is left to the load."""
    family = families.of_card(card)
    env_name = card.get("data_env")
    if data_root is not None or (env_name and os.environ.get(env_name)) or not (card.get("generator") or card.get("hf_dataset")):
        resolve_root(card, family, data_root)
    elif not card.get("generator"):
        import huggingface_hub

        if huggingface_hub.is_offline_mode():
            resolve_root(card, family)  # the cached snapshot, or the error saying how to give the data


def checked_root(root: Path, origin: str, family: families.Family) -> Path:
    """``root`` if it looks like a data root of ``family``; otherwise say which setting pointed there."""
    if not root.is_dir():
        raise DataError(f"{origin} points to {root}, which is not an existing folder. Expected {family.layout}.")
    for required in family.required:
        if not (root / required).exists():
            raise DataError(f"{origin} points to {root}, which has no {required}. Expected {family.layout}.")
    return Path(os.path.abspath(root))


def root_from_generator(spec: str, family: families.Family) -> Path:
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise DataError(f"generator {spec!r} should read 'module:function'")
    # Imported only now: the generator's module may be heavy, and is unused when data is given.
    generate = getattr(importlib.import_module(module_name), function_name, None)
    if generate is None:
        raise DataError(f"generator {spec!r}: module {module_name} has no function {function_name}")
    return checked_root(Path(generate()), f"the generator {spec}", family)


def root_from_hub(repo_id: str, env_name: str | None, family: families.Family) -> Path:
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(repo_id, repo_type="dataset"))
    except Exception as err:  # offline, no route, HTTP error, auth: all mean "bring the data yourself"
        raise DataError(hub_unreachable_message(repo_id, env_name, err, family.layout)) from err
    return prepared_snapshot(snapshot, repo_id, family)


def hub_unreachable_message(repo_id: str, env_name: str | None, err: Exception, layout: str) -> str:
    ways = "pass `mmke-eval --data PATH`"
    if env_name:
        ways = f"set the environment variable {env_name}=PATH or " + ways
    return (
        f"could not download the Hugging Face dataset {repo_id} ({type(err).__name__}: {err}). "
        f"To use a local copy, {ways}, where PATH holds {layout}."
    )


def prepared_snapshot(snapshot: Path, repo_id: str, family: families.Family) -> Path:
    """The snapshot itself when its images are loose files, else a once-extracted copy."""
    archives = image_archives(snapshot)
    if not archives or has_loose_images(snapshot):
        return checked_root(snapshot, f"the download of {repo_id}", family)
    return checked_root(extract_once(snapshot, archives, family.layout), f"the extracted download of {repo_id}", family)


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def image_archives(snapshot: Path) -> list[Path]:
    return sorted(p for p in snapshot.rglob("*") if p.is_file() and is_archive(p))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def has_loose_images(snapshot: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in snapshot.rglob("*"))


def extraction_dir(snapshot: Path) -> Path:
    """``.../datasets--x--y/extracted/<revision>`` for a snapshot ``.../datasets--x--y/snapshots/<revision>``."""
    return snapshot.parent.parent / "extracted" / snapshot.name


def extract_once(snapshot: Path, archives: list[Path], layout: str) -> Path:
    target = extraction_dir(snapshot)
    marker = target / EXTRACTED_MARKER
    # Archive names and sizes: a new revision or a re-uploaded archive extracts again.
    signature = "".join(f"{a.relative_to(snapshot)} {a.stat().st_size}\n" for a in archives)
    if marker.is_file() and marker.read_text(encoding="utf-8") == signature:
        return target
    try:
        target.mkdir(parents=True, exist_ok=True)
        for archive in archives:
            extract_archive(archive, target / archive.parent.relative_to(snapshot))
        link_other_entries(snapshot, target)
        marker.write_text(signature, encoding="utf-8")  # last, so an interrupted run starts over
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as err:
        raise DataError(
            f"could not extract the image archives of {snapshot} into {target} ({err}); "
            f"extract them yourself and point the data at a folder holding {layout}"
        ) from err
    return target


def archive_stem(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def extract_archive(archive: Path, parent: Path) -> None:
    """Extract ``parent/S.zip`` so that its content sits under ``parent/S/`` (never ``S/S/``)."""
    stem = archive_stem(archive)
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as bundle:
            destination = parent if all_under(bundle.namelist(), stem) else parent / stem
            bundle.extractall(destination)  # zipfile drops absolute and ".." parts of member names
    else:
        with tarfile.open(archive) as bundle:
            destination = parent if all_under(bundle.getnames(), stem) else parent / stem
            bundle.extractall(destination, filter="data")  # refuses links and paths leaving the folder


def all_under(names: list[str], folder: str) -> bool:
    names = [name.removeprefix("./") for name in names]
    return bool(names) and all(name == folder or name.startswith(folder + "/") for name in names)


def link_other_entries(snapshot: Path, target: Path) -> None:
    """Give ``target`` the snapshot's top-level entries that are not archives and not there yet
    (``data_json/``, ``train.json``, ...): links, or copies where links are not allowed."""
    for source in sorted(snapshot.iterdir()):
        link = target / source.name
        if is_archive(source) or link.exists() or source.name == EXTRACTED_MARKER:
            continue
        try:
            link.symlink_to(source.absolute(), target_is_directory=source.is_dir())
        except OSError:
            if source.is_dir():
                shutil.copytree(source, link)
            else:
                shutil.copy2(source, link)
