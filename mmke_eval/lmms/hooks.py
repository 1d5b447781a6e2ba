"""lmms-eval hooks shared by every knowledge-editing task: documents, visuals, prompts, scores.

Task YAMLs of every benchmark family point here through mmke_tasks/hooks.py
(``!function mmke_tasks.hooks.process_docs``); what
differs between families is declared in registry.yaml (mmke_eval/families.py) and read from the
documents' ``family`` field. The heavy lifting lives in mmke_eval (data loading, metrics). What
the hooks need of the run (data root, case limit, prompt path) comes from the active run context
(mmke_eval/run_context.py).
"""

from __future__ import annotations

import datasets

from mmke_eval import families, metrics, prompts
from mmke_eval.data.images import load_image
from mmke_eval.data.schema import DataError

DEFAULT_TEMPLATE = prompts.DEFAULT_TEMPLATE


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Replace the one-row source card with one document per probe of every edit case.

    In several processes (torchrun / accelerate launch set WORLD_SIZE) the documents are ordered
    so that lmms-eval's sharding gives each process whole edit cases (mmke_eval/parallel.py)."""
    from mmke_eval import parallel, run_context
    from mmke_eval.data.source import load_probe_docs

    if len(dataset) != 1:
        raise DataError(f"a knowledge-editing task's data file must hold exactly one source card, found {len(dataset)} rows")
    context = run_context.current()
    docs = load_probe_docs(dict(dataset[0]), context)
    _, world_size = parallel.world()
    return datasets.Dataset.from_list(parallel.order_for_ranks(docs, world_size, context.case_block))


def doc_to_visual(doc: dict) -> list:
    return [load_image(doc["image"], doc["case_id"])] if doc["image"] else []


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The probe's prompt (mmke_eval/prompts.py): on the prompt path of the `edited` model, the
    template its family declares for that path, else its kind's own, else the task's."""
    return prompts.probe_prompt(doc, (lmms_eval_specific_kwargs or {}).get("prompt_template", DEFAULT_TEMPLATE))


def process_results(doc: dict, results: list) -> dict:
    """Scores of one probe, each as {"case", "score"} so that aggregation can average per case.
    A padding document (a filler of a multi-process run) gives nothing: no column counts it."""
    if doc.get("padding"):
        return {}
    return metrics.probe_items(families.kind_of(doc), doc["answer"], results[0], doc.get("entity", ""), doc["case_id"])


def case_mean(items: list[dict]) -> float:
    return metrics.case_mean(items)
