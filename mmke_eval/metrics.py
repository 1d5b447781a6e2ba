"""Per-probe scores and their aggregation, as MMKE-Bench computes them (shared docs, section 2).

* Reliability / generality / portability: teacher-forced token accuracy over the answer tokens
  (``token_accuracy``: the one definition, which the adapters call).
* Locality: agreement of the pre-edit and post-edit models' top-k token ids, compared element-wise
  in rank order over the compared positions (k=1 for text, k=10 for image in the reference).
* Extra columns from greedy generations: exact match and "contains" after normalisation.
* A task's number is the mean over cases of the per-case mean over that case's probes of a kind
  (MMKE-Bench: T-Rel = mean(T_Rel_1, T_Rel_2) per case), times 100.
"""

from __future__ import annotations

import math
import re
import string
from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch

from mmke_eval.engine.cases import ProbeResponse
from mmke_eval.families import ProbeKind


def token_accuracy(predicted_ids: Sequence[int], answer_ids: Sequence[int]) -> float:
    """Fraction of answer tokens whose teacher-forced argmax prediction is the answer token."""
    if len(predicted_ids) != len(answer_ids):
        raise ValueError(f"{len(predicted_ids)} predictions for {len(answer_ids)} answer tokens")
    if not answer_ids:
        return float("nan")
    return sum(int(p == a) for p, a in zip(predicted_ids, answer_ids)) / len(answer_ids)


def token_counts(predicted_ids: Sequence[int], answer_ids: Sequence[int]) -> tuple[int, int]:
    """(correct, answer tokens): what ``token_accuracy`` divides, for a token micro-average."""
    if len(predicted_ids) != len(answer_ids):
        raise ValueError(f"{len(predicted_ids)} predictions for {len(answer_ids)} answer tokens")
    return sum(int(p == a) for p, a in zip(predicted_ids, answer_ids)), len(answer_ids)


def topk_agreement_counts(pre_topk: torch.Tensor, post_topk: torch.Tensor, k: int) -> tuple[int, int]:
    """(agreeing, compared) entries of ``topk_agreement``, for a micro-average over positions."""
    if pre_topk.shape[1] < k or post_topk.shape[1] < k:
        raise ValueError(f"top-{k} agreement needs at least {k} ids per position")
    n = min(pre_topk.shape[0], post_topk.shape[0])
    return int((pre_topk[-n:, :k] == post_topk[-n:, :k]).sum()) if n else 0, n * k


def topk_agreement(pre_topk: torch.Tensor, post_topk: torch.Tensor, k: int) -> float:
    """Mean over positions and ranks of ``pre_topk[:, :k] == post_topk[:, :k]``.

    Both are [positions, K] id tensors sorted by score. If the position counts differ (a prompt
    tokenised differently after an in-context prefix), the last positions are aligned, where the
    answer is.
    """
    if pre_topk.shape[1] < k or post_topk.shape[1] < k:
        raise ValueError(f"top-{k} agreement needs at least {k} ids per position")
    n = min(pre_topk.shape[0], post_topk.shape[0])
    if n == 0:
        return float("nan")
    pre, post = pre_topk[-n:, :k], post_topk[-n:, :k]
    return (pre == post).float().mean().item()


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and English articles, squeeze whitespace (SQuAD-style)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def contains(prediction: str, reference: str) -> float:
    """1 if the normalised reference occurs in the normalised prediction as whole words."""
    ref = normalize_answer(reference)
    if not ref:
        return 0.0
    return float(f" {ref} " in f" {normalize_answer(prediction)} ")


def case_mean(items: Iterable[dict]) -> float:
    """Aggregate ``{"case": id, "score": s}`` items: mean within each case, then over cases, x100.

    Items with a NaN score (no answer tokens) are left out; a case with no valid item is left out.
    Items that carry token counts (``hits``, ``total``: a run with ``average=token``) give instead
    the micro-average ``sum(hits) / sum(total)`` x100 over every token (or locality position) of
    the task, as KE's ke_eval.py accumulates its accuracy.
    """
    items = list(items)
    valid = [item for item in items if float(item["score"]) == float(item["score"])]
    counted = [item for item in valid if "total" in item]
    if counted:
        if len(counted) != len(valid):
            raise ValueError(f"{len(valid) - len(counted)} of {len(valid)} scores carry no token counts: a column cannot mix "
                             "average=token and average=case results")
        total = sum(int(item["total"]) for item in counted)
        return 100.0 * sum(int(item["hits"]) for item in counted) / total if total else float("nan")
    per_case: dict[str, list[float]] = defaultdict(list)
    for item in items:
        score = float(item["score"])
        if score == score:  # not NaN
            per_case[item["case"]].append(score)
    if not per_case:
        return float("nan")
    # math.fsum is exactly rounded, so the number does not depend on the order of the items (a run
    # in several processes gathers them rank by rank) nor of the cases.
    return 100.0 * math.fsum(math.fsum(v) / len(v) for v in per_case.values()) / len(per_case)


def parse_response(text: str) -> ProbeResponse | None:
    """The `edited` model's response for one probe, or None for a plain model's generation."""
    return ProbeResponse.from_json(text)


def entity_accuracy(prediction: str, reference: str, entity: str) -> float:
    """MIKE's entity-oriented accuracy (eq. 6) on a generation (``entity_acc=generation``):
    (1[output = y] + 1[entity name in output]) / 2."""
    return (exact_match(prediction, reference) + contains(prediction, entity)) / 2


def probe_items(kind: ProbeKind, answer: str, output: str, entity: str, case: str) -> dict[str, dict]:
    """``probe_scores`` as the items a task aggregates (``case_mean``): ``{"case", "score"}``, and for
    the probe's own column in an ``average=token`` run its token counts (``hits``, ``total``)."""
    items = {name: {"case": case, "score": score} for name, score in probe_scores(kind, answer, output, entity).items()}
    response = parse_response(output)
    if response is not None and response.average == "token" and kind.name in items and response.counts:
        hits, total = response.counts
        items[kind.name].update(hits=int(hits), total=int(total))
    return items
def tokens_match(predicted_ids: Sequence[int], answer_ids: Sequence[int]) -> float:
    """1.0 if every (teacher-forced) predicted token is the answer token, else 0.0; an empty span is 0."""
    if len(predicted_ids) != len(answer_ids):
        raise ValueError(f"{len(predicted_ids)} predictions for {len(answer_ids)} answer tokens")
    return float(bool(answer_ids) and all(p == a for p, a in zip(predicted_ids, answer_ids)))


def entity_accuracy_tokens(token_acc: float, entity_match: float) -> float:
    """MIKE's entity-oriented accuracy (eq. 6) as the paper defines its halves (``entity_acc=tokens``,
    the default): the token-level match (teacher-forced token accuracy over the answer, in [0, 1])
    and the entity-level match (1 if every token of the entity name is right)."""
    return (token_acc + entity_match) / 2


def probe_scores(kind: ProbeKind, answer: str, output: str, entity: str = "") -> dict[str, float]:
    """Every column one probe contributes to, from the model's output for it.

    A scored response gives the probe's benchmark number (teacher-forced accuracy or locality
    agreement) and, for a probe naming an ``entity`` of a kind that declares it, MIKE's entity
    accuracy as the ``edited`` model computed it (``entity_acc``, by the protocol option of that
    name); any output gives the generation columns: exact match / contains against the answer, or
    for locality probes exact match of the post-edit against the pre-edit generation. A plain
    model's generation has no teacher-forced pass, hence no benchmark number and no entity accuracy.
    """
    response = parse_response(output)
    name = kind.name
    if response is not None and response.unscored:  # left out of every column (NaN)
        return {column: float("nan") for column in kind.metric_names()}
    generated = response.generated if response else output
    scores = {}
    if response is not None:
        scores[name] = response.score if response.given("score") else _missing(name, "score")
    if kind.is_locality:
        if response is not None and response.given("pre_generated") and response.pre_generated is not None:
            scores[f"{name}_em"] = exact_match(generated, response.pre_generated)
    else:
        scores[f"{name}_em"] = exact_match(generated, answer)
        scores[f"{name}_contains"] = contains(generated, answer)
        if kind.entity_metric and entity and response is not None:
            if not response.given("entity_acc"):
                raise ValueError(f"probe {name}: the edited model's response lacks entity_acc (MIKE's entity accuracy)")
            scores[f"{name}_entity"] = response.entity_acc
    return scores


def _missing(probe: str, field_name: str):
    raise ValueError(f"probe {probe}: the edited model's response lacks {field_name}")
