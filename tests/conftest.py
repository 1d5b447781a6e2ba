"""Shared fixtures: a tiny LLaVA built offline and a small data set in the real MMKE-Bench schema."""

from __future__ import annotations

import os

import pytest

# No test may reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def no_run_context_from_another_test():
    """An `edited` model built as lmms-eval's CLI builds it activates its run context for the rest of
    the thread (mmke_eval/run_context.py): no test inherits another's."""
    from mmke_eval.run_context import activated

    with activated(None):
        yield


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory):
    """A save_pretrained folder of a tiny random LLaVA (model + processor), loadable by llava_hf."""
    from mmke_eval.testing.tiny_llava import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="session")
def mmke_fixture_root(tmp_path_factory):
    """A folder laid out as the MMKE-Bench release (data_json/, data_image/), all three types."""
    from mmke_tasks.mmke.fixture import write_mmke_fixture

    return write_mmke_fixture(tmp_path_factory.mktemp("mmke_data"))


# Under pytest-xdist (make test: two workers on two cores) each worker computes on one thread:
# two-thread torch ops spin against the other worker and run many times slower. Subprocesses the
# tests start inherit the setting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
