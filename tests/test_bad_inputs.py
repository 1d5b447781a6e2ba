"""The bad-input catalogue: one row per kind of bad input, what the user gets, and the exit code.

Every row runs the real `mmke-eval` command in a subprocess, as a user would. docs/bad-inputs.md
summarises the table; keep both in step.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmke_eval.testing.plain_task import write_plain_task

BIN = Path(sys.executable).parent


def run(args: list, cwd: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(cwd / "hf"), **env}
    return subprocess.run([str(a) for a in [BIN / "mmke-eval", *args]], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=600)


def tiny(tiny_llava_dir) -> list:
    return ["--model", "llava_hf", "--model_args", f"pretrained={tiny_llava_dir},device=cpu,device_map=cpu,dtype=float32"]


def truncated_image_data(root: Path, tmp: Path) -> Path:
    """The fixture with one edit image cut to half its bytes, saved as a real JPEG first."""
    from PIL import Image

    data = Path(shutil.copytree(root, tmp / "data"))
    records = json.loads((data / "data_json" / "entity_eval.json").read_text())
    image = data / "data_image" / records[0]["image"]
    jpeg = image.with_suffix(".jpg")
    Image.open(image).convert("RGB").resize((256, 256)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    records[0]["image"] = str(jpeg.relative_to(data / "data_image"))
    (data / "data_json" / "entity_eval.json").write_text(json.dumps(records))
    return data


def bomb_image_data(root: Path, tmp: Path) -> Path:
    """The fixture with one edit image replaced by a PNG whose header claims 20000 x 20000 pixels
    (PIL refuses more than twice its MAX_IMAGE_PIXELS as a decompression bomb when it opens one)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = Path(shutil.copytree(root, tmp / "data"))
    records = json.loads((data / "data_json" / "entity_eval.json").read_text())
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    (data / "data_image" / records[0]["image"]).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return data


# (name, arguments given the fixtures, expected exit code, what the last line of stderr must say)
CATALOGUE = [
    ("boolean option not understood", lambda f: ["--cases", "1", "--model_args", "sequential=maybe"], 1,
     "option sequential='maybe': expected a boolean"),
    ("boolean option 'off'", lambda f: ["--cases", "1", "--model_args", "generate=off"], 1,
     "option generate='off': expected a boolean"),
    ("misspelt protocol option", lambda f: ["--cases", "1", "--model_args", "sequental=true"], 1,
     "did you mean 'sequential'"),
    ("negative number", lambda f: ["--cases", "1", "--model_args", "sequential=true,sequential_gap=-2"], 1,
     "option sequential_gap=-2: must be >= 0"),
    ("--use_cache (stale by design)", lambda f: ["--use_cache", str(f["tmp"] / "cache")], 1,
     "--use_cache is not supported by mmke-eval"),
    ("--limit (splits edit cases)", lambda f: ["--limit", "5"], 1, "use --cases N"),
    ("missing --include_path", lambda f: ["--include_path", "/nonexistent/tasks"], 1,
     "--include_path /nonexistent/tasks: no such folder"),
    ("missing pretrained folder", lambda f: ["--model", "llava_hf", "--model_args", "pretrained=/nonexistent/llava"], 1,
     "pretrained=/nonexistent/llava: no such folder"),
    ("device without device_map (lmms-eval's llava_hf passes device_map='')",
     lambda f: ["--model", "llava_hf", "--model_args", f"pretrained={f['tiny']},device=cpu,dtype=float32"], 1,
     "add device_map=cpu"),
    ("truncated image", lambda f: [*tiny(f["tiny"]), "--tasks", "mmke_entity", "--data", truncated_image_data(f["data"], f["tmp"])], 1,
     "cannot read image"),
    ("decompression-bomb image", lambda f: [*tiny(f["tiny"]), "--tasks", "mmke_entity", "--data", bomb_image_data(f["data"], f["tmp"])], 1,
     "png refused as a possible decompression bomb"),  # "case <id>: image <path> refused ..."
    ("other task failing in the backend", lambda f: [*tiny(f["tiny"]), "--tasks", "mmke_entity,text_only_probe",
                                                      "--include_path", write_plain_task(f["tmp"] / "tasks", "text_only_probe", False),
                                                      "--data", f["data"]], 1,
     "the llava_hf backend failed on 1 of 1 request(s) of text_only_probe"),
    ("unknown editor", lambda f: ["--editor", "ft_lm"], 1, "unknown editor 'ft_lm'"),
    ("bad editor argument value", lambda f: ["--editor", "ft_llm", "--editor_args", "steps=many"], 1,
     "argument steps='many'"),
    ("make-mini onto a file", lambda f: ["make-mini", "--out", f["file"]], 1, "exists and is not a folder"),
    ("task name that is also a folder here", lambda f: (f["tmp"] / "mike").mkdir() or ["--tasks", "mike"], 1,
     "--tasks mike: a folder of that name is in the current directory"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, arguments, code, message", CATALOGUE, ids=[row[0] for row in CATALOGUE])
def test_bad_input(name, arguments, code, message, tiny_llava_dir, mmke_fixture_root, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    fixtures = {"tiny": tiny_llava_dir, "data": mmke_fixture_root, "tmp": tmp_path, "file": a_file}
    result = run(arguments(fixtures), tmp_path)
    assert result.returncode == code, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mmke-eval: error:") and message in last, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [[], ["train-editor", "--editor", "mend"]], ids=["evaluate", "train-editor"])
def test_no_gpu_names_the_option_to_set(command, tiny_llava_dir, tmp_path, monkeypatch, capsys):
    """lmms-eval's llava_hf defaults to device=cuda: where torch finds no GPU (simulated here, so the
    test holds on GPU machines too) both commands say which option to set, before any weight loads."""
    import torch

    from mmke_eval import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [*command, "--model", "llava_hf", "--model_args", f"pretrained={tiny_llava_dir}", "--tasks", "mmke_mini_entity",
            "--cases", "2", "--output_path", str(tmp_path / "out")]
    assert cli.main(argv) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "device=cuda (LlavaHf's default) needs a GPU, but torch finds none" in last, last
    assert "add device=cpu,device_map=cpu to --model_args" in last
