"""One edit case through the model: pre-edit outputs, the edit, every probe scored, restore.

``CaseEvaluator`` holds the run's adapter, editor and protocol and scores the probes of a case
(``post_edit``); how edits are ordered across cases (one at a time, in user groups, sequentially
with a gap) is the schedule's (engine/schedules.py), which ``answer_cases`` hands the cases to.
Independent of lmms-eval.
"""

from __future__ import annotations

import json
import logging
from contextlib import nullcontext
from dataclasses import replace

from mmke_eval import families, metrics, prompts
from mmke_eval.adapters.base import ForwardResult, Query
from mmke_eval.data.augment import augment
from mmke_eval.data.images import load_optional_image
from mmke_eval.data.schema import DataError
from mmke_eval.engine import schedules
from mmke_eval.engine.cases import ProbeRequest, ProbeResponse
from mmke_eval.journal import CaseJournal
from mmke_eval.protocol import Protocol
from editors.base import EditRequest

logger = logging.getLogger("mmke_eval")


class CaseEvaluator:
    """Edit once per case, answer all of the case's probes, restore. Independent of lmms-eval.

    With a ``journal`` every finished case is written as it finishes, and a case already in the
    journal under the same keys is answered from it without editing (mmke_eval/journal.py).
    """

    def __init__(self, adapter, editor, protocol: Protocol, journal: CaseJournal | None = None):
        self.adapter, self.editor, self.protocol, self.journal = adapter, editor, protocol, journal
        if editor is not None:  # an editor that cannot use K images refuses them up front
            editor.check_edit_images(protocol.edit_images)
        self.resumed_cases: dict[str, int] = {}  # per task label: cases answered from the journal
        self.unscored_cases: dict[str, int] = {}  # per task label: sequential tail left unscored
        self.edit_only_cases: dict[str, int] = {}  # per task label: edited after the scored ones (--cases N, gap G)
        self.editor_reports: dict[str, dict] = {}  # per task label: the editor's summary of its edits
        self.case_stats: dict[str, list[dict]] = {}  # per task label: each case's edit stats (merged across processes)
        self.edited_cases: dict[str, list[str]] = {}  # per task label: the cases this process edited, in order
        self.lifelong_rows: dict[str, dict] = {}  # per task label (lifelong=T): its columns at each checkpoint
        self.label = ""

    # -- the run's settings, resolved for its editor ------------------------------------------
    @property
    def locality_span(self) -> str:
        span = self.protocol.loc_span
        return self.editor.reference_locality_span if span == "auto" else span

    @property
    def prompt_path(self) -> str:
        """The prompt path of the run (mmke_eval/prompts.py): the option, or the editor's reference."""
        return prompts.resolve(self.protocol.prompt_path, self.editor)

    @property
    def followup_image(self) -> str:
        """"edit" or "none": the image of VLKEB's follow-up edit (edit twice) for this editor."""
        choice = self.protocol.followup_image
        return ("edit" if self.editor.reference_followup_image else "none") if choice == "auto" else choice

    def port_image_for(self, knowledge_type: str) -> str:
        """"edit" or "data": which image the portability question of this knowledge type is asked on."""
        choice = self.protocol.port_image
        return self.editor.reference_port_images.get(knowledge_type, "data") if choice == "auto" else choice

    # -- the cases of a task, in the protocol's schedule ---------------------------------------
    def answer_cases(self, cases: list[list[ProbeRequest]], results: list, progress: bool = True, label: str = "") -> None:
        """Fill ``results[probe.index]`` with the JSON response of every probe of every case, in the
        protocol's schedule (with ``protocol.sequential`` the edits of all ``cases`` pile up, in order)."""
        stats: list[dict] = []
        self.label = label
        self.case_stats[label] = stats
        schedule = schedules.for_protocol(self.protocol)
        schedule.answer(self, cases, results, stats, progress=progress)
        self.editor_reports[label] = self.editor.summarize(stats)
        if isinstance(schedule, schedules.Lifelong):
            self.lifelong_rows[label] = {"edits": schedule.edits, "checkpoints": schedule.checkpoints(),
                                         "rows": schedule.rows(cases, results)}

    # -- one case ------------------------------------------------------------------------------
    def apply_case(self, probes: list[ProbeRequest], handles: list, stats: list) -> tuple:
        """Apply a case's edits (appending their handles to ``handles``); its first edit's (handle, request)."""
        requests = self.edit_requests(probes[0].doc)
        self.edited_cases.setdefault(self.label, []).append(probes[0].doc["case_id"])
        case_handles = self._apply_all(requests, handles)
        stats.append(dict(case_handles[0].stats))
        return case_handles[0], requests[0]

    def restore(self, handles: list) -> None:
        """Undo ``handles`` in reverse order (callers do it in ``finally``)."""
        for handle in reversed(handles):
            self.editor.restore(self.adapter, handle)

    def edit_request(self, doc: dict) -> EditRequest:
        case = doc["case_id"]
        k = self.protocol.edit_images
        extra = [path for path in (doc.get("edit_extra_images") or "").split("\n") if path]
        if k - 1 > len(extra):
            raise DataError(f"case {case}: edit_images={k} needs {k} images of the edit subject; the "
                            f"{doc['family']} data gives {1 + len(extra)}")
        images = [load_optional_image(path, case) for path in [doc["edit_image"], *extra[: k - 1]]]
        images = [augment(image, self.protocol.edit_augment, self.protocol.augment_seed, case) for image in images]
        prompt, rephrase_prompt = prompts.edit_prompts(doc["family"], doc["knowledge_type"], doc["edit_prompt"],
                                                       doc["rephrase_prompt"], self.prompt_path)
        return EditRequest(
            case_id=case,
            prompt=prompt,
            target=doc["edit_target"],
            image=images[0],
            extra_images=tuple(images[1:]),
            original=doc["edit_original"],
            rephrase_prompt=rephrase_prompt,
            rephrase_image=load_optional_image(doc["rephrase_image"], case),
            knowledge_type=doc["knowledge_type"],
            train_file=doc["train_file"],
            family=doc["family"],
        )

    def edit_requests(self, doc: dict) -> list[EditRequest]:
        """The case's edit, then its follow-up edits (VLKEB's "edit twice": the one-hop fact), on
        the edit image(s) or on none (``followup_image``: by default the editor's reference)."""
        main = self.edit_request(doc)
        followups = json.loads(doc["followup_edits"]) if doc.get("followup_edits") else []
        image = {} if self.followup_image == "edit" else {"image": None, "extra_images": ()}
        return [main] + [
            replace(main, case_id=f"{main.case_id}#edit{n}", prompt=prompt, target=target, original=(original or [""])[0],
                    rephrase_prompt="", rephrase_image=None, **image)
            for n, (prompt, target, *original) in enumerate(followups, 2)  # CCKEB's textual edit gives its original
        ]

    def _apply_all(self, requests: list[EditRequest], handles: list) -> list:
        """Apply ``requests`` in order, appending each handle to ``handles`` (the caller restores them)."""
        applied = []
        for request in requests:
            applied.append(self.editor.apply(self.adapter, request))
            handles.append(applied[-1])
            if "edit_images" not in applied[-1].stats:  # every edit report says how many edit images it used
                raise ValueError(f"editor {self.editor.name!r}: its edit report (handle.stats) lacks 'edit_images'")
        if len(applied) > 1 and any(handle.prefix for handle in applied):
            raise ValueError(f"editor {self.editor.name!r} edits in context (a prompt prefix per edit); the follow-up "
                             "edits of this task (VLKEB edit twice) need an editor that changes the model")
        return applied

    def _forwards(self, probes: list[ProbeRequest], queries: list[Query], handle=None) -> list[tuple[ForwardResult, str | None]]:
        """Teacher-forced outputs (top-k for locality) and greedy generations of ``queries``, from
        the adapter or from what answers in its place after the edit (``handle.responder``)."""
        model = handle.responder if handle is not None and handle.responder is not None else self.adapter
        k = max(self.protocol.t_loc_k, self.protocol.i_loc_k)
        forwards = model.teacher_forced(queries, k=k)
        generations = self._generate(probes, queries, model) if self.protocol.generate else [None] * len(probes)
        return list(zip(forwards, generations))

    def pre_edit(self, probes: list[ProbeRequest]) -> dict[int, tuple[ForwardResult, str | None]]:
        """Teacher-forced top-k (and generations) of the unedited model on the locality probes."""
        local = [p for p in probes if p.kind.is_locality]
        if not local:
            return {}
        return {p.index: out for p, out in zip(local, self._forwards(local, [p.query for p in local]))}

    def post_edit(self, probes, pre, handle, request: EditRequest, results: list) -> None:
        # Locality probes go through exactly the batches of the pre-edit pass (the same queries in
        # the same order, apart from an editor's prefix), the other probes through their own:
        # padding and batch shapes change half-precision rounding, which can flip near-tied top-k
        # orders, so an unchanged model must see bit-identical inputs before and after.
        local = [p for p in probes if p.kind.is_locality]
        others = [p for p in probes if not p.kind.is_locality]
        outputs: dict[int, tuple[ForwardResult, str | None]] = {}
        # An in-context edit's prefix is computed once per image for all of the case's probes
        # (the model does not change until the edit is undone).
        with self.adapter.reusing_prefixes() if handle.prefix and handle.responder is None else nullcontext():
            for group in (local, others):
                if group:
                    queries = [self._post_edit_query(p, handle, request) for p in group]
                    outputs.update((p.index, out) for p, out in zip(group, self._forwards(group, queries, handle)))
        for probe in probes:
            kind = probe.kind
            forward, generated = outputs[probe.index]
            response = self._response(probe, handle, generated)
            if kind.is_locality:
                pre_forward, pre_generated = pre[probe.index]
                response.score = self._locality(kind, pre_forward, forward)
                hits, total = self._locality(kind, pre_forward, forward, counts=True)
                response.pre_generated = pre_generated
            else:
                response.score = forward.token_acc
                hits, total = metrics.token_counts(forward.predicted_ids, forward.answer_ids)
                if kind.entity_metric and probe.doc.get("entity"):
                    self._entity_accuracy(probe, self._post_edit_query(probe, handle, request), forward, generated, response)
            if self.protocol.average == "token":  # the task's column becomes hits / total over all its probes
                response.average, response.counts = "token", [hits, total]
            if kind.portability:
                response.port_image = self.port_image_for(probe.doc["knowledge_type"])
            results[probe.index] = response.to_json()

    def _entity_accuracy(self, probe: ProbeRequest, query: Query, forward: ForwardResult, generated: str | None,
                         response: ProbeResponse) -> None:
        """MIKE's A (eq. 6) of one probe into ``response.entity_acc``, by ``protocol.entity_acc``.

        tokens (the paper's reading): (teacher-forced token accuracy of the answer + 1 if every token
        of the entity name inside the answer is predicted right) / 2; the name's tokens are those
        of the answer that hold its first occurrence (the whole answer when it is the name).
        generation: (exact match of the greedy generation + 1 if it contains the name) / 2."""
        doc = probe.doc
        answer, entity = doc["answer"], doc["entity"]
        if self.protocol.entity_acc == "generation":
            response.entity_acc = metrics.entity_accuracy(generated or "", answer, entity)
            return
        if forward.token_acc != forward.token_acc:  # no answer token: left out, as the score is
            response.entity_acc = float("nan")
            return
        if answer.strip().lower() == entity.strip().lower():
            span = slice(0, len(forward.answer_ids))
        else:
            start = answer.lower().find(entity.lower())
            if start < 0:
                raise DataError(f"case {doc['case_id']}, probe {doc['probe_id']}: the entity name {entity!r} does not occur "
                                f"in the answer {answer!r}; MIKE's entity accuracy needs it there")
            span = self.adapter.answer_span(query, start, start + len(entity))
            if self.adapter.answer_ids(query) != list(forward.answer_ids):  # the span indexes the adapter's tokens
                raise ValueError(f"case {doc['case_id']}, probe {doc['probe_id']}: the post-edit model scored other answer "
                                 "tokens than the adapter's; the entity name cannot be located in them")
        entity_match = metrics.tokens_match(forward.predicted_ids[span], forward.answer_ids[span])
        response.entity_match = entity_match
        response.entity_acc = metrics.entity_accuracy_tokens(forward.token_acc, entity_match)

    def _post_edit_query(self, probe: ProbeRequest, handle, request: EditRequest) -> Query:
        query = replace(probe.query, prefix=handle.prefix)
        if handle.prefix and probe.kind.is_locality and self.locality_span == "sequence":
            # EasyEdit's whole-sequence rule for an in-context edit: the prefix is part of the
            # compared input (same text, same tokens), so right-aligned against the pre-edit input
            # its BOS and image positions meet demonstration text (docs/protocol.md, "Locality span").
            query = replace(probe.query, prompt=handle.prefix + probe.query.prompt, prefix="")
        if probe.kind.portability and self.port_image_for(probe.doc["knowledge_type"]) == "edit":
            query = replace(query, image=request.image)
        return query

    def unscored(self, probes, handle, results: list, reason: str) -> None:
        for probe in probes:
            response = self._response(probe, handle, None)
            response.score, response.unscored = None, reason
            results[probe.index] = response.to_json()

    def _response(self, probe: ProbeRequest, handle, generated: str | None) -> ProbeResponse:
        """What every probe response carries; the caller adds the score."""
        return ProbeResponse(probe=probe.doc["probe"], editor=self.editor.name, generated=generated or "", edit=handle.stats)

    def _locality(self, kind: families.ProbeKind, pre: ForwardResult, post: ForwardResult, counts: bool = False):
        """Top-k agreement of the pre- and post-edit outputs; with ``counts``: (agreeing, compared) entries."""
        k = getattr(self.protocol, kind.locality)  # the declared option: t_loc_k or i_loc_k
        agreement = metrics.topk_agreement_counts if counts else metrics.topk_agreement
        if self.locality_span == "answer":
            return agreement(pre.topk[pre.answer_positions], post.topk[post.answer_positions], k)
        # "query": the positions of the query (an in-context prefix left out); "sequence": the
        # post-edit input holds the prefix too (``_post_edit_query``). Both right-aligned.
        return agreement(pre.topk, post.topk, k)

    def _generate(self, probes: list[ProbeRequest], queries: list[Query], model) -> list[str]:
        """Greedy generations of ``queries``, batched per distinct generation setting (normally one)."""
        outputs: list[str] = [""] * len(probes)
        by_setting: dict[str, list[int]] = {}
        for i, probe in enumerate(probes):
            by_setting.setdefault(json.dumps(probe.gen_kwargs, sort_keys=True, default=str), []).append(i)
        for members in by_setting.values():
            gen_kwargs = probes[members[0]].gen_kwargs
            until = gen_kwargs.get("until") or []
            texts = model.generate(
                [replace(queries[i], target="") for i in members],
                max_new_tokens=int(gen_kwargs.get("max_new_tokens", 32)),
                until=[until] if isinstance(until, str) else list(until),
            )
            for i, text in zip(members, texts):
                outputs[i] = text
        return outputs


