"""Score edit cases without the lmms-eval harness: same requests, same scoring, same aggregation.

For tests, benchmarks and notebooks. ``probe_requests`` builds what ``EditedLMM.generate_until``
builds from the harness's requests (prompts from the task's template, images, the task's
generation settings); ``score_cases`` runs them through a ``CaseEvaluator`` and aggregates each
column the way the task's ``process_results`` + ``case_mean`` do.
"""

from __future__ import annotations

from mmke_eval import families, metrics, prompts
from mmke_eval.adapters.base import Query
from mmke_eval.data.images import load_optional_image
from mmke_eval.data.schema import EditCase, ProbeDoc
from mmke_eval.engine.cases import ProbeRequest
from mmke_eval.engine.evaluator import CaseEvaluator
from mmke_eval.protocol import Protocol

# The generation settings of the task YAML (mmke_tasks/mmke/_default_template_yaml).
TASK_GEN_KWARGS = {"max_new_tokens": 32, "until": ["\n"], "do_sample": False, "temperature": 0}


def probe_requests(cases: list[EditCase], template: str = prompts.DEFAULT_TEMPLATE,
                   path: str = prompts.TRAINING_PATH) -> list[list[ProbeRequest]]:
    """The requests of ``cases``; prompts as the task's doc_to_text builds them on prompt ``path``."""
    grouped, index = [], 0
    for case in cases:
        probes = []
        for doc in ProbeDoc.rows(case):
            query = Query(
                prompt=prompts.probe_prompt(doc, template, path),
                image=load_optional_image(doc["image"], doc["case_id"]),
                target=doc["answer"],
            )
            probes.append(ProbeRequest(index, doc, query, dict(TASK_GEN_KWARGS)))
            index += 1
        grouped.append(probes)
    return grouped


def score_cases(adapter, editor, cases: list[EditCase], protocol: Protocol = Protocol(), journal=None) -> dict[str, float]:
    """Per-column task numbers (percent): t_rel ... port, plus *_em / *_contains.

    ``journal``: a ``mmke_eval.journal.CaseJournal`` that finished cases are written to and
    answered from (resume)."""
    grouped = probe_requests(cases, path=prompts.resolve(protocol.prompt_path, editor))
    results: list = [None] * sum(len(g) for g in grouped)
    CaseEvaluator(adapter, editor, protocol, journal=journal).answer_cases(grouped, results, progress=False)
    columns: dict[str, list[dict]] = {}
    for probe in (p for g in grouped for p in g):
        for name, item in metrics.probe_items(families.kind_of(probe.doc), probe.doc["answer"], results[probe.index],
                                              probe.doc["entity"], probe.doc["case_id"]).items():
            columns.setdefault(name, []).append(item)
    return {name: metrics.case_mean(items) for name, items in columns.items()}
