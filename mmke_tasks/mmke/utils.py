"""lmms-eval hooks of the MMKE-Bench-style tasks: documents, visuals, prompts, scores.

The heavy lifting lives in mmke_eval (data loading, metrics); these hooks only adapt it to
lmms-eval's signatures.
"""

from __future__ import annotations

import json

import datasets

from mmke_eval import metrics
from mmke_eval.data.images import load_image
from mmke_eval.data.schema import LOCALITY_KINDS, RESPONSE_MARKER, DataError
from mmke_eval.templates import render


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Replace the one-row source card with one document per probe of every edit case."""
    from mmke_eval.data.source import load_probe_docs

    if len(dataset) != 1:
        raise DataError(f"an MMKE task's data file must hold exactly one source card, found {len(dataset)} rows")
    return datasets.Dataset.from_list(load_probe_docs(dict(dataset[0])))


def doc_to_visual(doc: dict) -> list:
    return [load_image(doc["image"], doc["case_id"])] if doc["image"] else []


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    template = (lmms_eval_specific_kwargs or {}).get("prompt_template", "mmke/probe.jinja")
    return render(template, question=doc["question"])


def parse_response(text: str) -> dict | None:
    """The `edited` model's JSON response, or None for a plain generation."""
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and data.get(RESPONSE_MARKER) else None


def process_results(doc: dict, results: list) -> dict:
    """Scores of one probe, each as {"case", "score"} so that aggregation can average per case."""
    kind, case = doc["probe"], doc["case_id"]
    response = parse_response(results[0])
    generated = response["generated"] if response else results[0]
    scores = {}
    if response is not None:
        scores[kind] = response["score"]
    if kind in LOCALITY_KINDS:
        if response is not None and response.get("pre_generated") is not None:
            scores[f"{kind}_em"] = metrics.exact_match(generated, response["pre_generated"])
    else:
        scores[f"{kind}_em"] = metrics.exact_match(generated, doc["answer"])
        scores[f"{kind}_contains"] = metrics.contains(generated, doc["answer"])
    return {name: {"case": case, "score": score} for name, score in scores.items()}


def case_mean(items: list[dict]) -> float:
    return metrics.case_mean(items)
