"""The `edited` lmms-eval model: any registered backend, put in its post-edit state case by case.

    lmms-eval --model edited --model_args base=llava_hf,editor=ft_llm,pretrained=...,editor.steps=40

Model arguments: ``base`` (an lmms-eval backend name, also the adapter key in registry.yaml),
``editor`` (a registry.yaml editor name, default "none"), ``editor.<field>=value`` (editor
config), ``adapter.<option>=value`` (adapter options such as prompt_format), the protocol options
below, and everything else goes to the base backend.

For every edit case (the probe documents sharing a ``case_id``) the wrapper computes what locality
needs on the unedited model, applies the edit once, answers every probe of the case in batches,
and restores the model before the next case. Each probe's answer is a JSON string carrying its
score; the task's ``process_results`` reads it. Requests of other tasks go to the base model
untouched, so ``--tasks mmke_entity,mme`` works.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, replace
from typing import Any

from lmms_eval.api.model import lmms
from tqdm import tqdm

from mmke_eval import metrics, registry
from mmke_eval.adapters.base import ForwardResult, Query
from mmke_eval.data.images import load_optional_image
from mmke_eval.data.schema import I_LOC, LOCALITY_KINDS, RESPONSE_MARKER, ProbeDoc
from editors.base import EditRequest

logger = logging.getLogger("mmke_eval")

_PROBE_FIELDS = frozenset(ProbeDoc.__dataclass_fields__)

# The protocol of the last EditedLMM built in this process, for the mmke-eval CLI to write
# into the results file (lmms-eval keeps only model_args).
LAST_PROTOCOL: dict[str, Any] = {}


@dataclass(frozen=True)
class Protocol:
    """Scoring choices. Defaults are the MMKE-Bench reference protocol (docs/protocol.md)."""

    t_loc_k: int = 1  # text locality: top-1 agreement
    i_loc_k: int = 10  # image locality: top-10 agreement, element-wise in rank order
    loc_span: str = "auto"  # "sequence" | "answer" | "auto" (= the editor's reference span)
    generate: bool = True  # greedy generations for the exact-match / contains columns
    sequential: bool = False  # apply edits cumulatively, restore only at the end
    # With sequential: case i is scored after edits 0..i+gap (VLKEB's gap); the last ``gap``
    # cases are edited but not scored, as in VLKEB. 0: right after its own edit (EasyEdit).
    sequential_gap: int = 0

    def __post_init__(self):
        if self.sequential_gap < 0:
            raise ValueError("sequential_gap must be >= 0")
        if self.sequential_gap and not self.sequential:
            raise ValueError("sequential_gap needs sequential=true")
        if self.loc_span not in ("auto", "sequence", "answer"):
            raise ValueError(f"loc_span must be auto, sequence or answer, not {self.loc_span!r}")
        if self.t_loc_k < 1 or self.i_loc_k < 1:
            raise ValueError("t_loc_k and i_loc_k must be >= 1")


def _split_args(kwargs: dict[str, Any]) -> tuple[dict, dict, dict]:
    editor_args, adapter_args, base_args = {}, {}, {}
    for key, value in kwargs.items():
        if key.startswith("editor."):
            editor_args[key[len("editor.") :]] = value
        elif key.startswith("adapter."):
            adapter_args[key[len("adapter.") :]] = value
        else:
            base_args[key] = value
    return editor_args, adapter_args, base_args


def is_probe_doc(doc: Any) -> bool:
    return isinstance(doc, dict) and _PROBE_FIELDS <= doc.keys()


@dataclass
class ProbeRequest:
    index: int  # position in the harness's request list
    doc: dict
    query: Query
    gen_kwargs: dict


class EditedLMM(lmms):
    """lmms-eval model that edits its base model per edit case before answering."""

    def __init__(
        self,
        base: str,
        editor: str = "none",
        batch_size: int | str = 1,
        device: str | None = None,
        t_loc_k: int = 1,
        i_loc_k: int = 10,
        loc_span: str = "auto",
        generate: bool = True,
        sequential: bool = False,
        sequential_gap: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from lmms_eval.models import get_model

        editor_args, adapter_args, base_args = _split_args(kwargs)
        self.protocol = Protocol(int(t_loc_k), int(i_loc_k), str(loc_span), bool(generate), bool(sequential), int(sequential_gap))
        adapter_cls = registry.adapter_class(base)  # fail on an unknown base before loading weights
        if device is not None:
            base_args["device"] = device
        self.base = get_model(base, force_simple=True)(batch_size=batch_size, **base_args)
        self.base.task_dict = self.task_dict  # the evaluator fills this dict in place
        self._rank, self._world_size = self.base.rank, self.base.world_size
        if hasattr(self.base, "accelerator"):
            self.accelerator = self.base.accelerator
        self.adapter = adapter_cls.from_lmms(self.base, **adapter_args)
        self.editor = registry.build_editor(editor, family=self.adapter.family, overrides=editor_args)
        self.evaluator = CaseEvaluator(self.adapter, self.editor, self.protocol)
        self.base_name = base
        LAST_PROTOCOL.clear()
        LAST_PROTOCOL.update(self.describe())
        logger.info("mmke-eval protocol: %s", json.dumps(LAST_PROTOCOL))

    # -- what the results record -------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "base": self.base_name,
            "editor": self.editor.describe(),
            "adapter": self.adapter.describe(),
            "protocol": {**asdict(self.protocol), "loc_span_resolved": self.evaluator.locality_span,
                         **({"unscored_cases": dict(self.evaluator.unscored_cases)} if self.protocol.sequential_gap else {})},
            "token_accuracy": "teacher-forced argmax over the answer tokens; input = prompt + ' ' + answer",
        }

    # -- lmms-eval API -------------------------------------------------------------------------
    def generate_until(self, requests) -> list:
        results: list[Any] = [None] * len(requests)
        cases: OrderedDict[tuple[str, str], list[ProbeRequest]] = OrderedDict()
        plain: list[int] = []
        for index, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            if request.metadata and request.metadata.get("__padding_only__"):
                results[index] = ""  # thrown away by the harness; never worth an edit
                continue
            doc = self.task_dict[task][split][doc_id]
            if not is_probe_doc(doc):
                plain.append(index)
                continue
            visuals = doc_to_visual(doc)
            query = Query(prompt=context, image=visuals[0] if visuals else None, target=doc["answer"])
            cases.setdefault((task, doc["case_id"]), []).append(ProbeRequest(index, doc, query, dict(gen_kwargs)))
        if plain:
            for index, output in zip(plain, self.base.generate_until([requests[i] for i in plain])):
                results[index] = output
        # One task at a time: sequential edits pile up within a benchmark split, as in the
        # reference (one run per data type), never across the tasks of a group.
        by_task: OrderedDict[str, list[list[ProbeRequest]]] = OrderedDict()
        for (task, _), probes in cases.items():
            by_task.setdefault(task, []).append(probes)
        for task, task_cases in by_task.items():
            self.evaluator.answer_cases(task_cases, results, progress=self.rank == 0, label=task)
        if cases:
            LAST_PROTOCOL.update(self.describe())  # editors report what they really used (IKE's retriever)
        return results

    def loglikelihood(self, requests) -> list:
        return self.base.loglikelihood(requests)

    def generate_until_multi_round(self, requests) -> list:
        return self.base.generate_until_multi_round(requests)


class CaseEvaluator:
    """Edit once per case, answer all of the case's probes, restore. Independent of lmms-eval."""

    def __init__(self, adapter, editor, protocol: Protocol):
        self.adapter, self.editor, self.protocol = adapter, editor, protocol
        self.unscored_cases: dict[str, int] = {}  # per task label: sequential tail left unscored

    @property
    def locality_span(self) -> str:
        span = self.protocol.loc_span
        return self.editor.reference_locality_span if span == "auto" else span

    def answer_cases(self, cases: list[list[ProbeRequest]], results: list, progress: bool = True, label: str = "") -> None:
        """Fill ``results[probe.index]`` with the JSON response of every probe of every case.

        With ``protocol.sequential`` the edits of all ``cases`` pile up, in order.
        """
        desc = f"{self.editor.name} edits" + (f" ({label})" if label else "")
        if not self.protocol.sequential:
            for probes in tqdm(cases, desc=desc, disable=not progress):
                pre = self._pre_edit(probes)
                with self.editor.editing(self.adapter, self._edit_request(probes[0].doc)) as handle:
                    self._post_edit(probes, pre, handle, results)
            return
        # Sequential editing: every pre-edit output comes from the unedited model; edits pile up
        # and each case is scored ``gap`` edits after its own; all edits are undone at the end.
        pres = [self._pre_edit(probes) for probes in tqdm(cases, desc="pre-edit", disable=not progress)]
        gap = self.protocol.sequential_gap
        if gap and len(cases) <= gap:
            logger.warning("sequential_gap=%d with %d cases%s: no case is scored", gap, len(cases), f" in {label}" if label else "")
        handles, waiting = [], deque()
        try:
            for probes, pre in tqdm(list(zip(cases, pres)), desc=desc, disable=not progress):
                handles.append(self.editor.apply(self.adapter, self._edit_request(probes[0].doc)))
                waiting.append((probes, pre, handles[-1]))
                if len(waiting) > gap:
                    self._post_edit(*waiting.popleft(), results)
            for probes, _, handle in waiting:  # fewer than ``gap`` edits came after them
                self._unscored(probes, handle, results)
            self.unscored_cases[label] = self.unscored_cases.get(label, 0) + len(waiting)
        finally:
            for handle in reversed(handles):
                self.editor.restore(self.adapter, handle)

    @staticmethod
    def _edit_request(doc: dict) -> EditRequest:
        case = doc["case_id"]
        return EditRequest(
            case_id=case,
            prompt=doc["edit_prompt"],
            target=doc["edit_target"],
            image=load_optional_image(doc["edit_image"], case),
            original=doc["edit_original"],
            rephrase_prompt=doc["rephrase_prompt"],
            rephrase_image=load_optional_image(doc["rephrase_image"], case),
            knowledge_type=doc["knowledge_type"],
            train_file=doc["train_file"],
        )

    def _pre_edit(self, probes: list[ProbeRequest]) -> dict[int, tuple[ForwardResult, str | None]]:
        """Teacher-forced top-k (and generations) of the unedited model on the locality probes."""
        local = [p for p in probes if p.doc["probe"] in LOCALITY_KINDS]
        if not local:
            return {}
        k = max(self.protocol.t_loc_k, self.protocol.i_loc_k)
        forwards = self.adapter.teacher_forced([p.query for p in local], k=k)
        generations = self._generate(local, prefix="") if self.protocol.generate else [None] * len(local)
        return {p.index: (f, g) for p, f, g in zip(local, forwards, generations)}

    def _post_edit(self, probes, pre, handle, results: list) -> None:
        queries = [replace(p.query, prefix=handle.prefix) for p in probes]
        k = max(self.protocol.t_loc_k, self.protocol.i_loc_k)
        forwards = self.adapter.teacher_forced(queries, k=k)
        generations = self._generate(probes, prefix=handle.prefix) if self.protocol.generate else [None] * len(probes)
        for probe, forward, generated in zip(probes, forwards, generations):
            kind = probe.doc["probe"]
            response = self._response(probe, handle, generated)
            if kind in LOCALITY_KINDS:
                pre_forward, pre_generated = pre[probe.index]
                response["score"] = self._locality(kind, pre_forward, forward)
                response["pre_generated"] = pre_generated
            else:
                response["score"] = forward.token_acc
            results[probe.index] = json.dumps(response, default=str)

    def _unscored(self, probes, handle, results: list) -> None:
        for probe in probes:
            response = {**self._response(probe, handle, None), "score": float("nan"),
                        "unscored": "sequential_gap: too few edits after it"}
            results[probe.index] = json.dumps(response, default=str)

    def _response(self, probe: ProbeRequest, handle, generated: str | None) -> dict[str, Any]:
        """The fields every probe response carries; the score is added by the caller."""
        return {RESPONSE_MARKER: 1, "probe": probe.doc["probe"], "editor": self.editor.name,
                "generated": generated or "", "edit": handle.stats}

    def _locality(self, kind: str, pre: ForwardResult, post: ForwardResult) -> float:
        k = self.protocol.i_loc_k if kind == I_LOC else self.protocol.t_loc_k
        if self.locality_span == "answer":
            return metrics.topk_agreement(pre.topk[pre.answer_positions], post.topk[post.answer_positions], k)
        return metrics.topk_agreement(pre.topk, post.topk, k)

    def _generate(self, probes: list[ProbeRequest], prefix: str) -> list[str]:
        """Greedy generations, batched per distinct generation setting (normally one)."""
        outputs: list[str] = [""] * len(probes)
        by_setting: dict[str, list[int]] = {}
        for i, probe in enumerate(probes):
            by_setting.setdefault(json.dumps(probe.gen_kwargs, sort_keys=True, default=str), []).append(i)
        for members in by_setting.values():
            gen_kwargs = probes[members[0]].gen_kwargs
            until = gen_kwargs.get("until") or []
            texts = self.adapter.generate(
                [replace(probes[i].query, prefix=prefix, target="") for i in members],
                max_new_tokens=int(gen_kwargs.get("max_new_tokens", 32)),
                until=[until] if isinstance(until, str) else list(until),
            )
            for i, text in zip(members, texts):
                outputs[i] = text
        return outputs
