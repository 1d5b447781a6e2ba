"""The timed paths of one editor over the cases: ours (the case evaluator), the naive per-probe loop of
the older toolkits, and the limit (the unavoidable work only); and the counter of adapter calls."""

from __future__ import annotations

import copy
import json
from dataclasses import replace


class CallCounter:
    """Counts adapter calls, the model batches they run (chunks) and the queries they carry."""

    OPS = ("teacher_forced", "generate")

    def __init__(self, *adapters):
        self.counts = {f"{op}_{what}": 0 for op in self.OPS for what in ("calls", "batches", "queries")}
        self._current = None
        for adapter in adapters:
            self.wrap(adapter)

    def wrap(self, adapter) -> None:
        for op in self.OPS:
            original = getattr(adapter, op)

            def counted(queries, *args, _original=original, _op=op, **kwargs):
                self.counts[f"{_op}_calls"] += 1
                self.counts[f"{_op}_queries"] += len(queries)
                self._current = _op
                try:
                    return _original(queries, *args, **kwargs)
                finally:
                    self._current = None

            setattr(adapter, op, counted)
        chunks = adapter._chunks

        def counted_chunks(queries, indices=None, _chunks=chunks):
            found = _chunks(queries, indices)
            if self._current:
                self.counts[f"{self._current}_batches"] += len(found)
            return found

        adapter._chunks = counted_chunks
        # Rows answered on a reused prefix (inside reusing_prefixes()) run one at a time: a batch each.
        for name in ("_teacher_forced_reusing", "_generate_reusing"):
            if hasattr(adapter, name):
                reusing = getattr(adapter, name)

                def counted_row(*args, _reusing=reusing, **kwargs):
                    out = _reusing(*args, **kwargs)
                    if out is not None and self._current:
                        self.counts[f"{self._current}_batches"] += 1
                    return out

                setattr(adapter, name, counted_row)


def run_ours(adapter, editor, cases, n_probes, counter, generate=True):
    from mmke_eval.engine.evaluator import CaseEvaluator
    from mmke_eval.protocol import Protocol

    evaluator = CaseEvaluator(adapter, editor, Protocol(generate=generate))
    results: list = [None] * n_probes
    evaluator.answer_cases(cases, results, progress=False)
    return {i: json.loads(r) for i, r in enumerate(results)}


def run_naive(adapter, editor, cases, n_probes, counter, generate=True):
    """Per case: deepcopy, edit the copy, every probe alone, pre-edit locality per probe, discard."""
    from mmke_eval import families, metrics
    from mmke_eval.adapters.llava_hf import LlavaHFAdapter
    from mmke_eval.engine.evaluator import CaseEvaluator
    from mmke_eval.protocol import Protocol

    protocol = Protocol(generate=generate)
    span = editor.reference_locality_span if protocol.loc_span == "auto" else protocol.loc_span
    k = max(protocol.t_loc_k, protocol.i_loc_k)
    out = {}
    for probes in cases:
        edited = LlavaHFAdapter(copy.deepcopy(adapter.model), adapter.processor, device=adapter.device, batch_size=1)
        counter.wrap(edited)
        handle = editor.apply(edited, CaseEvaluator(adapter, editor, protocol).edit_request(probes[0].doc))
        for probe in probes:
            gen = probe.gen_kwargs
            max_new, until = int(gen.get("max_new_tokens", 32)), list(gen.get("until") or [])
            query = replace(probe.query, prefix=handle.prefix)
            post = edited.teacher_forced([query], k=k)[0]
            generated = edited.generate([replace(query, target="")], max_new_tokens=max_new, until=until)[0] if generate else ""
            kind = families.kind_of(probe.doc)
            response = {"probe": kind.name, "generated": generated}
            if kind.is_locality:
                pre = adapter.teacher_forced([probe.query], k=k)[0]
                response["pre_generated"] = adapter.generate(
                    [replace(probe.query, target="")], max_new_tokens=max_new, until=until
                )[0] if generate else None
                top = getattr(protocol, kind.locality)
                if span == "answer":
                    response["score"] = metrics.topk_agreement(pre.topk[pre.answer_positions], post.topk[post.answer_positions], top)
                else:
                    response["score"] = metrics.topk_agreement(pre.topk, post.topk, top)
            else:
                response["score"] = post.token_acc
            out[probe.index] = response
        del edited, handle  # the copy is discarded; nothing to restore
    return out


def run_limit(adapter, editor, cases, n_probes, counter, prepared):
    """The unavoidable work of each case, with no evaluator and no generation (a lower bound):

    * the pre-edit forward of the case's locality probes, one batch;
    * the edit's optimisation: for FT ``steps`` x (forward + backward of the edit query, only the
      edited tensors requiring grad, one AdamW step), then the edited tensors copied back; for
      none and IKE no edit work (IKE's prefix was retrieved before the clock, see ``prepare_limit``);
    * one teacher-forced forward of all the case's probes (with IKE's prefix), one batch.

    Inputs are encoded before the clock; mixed text-only and image rows share a batch (LLaVA
    scatters image features into the image-token positions only).
    """
    import torch
    import torch.nn.functional as F

    model = adapter.model
    for case in prepared:
        with torch.no_grad():
            if case["pre"] is not None:
                model(**case["pre"], use_cache=False)
        edit = case["edit"]
        if edit is not None:
            params = list(edit["params"].values())
            saved = [p.detach().clone() for p in params]
            flags = [(p, p.requires_grad) for p in model.parameters()]
            wanted = {id(p) for p in params}
            for p, _ in flags:
                p.requires_grad_(id(p) in wanted)
            optimizer = torch.optim.AdamW(params, lr=edit["lr"], weight_decay=edit["weight_decay"])
            for _ in range(edit["steps"]):
                logits = model(**edit["inputs"], use_cache=False).logits[0]
                loss = F.cross_entropy(logits[edit["start"] - 1 : -1].float(), edit["labels"])
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            del optimizer
            for p, flag in flags:
                p.requires_grad_(flag)
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        with torch.no_grad():
            model(**case["post"], use_cache=False)
    return {}


def _inputs(adapter, queries) -> dict:
    """One right-padded model batch of ``queries`` (text-only and image rows may mix)."""
    with_image = [q for q in queries if q.image is not None]
    image_inputs, counts = adapter._image_inputs(with_image) if with_image else ({}, [])
    counts = iter(counts)
    encoded = [adapter._encode(q, next(counts) if q.image is not None else 0) for q in queries]
    ids, mask = adapter._padded(encoded, left=False)
    return {"input_ids": ids, "attention_mask": mask, **image_inputs}


def prepare_limit(adapter, editor, cases) -> list[dict]:
    """Encoded inputs of every case for ``run_limit`` (off the clock)."""
    import torch

    from editors.ft import FTEditor
    from editors.ike import IKEEditor
    from mmke_eval import families
    from mmke_eval.adapters.base import Query
    from mmke_eval.engine.evaluator import CaseEvaluator
    from mmke_eval.protocol import Protocol

    evaluator = CaseEvaluator(adapter, editor, Protocol())
    prepared = []
    for probes in cases:
        request = evaluator.edit_request(probes[0].doc)
        prefix, edit = "", None
        if isinstance(editor, IKEEditor):
            handle = editor.apply(adapter, request)
            prefix = handle.prefix
            editor.restore(adapter, handle)
        if isinstance(editor, FTEditor):
            query = Query(request.prompt, request.image, request.target)
            image_inputs, counts = adapter._image_inputs([query]) if query.image is not None else ({}, [0])
            enc = adapter._encode(query, counts[0])
            ids = torch.tensor([enc.ids], dtype=torch.long, device=adapter.device)
            edit = {
                "params": adapter.parameter_group(editor.config.target), "steps": editor.config.steps,
                "lr": editor.config.lr, "weight_decay": editor.config.weight_decay,
                "inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids), **image_inputs},
                "start": enc.answer_start, "labels": ids[0, enc.answer_start :],
            }
        loc = [p.query for p in probes if families.kind_of(p.doc).is_locality]
        post = [replace(p.query, prefix=prefix) for p in probes]
        prepared.append({"pre": _inputs(adapter, loc) if loc else None, "edit": edit, "post": _inputs(adapter, post),
                         "prefix": prefix})
    return prepared
