"""average=token (issue 23, item 5): KE's published numbers are micro-averages over every answer
token (and locality position) of a task, not means of per-case means. Two cases, by hand."""

import pytest
import torch

from editors.base import EditHandle, Editor
from mmke_eval import metrics
from mmke_eval.adapters.base import ForwardResult
from mmke_eval.data.schema import EditCase, Probe
from mmke_eval.direct import score_cases
from mmke_eval.protocol import Protocol

# question -> (answer ids, predicted ids); locality question -> (pre top-1 ids, post top-1 ids) per position
TOKENS = {"q1": ([7], [7]), "q2": ([1, 2, 3], [1, 0, 0]), "q3": ([4, 5], [4, 5])}
POSITIONS = {"l1": ([1, 2], [1, 9]), "l2": ([1, 2, 3, 4], [1, 2, 3, 4])}


class Adapter:
    edited = False

    def teacher_forced(self, queries, k=1):
        out = []
        for q in queries:
            key = next(name for name in (*TOKENS, *POSITIONS) if name in q.prompt)
            if key in TOKENS:
                answer, predicted = TOKENS[key]
                topk = torch.zeros((len(answer), k), dtype=torch.long)
            else:
                pre, post = POSITIONS[key]
                answer = predicted = [0]
                topk = torch.tensor(post if self.edited else pre).reshape(-1, 1).expand(-1, k).clone()
            acc = sum(p == a for p, a in zip(predicted, answer)) / len(answer)
            out.append(ForwardResult(acc, answer, predicted, topk, slice(0, len(answer))))
        return out


class Toggle(Editor):
    name = "toggle"

    def apply(self, adapter, request):
        adapter.edited = True
        return EditHandle(editor=self.name, stats={"edit_images": 0})  # every edit report says how many images it used

    def restore(self, adapter, handle):
        adapter.edited = False


def _case(case_id, rel, loc):
    probes = tuple(Probe("t_rel", f"t_rel_{i}", q, "x") for i, q in enumerate(rel)) + (Probe("t_loc", "t_loc", loc, "y"),)
    return EditCase(case_id, "entity_level", "p", "t", "o", "", probes=probes, family="mmke")


CASES = [_case("c1", ["q1"], "l1"), _case("c2", ["q2", "q3"], "l2")]


def test_case_mean_is_the_default():
    scores = score_cases(Adapter(), Toggle(), CASES, Protocol(generate=False))
    assert scores["t_rel"] == pytest.approx(100 * (1 + (1 / 3 + 1) / 2) / 2)  # c1: 1; c2: mean(1/3, 2/2)
    assert scores["t_loc"] == pytest.approx(100 * (1 / 2 + 4 / 4) / 2)


def test_token_average_sums_tokens_and_positions_over_the_task():
    scores = score_cases(Adapter(), Toggle(), CASES, Protocol(generate=False, average="token"))
    assert scores["t_rel"] == pytest.approx(100 * (1 + 1 + 2) / (1 + 3 + 2))  # 4 of 6 answer tokens
    assert scores["t_loc"] == pytest.approx(100 * (1 + 4) / (2 + 4))  # 5 of 6 positions agree


def test_a_column_never_mixes_the_two_averages():
    with pytest.raises(ValueError, match="average=token"):
        metrics.case_mean([{"case": "a", "score": 1.0, "hits": 1, "total": 1}, {"case": "b", "score": 0.5}])
