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

In several processes (torchrun, ``accelerate launch``) every process gets whole edit cases (the
task's ``process_docs`` orders the documents for lmms-eval's sharding, mmke_eval/parallel.py) and
checks that it did; each case is edited on exactly one process, and the numbers equal one
process's. Sequential editing is refused there.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections import OrderedDict, deque
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from typing import Any

from lmms_eval.api.model import lmms
from tqdm import tqdm

from mmke_eval import families, metrics, parallel, prompts, registry
from mmke_eval.adapters.base import ForwardResult, Query
from mmke_eval.data.augment import augment
from mmke_eval.data.images import load_optional_image
from mmke_eval.data.schema import RESPONSE_MARKER, DataError, ProbeDoc
from mmke_eval.journal import CaseJournal, file_digest, model_identity
from mmke_eval.journal import digest as journal_digest
from mmke_eval.protocol import Protocol, check_device_map, check_gpu, check_pretrained, protocol_from_options
from mmke_eval.resources import package_version
from editors.base import EditRequest

logger = logging.getLogger("mmke_eval")

_PROBE_FIELDS = frozenset(ProbeDoc.__dataclass_fields__) - {parallel.PADDING_FIELD}  # documents made before it existed too

# The protocol of the last EditedLMM built in this process, for the mmke-eval CLI to write
# into the results file (lmms-eval keeps only model_args).
LAST_PROTOCOL: dict[str, Any] = {}
# ... and its case evaluator, for merging the reports of several processes (``gather_protocol``).
_last_evaluator: "CaseEvaluator | None" = None

# Set by mmke-eval's runner, which reports errors itself and exits non-zero. Under lmms-eval's own
# CLI an error in a multi-process run ends the process through ``RankFailed`` instead: lmms-eval
# would log it and exit 0, and the other processes would wait for this one.
RAISE_ERRORS = False


class RankFailed(SystemExit):
    """An error in one process of a multi-process lmms-eval run, as an exit (code 1) that lmms-eval's
    ``except Exception`` cannot swallow, so that the launcher stops every process and fails."""


@contextmanager
def _ending_the_process_on_error(rank: int, world_size: int):
    try:
        yield
    except Exception as err:
        if world_size <= 1 or RAISE_ERRORS:
            raise
        traceback.print_exc()
        message = f"mmke-eval: error in process {rank} of {world_size}: {type(err).__name__}: {err}"
        raise RankFailed(message) from err


class BackendError(RuntimeError):
    """A base backend failed on other tasks' requests; the message says which and why."""

    is_root_cause = True  # the CLI shows this message, not the exception it wraps


def _bypass_response_cache() -> None:
    """Turn lmms-eval's --use_cache off for the ``edited`` model.

    Its key hashes only the prompt text, not the case's answers, images or edit, so it would serve
    scores computed for other inputs; finished cases are kept by the journal instead.
    """
    from lmms_eval.caching.response_cache import ResponseCache

    if getattr(ResponseCache.execute, "_mmke_bypass", False):
        return
    original = ResponseCache.execute

    def execute(self, lm, reqtype, requests, *args, **kwargs):
        if isinstance(lm, EditedLMM):
            if not execute.warned:
                logger.warning("lmms-eval's --use_cache is off for the edited model (its key lacks the case content); "
                               "finished cases are resumed from the journal (journal=PATH) instead")
                execute.warned = True
            return getattr(lm, reqtype)(requests)
        return original(self, lm, reqtype, requests, *args, **kwargs)

    execute._mmke_bypass = True
    execute.warned = False
    ResponseCache.execute = execute


def _order_independent_standard_errors() -> None:
    """Make lmms-eval's per-probe CLT standard errors independent of the order of the scores.

    It takes ``np.std`` of a task's per-document items in the order it collected them, which in
    several processes is rank by rank: the last digit then depends on the number of processes.
    Items shaped like ours (``{"case", "score"}``) are put in one canonical order first, so every
    number in the results equals the one-process number. Other tasks' items are left alone."""
    from lmms_eval.evaluator_utils import TaskOutput

    if getattr(TaskOutput.calculate_clt_aggregate_metric, "_mmke_canonical", False):
        return
    original = TaskOutput.calculate_clt_aggregate_metric

    def calculate_clt_aggregate_metric(self):
        for key, items in list(self.sample_metrics.items()):
            if items and all(isinstance(x, dict) and "case" in x and "score" in x for x in items):
                self.sample_metrics[key] = sorted(items, key=lambda x: (str(x["case"]), repr(x["score"])))
        return original(self)

    calculate_clt_aggregate_metric._mmke_canonical = True
    TaskOutput.calculate_clt_aggregate_metric = calculate_clt_aggregate_metric


def _lock_journal_folder(journal: str, wait: Any) -> None:
    """Hold the journal's folder until the process ends (the mmke-eval CLI holds it already: then
    nothing happens). Under lmms-eval's CLI, which logs errors and exits 0, a refusal ends the process."""
    from pathlib import Path

    from mmke_eval import run_lock
    from mmke_eval.options import parse_bool

    try:
        run_lock.acquire(Path(journal).expanduser().parent, wait=parse_bool("wait_for_lock", wait))
    except run_lock.FolderLocked as err:
        if RAISE_ERRORS:
            raise
        raise SystemExit(f"mmke-eval: error: {type(err).__name__}: {err}") from err


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

    # (editor name, editor args) to resolve per benchmark family (``editor_for``); None: use ``editor``
    _editor_request: tuple[str, dict] | None = None

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
        port_image: str = "auto",
        edit_images: int = 1,
        edit_augment: str = "none",
        augment_seed: int = 0,
        user_number: int = 1,
        prompt_path: str = "auto",
        average: str = "case",
        followup_image: str = "auto",
        entity_acc: str = "tokens",
        journal: str | None = None,
        wait_for_lock: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        rank, world_size = parallel.world()
        if journal and rank == 0:  # one run at a time per journal folder (mmke_eval/run_lock.py)
            _lock_journal_folder(journal, wait_for_lock)
        with _ending_the_process_on_error(rank, world_size):
            self._build(base, editor, batch_size, device, journal, kwargs, dict(
                t_loc_k=t_loc_k, i_loc_k=i_loc_k, loc_span=loc_span, generate=generate, sequential=sequential,
                sequential_gap=sequential_gap, port_image=port_image, edit_images=edit_images, edit_augment=edit_augment,
                augment_seed=augment_seed, user_number=user_number, prompt_path=prompt_path, average=average,
                followup_image=followup_image, entity_acc=entity_acc))

    def _build(self, base, editor, batch_size, device, journal, kwargs, options) -> None:
        global _last_evaluator
        from lmms_eval.models import get_model

        from mmke_eval.data import source

        editor_args, adapter_args, base_args = _split_args(kwargs)
        self.protocol = protocol_from_options(base_args, **options)
        rank, world_size = parallel.world()
        if world_size > 1 and self.protocol.sequential:
            raise ValueError(parallel.SEQUENTIAL_REFUSED.format(world=world_size))
        warning = parallel.accelerate_cpu_warning()
        if warning and not RAISE_ERRORS:  # (the mmke-eval CLI has said it already)
            logger.warning("mmke-eval: %s", warning)
        # In several processes, user_number=N groups of N cases must each stay on one process.
        parallel.set_case_block(self.protocol.user_number)
        # Tasks are loaded after the model: with --cases N, the loader adds the G cases VLKEB
        # edits after the N scored ones (sequential_gap=G).
        source.set_edit_only_tail(self.protocol.sequential_gap if self.protocol.sequential else 0)
        adapter_cls = registry.adapter_class(base)  # fail on an unknown base before loading weights
        adapter_cls.check_backend(base)  # or on one that cannot be served (docs/models.md)
        if device is not None:
            base_args["device"] = device
        check_pretrained(base_args.get("pretrained"))
        backend_args = dict(base_args)  # base_args, unchanged, go into the run key (the same in every process)
        if world_size > 1:
            parallel.prepare_backend(backend_args)
        backend_cls = get_model(base, force_simple=True)
        check_gpu(backend_cls, backend_args)
        check_device_map(backend_cls, backend_args, several_processes=world_size > 1)
        self.base = backend_cls(batch_size=batch_size, **backend_args)
        self.base.task_dict = self.task_dict  # the evaluator fills this dict in place
        # The launcher's numbers: a backend on device_map=cpu says rank 0 of 1 in every process.
        self._rank, self._world_size = (rank, world_size) if world_size > 1 else (self.base.rank, self.base.world_size)
        if hasattr(self.base, "accelerator"):
            self.accelerator = self.base.accelerator
        self.adapter = adapter_cls.from_lmms(self.base, **adapter_args)
        # The model family's editor, to fail on bad values and checkpoints before any case; each
        # task's cases are edited by the editor resolved for its benchmark family (``editor_for``).
        self.editor = registry.build_editor(editor, family=self.adapter.family, overrides=editor_args)
        if hasattr(self.editor, "ensure_ready"):  # a learned editor: load and check its checkpoint now, not mid-run
            self.editor.ensure_ready(self.adapter)
        self._editor_request = (editor, dict(editor_args))
        self.editors_by_benchmark: dict[str, Any] = {}
        self.defaults_by_benchmark: dict[str, dict] = {}  # where each value came from, per benchmark family
        self.base_name = base
        self.journal_path = str(journal) if journal else None
        self.run_key = journal_digest({
            "mmke_eval": package_version("mmke-eval"), "base": base, "base_args": {**base_args, "batch_size": batch_size},
            "model": model_identity(self.adapter.model), "adapter": self.adapter.describe(),
            "editor": {"name": editor, **self.editor.config.to_dict()}, "protocol": asdict(self.protocol),
        })
        case_journal = CaseJournal(self.journal_path, self.run_key) if self.journal_path else None
        message = case_journal.resume_message() if case_journal else None
        if message and (self._rank == 0 or case_journal.repaired):  # (the process that repaired it says so)
            print(f"mmke-eval: {message}", file=sys.stderr, flush=True)
        self.evaluator = CaseEvaluator(self.adapter, self.editor, self.protocol, journal=case_journal)
        # lmms-eval renders the tasks' prompts after building the model: doc_to_text reads this.
        prompts.set_active_path(self.evaluator.prompt_path)
        self.padding_docs: dict[str, list[int]] = {}  # per task: ids of the filler documents answered (several processes)
        _last_evaluator = self.evaluator
        _bypass_response_cache()
        _order_independent_standard_errors()
        LAST_PROTOCOL.clear()
        LAST_PROTOCOL.update(self.describe())
        logger.info("mmke-eval protocol: %s", json.dumps(LAST_PROTOCOL))

    @property
    def device(self):
        """Where the evaluator puts the tensors of its collectives (several processes): the base's device."""
        device = getattr(self.base, "device", None)
        if device is None and getattr(self, "accelerator", None) is not None:
            device = self.accelerator.device
        return device if device is not None else "cpu"

    # -- what the results record -------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        parallel_run = {"data_parallel": {
            "rank": self.rank,
            "edited_cases": {label: list(ids) for label, ids in self.evaluator.edited_cases.items()},
            "resumed_cases": dict(self.evaluator.resumed_cases),
            "padding_doc_ids": {task: list(ids) for task, ids in self.padding_docs.items()},
        }} if self.world_size > 1 else {}
        by_benchmark = {name: {**e.describe(), "defaults_source": self.defaults_by_benchmark[name]}
                        for name, e in getattr(self, "editors_by_benchmark", {}).items()}
        return {
            "base": self.base_name,
            # One benchmark family (the usual run): the editor as resolved for it. Several (e.g.
            # --tasks mmke_entity,vlkeb): each task used its own family's editor (editor_by_benchmark).
            "editor": next(iter(by_benchmark.values())) if len(by_benchmark) == 1 else self.editor.describe(),
            **({"editor_by_benchmark": by_benchmark} if by_benchmark else {}),
            "adapter": self.adapter.describe(),
            "protocol": {
                **asdict(self.protocol),
                "loc_span_resolved": self.evaluator.locality_span,
                "prompt_path_resolved": self.evaluator.prompt_path,
                "followup_image_resolved": self.evaluator.followup_image,
                "edit_images_rule": self.editor.multi_image_rule() if self.protocol.edit_images > 1 else "one edit image",
                "port_image_resolved": {"default": self.evaluator.port_image_for(""),
                                        **{kt: self.evaluator.port_image_for(kt) for kt in self.editor.reference_port_images}},
                **({"unscored_cases": dict(self.evaluator.unscored_cases),
                    "edit_only_cases": dict(self.evaluator.edit_only_cases)} if self.protocol.sequential_gap else {}),
            },
            "editor_report": dict(self.evaluator.editor_reports),
            "resume": {"journal": self.journal_path, "run_key": self.run_key,
                       "resumed_cases": dict(self.evaluator.resumed_cases),
                       **({"repaired_lines": self.evaluator.journal.repaired,
                           "unreadable_lines": self.evaluator.journal.unreadable} if self.evaluator.journal else {})},
            "token_accuracy": "teacher-forced argmax over the answer tokens; input = prompt + ' ' + answer",
            **parallel_run,
        }

    # -- lmms-eval API -------------------------------------------------------------------------
    def generate_until(self, requests) -> list:
        with _ending_the_process_on_error(self.rank, self.world_size):
            return self._generate_until(requests)

    def _generate_until(self, requests) -> list:
        results: list[Any] = [None] * len(requests)
        cases: OrderedDict[tuple[str, str], list[ProbeRequest]] = OrderedDict()
        plain: list[int] = []
        for index, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            if request.metadata and request.metadata.get("__padding_only__"):
                results[index] = ""  # lmms-eval's filler request (several processes): thrown away, never edited
                continue
            doc = self.task_dict[task][split][doc_id]
            if parallel.is_padding(doc):  # our filler document: unscored, never edited
                results[index] = self._padding_response(doc)
                self.padding_docs.setdefault(task, []).append(doc_id)
                continue
            if not is_probe_doc(doc):
                plain.append(index)
                continue
            visuals = doc_to_visual(doc)
            query = Query(prompt=context, image=visuals[0] if visuals else None, target=doc["answer"])
            cases.setdefault((task, doc["case_id"]), []).append(ProbeRequest(index, doc, query, dict(gen_kwargs)))
        self._check_whole_cases(cases, requests)
        if plain:
            for index, output in zip(plain, self._base_generate([requests[i] for i in plain])):
                results[index] = output
        # One task at a time: sequential edits pile up within a benchmark split, as in the
        # reference (one run per data type), never across the tasks of a group.
        by_task: OrderedDict[str, list[list[ProbeRequest]]] = OrderedDict()
        for (task, _), probes in cases.items():
            by_task.setdefault(task, []).append(probes)
        for task, task_cases in by_task.items():
            self.evaluator.editor = self.editor_for(task_cases[0][0].doc["family"])
            self.evaluator.answer_cases(task_cases, results, progress=self.rank == 0, label=task)
        if cases:
            LAST_PROTOCOL.update(self.describe())  # editors report what they really used (IKE's retriever)
        return results

    def editor_for(self, benchmark: str):
        """The editor with its defaults resolved for this benchmark family and the model's family
        (registry.yaml: benchmarks.<benchmark>.editors over the model family's values over the
        editor's defaults; --editor_args over all). Tasks of several families in one run each get
        their own family's values; the results list them per family (``editor_by_benchmark``)."""
        if self._editor_request is None:
            return self.editor  # an editor handed in already built (scripts, tests): its values as they are
        if benchmark not in self.editors_by_benchmark:
            name, editor_args = self._editor_request
            editor = registry.build_editor(name, family=self.adapter.family, overrides=editor_args, benchmark=benchmark)
            self.defaults_by_benchmark[benchmark] = editor.defaults_source
            if editor.config.to_dict() == self.editor.config.to_dict():
                editor = self.editor  # the same values: keep the editor already loaded (its checkpoint, IKE's pools)
            elif hasattr(editor, "ensure_ready"):
                editor.ensure_ready(self.adapter)
            self.editors_by_benchmark[benchmark] = editor
        return self.editors_by_benchmark[benchmark]

    def _base_generate(self, requests) -> list:
        """The base backend's answers to other tasks' requests. lmms-eval backends log a failed
        request and answer "" (scored 0, exit code 0): any error they log here is raised instead."""
        from loguru import logger as eval_logger

        errors: list[str] = []
        tasks = sorted({r.args[4] for r in requests})
        sink = eval_logger.add(lambda message: errors.append(message.record["message"]), level="ERROR")
        try:
            outputs = self.base.generate_until(requests)
        except Exception as err:
            raise BackendError(f"the {self.base_name} backend failed on the requests of {', '.join(tasks)}: "
                               f"{type(err).__name__}: {err}") from err
        finally:
            eval_logger.remove(sink)
        if errors:
            raise BackendError(
                f"the {self.base_name} backend failed on {len(errors)} of {len(requests)} request(s) of "
                f"{', '.join(tasks)}; first error: {errors[0]}"
            )
        return outputs

    def _check_whole_cases(self, cases, requests) -> None:
        """Every probe of a case must be asked: --limit counts documents and would split a case."""
        from collections import Counter

        counts: dict[tuple[str, str], Counter] = {}
        for (task, case_id), probes in cases.items():
            split = requests[probes[0].index].args[5]
            if (task, split) not in counts:
                docs = self.task_dict[task][split]
                counts[(task, split)] = Counter(docs["case_id"] if hasattr(docs, "column_names") else [d["case_id"] for d in docs])
            expected = counts[(task, split)][case_id]
            if len(probes) != expected and self.world_size > 1:
                raise ValueError(
                    f"{task}: only {len(probes)} of the {expected} probes of case {case_id} reached process {self.rank} "
                    f"of {self.world_size}; the others went to another process, so the case would be edited twice. "
                    "The task's documents must be ordered by case for several processes: its process_docs must be "
                    "mmke_tasks.hooks.process_docs (or call mmke_eval.parallel.order_for_ranks), and --limit must not be used"
                )
            if len(probes) != expected:
                raise ValueError(
                    f"{task}: only {len(probes)} of the {expected} probes of case {case_id} were requested "
                    "(--limit counts probe documents and splits edit cases); use mmke-eval --cases N or MMKE_MAX_CASES=N"
                )

    def _padding_response(self, doc: dict) -> str:
        return json.dumps({RESPONSE_MARKER: 1, "probe": doc["probe"], "editor": self.editor.name, "generated": "",
                           "edit": {}, "score": None, "unscored": "padding: a filler document of a multi-process run"})

    def loglikelihood(self, requests) -> list:
        return self.base.loglikelihood(requests)

    def generate_until_multi_round(self, requests) -> list:
        return self.base.generate_until_multi_round(requests)


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
        self._label = ""

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

    def answer_cases(self, cases: list[list[ProbeRequest]], results: list, progress: bool = True, label: str = "") -> None:
        """Fill ``results[probe.index]`` with the JSON response of every probe of every case.

        With ``protocol.sequential`` the edits of all ``cases`` pile up, in order.
        """
        desc = f"{self.editor.name} edits" + (f" ({label})" if label else "")
        stats: list[dict] = []
        self._label = label
        self.case_stats[label] = stats
        if not self.protocol.sequential:
            # Independent edits, or with user_number=N groups of N cases: every edit of a group is
            # applied, then each of its cases is scored, then all are undone (MMKE-Bench's user number).
            n = self.protocol.user_number
            resumed = 0
            for group in (bar := tqdm([cases[i : i + n] for i in range(0, len(cases), n)], desc=desc, disable=not progress)):
                if any(_edit_only(probes) for probes in group):
                    raise ValueError(f"case {group[0][0].doc['case_id']} is marked edit-only, which needs sequential=true")
                keys = self._group_keys(group)
                if self._answer_from_journal(keys, group, results, stats):
                    resumed += len(group)
                    bar.set_postfix(resumed=resumed)
                    continue
                self._answer_group(group, results, stats)
                for key, probes in zip(keys, group):
                    self._write_journal(key, probes, results)
            self.resumed_cases[label] = self.resumed_cases.get(label, 0) + resumed
            self.editor_reports[label] = self.editor.summarize(stats)
            return
        # A sequential case's result depends on every edit before it (and, with a gap, after it):
        # the keys cover the whole task, so only a whole identical task is reused.
        keys = self._whole_keys(cases, {"sequential_task_cases": len(cases)})
        if self._answer_from_journal(keys, cases, results, stats):
            self.resumed_cases[label] = self.resumed_cases.get(label, 0) + len(cases)
            self.editor_reports[label] = self.editor.summarize(stats)
            return
        # Sequential editing: every pre-edit output comes from the unedited model; edits pile up
        # and each case is scored ``gap`` edits after its own; all edits are undone at the end.
        # Edit-only cases (VLKEB: the ``gap`` cases after the N scored ones) are edited, never scored.
        pres = [{} if _edit_only(probes) else self._pre_edit(probes) for probes in tqdm(cases, desc="pre-edit", disable=not progress)]
        gap = self.protocol.sequential_gap
        scored = sum(not _edit_only(probes) for probes in cases)
        if gap and len(cases) <= gap:
            logger.warning("sequential_gap=%d with %d cases%s: no case is scored", gap, len(cases), f" in {label}" if label else "")
        handles, waiting = [], deque()
        try:
            for probes, pre in tqdm(list(zip(cases, pres)), desc=desc, disable=not progress):
                waiting.append((probes, pre, *self._apply_case(probes, handles, stats)))
                if len(waiting) > gap:
                    self._score_when_due(*waiting.popleft(), results)
            tail = 0
            for probes, _, handle, _ in waiting:  # fewer than ``gap`` edits came after them
                if _edit_only(probes):
                    self._unscored(probes, handle, results, EDIT_ONLY_REASON)
                else:
                    self._unscored(probes, handle, results, "sequential_gap: too few edits after it")
                    tail += 1
            self.unscored_cases[label] = self.unscored_cases.get(label, 0) + tail
            self.edit_only_cases[label] = self.edit_only_cases.get(label, 0) + len(cases) - scored
        finally:
            for handle in reversed(handles):
                self.editor.restore(self.adapter, handle)
        for key, probes in zip(keys, cases):  # only a whole task: a part of one cannot be resumed
            self._write_journal(key, probes, results)
        self.editor_reports[label] = self.editor.summarize(stats)

    def _answer_group(self, group: list[list[ProbeRequest]], results: list, stats: list) -> None:
        """Pre-edit outputs of every case, all of the group's edits, each case scored, all undone."""
        pres = [self._pre_edit(probes) for probes in group]
        handles: list = []
        try:
            firsts = [self._apply_case(probes, handles, stats) for probes in group]
            if len(group) > 1 and any(handle.prefix for handle in handles):
                raise ValueError(f"editor {self.editor.name!r} edits in context (a prompt prefix per edit) and cannot hold "
                                 "several cases' edits at once (user_number > 1)")
            for probes, pre, (handle, request) in zip(group, pres, firsts):
                self._post_edit(probes, pre, handle, request, results)
        finally:
            for handle in reversed(handles):
                self.editor.restore(self.adapter, handle)

    def _apply_case(self, probes: list[ProbeRequest], handles: list, stats: list) -> tuple:
        """Apply a case's edits (appending their handles to ``handles``); its first edit's (handle, request)."""
        requests = self.edit_requests(probes[0].doc)
        self.edited_cases.setdefault(self._label, []).append(probes[0].doc["case_id"])
        case_handles = self._apply_all(requests, handles)
        stats.append(dict(case_handles[0].stats))
        return case_handles[0], requests[0]

    def _group_keys(self, group: list[list[ProbeRequest]]) -> list[str]:
        """Journal keys: a case's own key, or with user_number > 1 keys covering its whole group
        (a case's result depends on every edit of the group)."""
        if self.protocol.user_number == 1:
            return [self._case_key(probes) for probes in group]
        return self._whole_keys(group, {"user_number": self.protocol.user_number, "group_cases": len(group)})

    def _whole_keys(self, cases: list[list[ProbeRequest]], seed: dict) -> list[str]:
        """One key per case, each covering ``seed`` and every case of ``cases`` (reused only all together)."""
        chained = journal_digest(seed)
        for probes in cases:
            chained = journal_digest([chained, self._case_key(probes)])
        return [f"{chained}/{i}" for i in range(len(cases))]

    # -- the journal (resume) ----------------------------------------------------------------
    @staticmethod
    def _case_key(probes: list[ProbeRequest]) -> str:
        """Everything about a case that its answers depend on: documents, prompts, settings, image bytes."""
        doc = probes[0].doc
        images = {path for path in (doc["edit_image"], doc["rephrase_image"], *(doc.get("edit_extra_images") or "").split("\n")) if path}
        images |= {p.doc["image"] for p in probes if p.doc["image"]}
        return journal_digest({
            "probes": [[_without_padding_field(p.doc), p.query.prompt, p.query.prefix, p.query.target, p.gen_kwargs] for p in probes],
            "images": {path: file_digest(path) for path in sorted(images)},
        })

    def _answer_from_journal(self, keys: list[str], cases: list[list[ProbeRequest]], results: list, stats: list) -> bool:
        """Answer ``cases`` from the journal if it holds every one of them under ``keys``; else nothing."""
        if self.journal is None:
            return False
        entries = [self.journal.get(key) for key in keys]
        if any(entry is None or any(p.doc["probe_id"] not in entry for p in probes) for entry, probes in zip(entries, cases)):
            return False
        for entry, probes in zip(entries, cases):
            for probe in probes:
                results[probe.index] = entry[probe.doc["probe_id"]]
            stats.append(json.loads(entry[probes[0].doc["probe_id"]]).get("edit") or {})
        return True

    def _write_journal(self, key: str, probes, results: list) -> None:
        if self.journal is not None:
            self.journal.add(key, {p.doc["probe_id"]: results[p.index] for p in probes})

    def _score_when_due(self, probes, pre, handle, request, results: list) -> None:
        if _edit_only(probes):
            self._unscored(probes, handle, results, EDIT_ONLY_REASON)
        else:
            self._post_edit(probes, pre, handle, request, results)

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
            replace(main, case_id=f"{main.case_id}#edit{n}", prompt=prompt, target=target, original="",
                    rephrase_prompt="", rephrase_image=None, **image)
            for n, (prompt, target) in enumerate(followups, 2)
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

    def _pre_edit(self, probes: list[ProbeRequest]) -> dict[int, tuple[ForwardResult, str | None]]:
        """Teacher-forced top-k (and generations) of the unedited model on the locality probes."""
        local = [p for p in probes if _kind(p).is_locality]
        if not local:
            return {}
        return {p.index: out for p, out in zip(local, self._forwards(local, [p.query for p in local]))}

    def _post_edit(self, probes, pre, handle, request: EditRequest, results: list) -> None:
        # Locality probes go through exactly the batches of the pre-edit pass (the same queries in
        # the same order, apart from an editor's prefix), the other probes through their own:
        # padding and batch shapes change half-precision rounding, which can flip near-tied top-k
        # orders, so an unchanged model must see bit-identical inputs before and after.
        local = [p for p in probes if _kind(p).is_locality]
        others = [p for p in probes if not _kind(p).is_locality]
        outputs: dict[int, tuple[ForwardResult, str | None]] = {}
        # An in-context edit's prefix is computed once per image for all of the case's probes
        # (the model does not change until the edit is undone).
        with self.adapter.reusing_prefixes() if handle.prefix and handle.responder is None else nullcontext():
            for group in (local, others):
                if group:
                    queries = [self._post_edit_query(p, handle, request) for p in group]
                    outputs.update((p.index, out) for p, out in zip(group, self._forwards(group, queries, handle)))
        for probe in probes:
            kind = _kind(probe)
            forward, generated = outputs[probe.index]
            response = self._response(probe, handle, generated)
            if kind.is_locality:
                pre_forward, pre_generated = pre[probe.index]
                response["score"] = self._locality(kind, pre_forward, forward)
                hits, total = self._locality(kind, pre_forward, forward, counts=True)
                response["pre_generated"] = pre_generated
            else:
                response["score"] = forward.token_acc
                hits, total = metrics.token_counts(forward.predicted_ids, forward.answer_ids)
                if kind.entity_metric and probe.doc.get("entity"):
                    self._entity_accuracy(probe, self._post_edit_query(probe, handle, request), forward, generated, response)
            if self.protocol.average == "token":  # the task's column becomes hits / total over all its probes
                response["average"], response["counts"] = "token", [hits, total]
            if kind.portability:
                response["port_image"] = self.port_image_for(probe.doc["knowledge_type"])
            results[probe.index] = json.dumps(response, default=str)

    def _entity_accuracy(self, probe: ProbeRequest, query: Query, forward: ForwardResult, generated: str | None,
                         response: dict) -> None:
        """MIKE's A (eq. 6) of one probe into ``response["entity_acc"]``, by ``protocol.entity_acc``.

        tokens (the paper's reading): (teacher-forced token accuracy of the answer + 1 if every token
        of the entity name inside the answer is predicted right) / 2; the name's tokens are those
        of the answer that hold its first occurrence (the whole answer when it is the name).
        generation: (exact match of the greedy generation + 1 if it contains the name) / 2."""
        doc = probe.doc
        answer, entity = doc["answer"], doc["entity"]
        if self.protocol.entity_acc == "generation":
            response["entity_acc"] = metrics.entity_accuracy(generated or "", answer, entity)
            return
        if forward.token_acc != forward.token_acc:  # no answer token: left out, as the score is
            response["entity_acc"] = float("nan")
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
        response["entity_match"] = entity_match
        response["entity_acc"] = metrics.entity_accuracy_tokens(forward.token_acc, entity_match)

    def _post_edit_query(self, probe: ProbeRequest, handle, request: EditRequest) -> Query:
        query = replace(probe.query, prefix=handle.prefix)
        if handle.prefix and _kind(probe).is_locality and self.locality_span == "sequence":
            # EasyEdit's whole-sequence rule for an in-context edit: the prefix is part of the
            # compared input (same text, same tokens), so right-aligned against the pre-edit input
            # its BOS and image positions meet demonstration text (docs/protocol.md, "Locality span").
            query = replace(probe.query, prompt=handle.prefix + probe.query.prompt, prefix="")
        if _kind(probe).portability and self.port_image_for(probe.doc["knowledge_type"]) == "edit":
            query = replace(query, image=request.image)
        return query

    def _unscored(self, probes, handle, results: list, reason: str) -> None:
        for probe in probes:
            response = {**self._response(probe, handle, None), "score": None, "unscored": reason}
            results[probe.index] = json.dumps(response, default=str)

    def _response(self, probe: ProbeRequest, handle, generated: str | None) -> dict[str, Any]:
        """The fields every probe response carries; the score is added by the caller."""
        return {RESPONSE_MARKER: 1, "probe": probe.doc["probe"], "editor": self.editor.name,
                "generated": generated or "", "edit": handle.stats}

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


EDIT_ONLY_REASON = "edit-only: edited after the scored cases (--cases N with sequential_gap G), as VLKEB does"


def _without_padding_field(doc: dict) -> dict:
    """A document as before the field existed: journal keys stay valid, and equal in any number of processes."""
    return {key: value for key, value in doc.items() if key != parallel.PADDING_FIELD}


def gather_protocol() -> dict[str, Any] | None:
    """``LAST_PROTOCOL`` of the whole run. In several processes every process must call this after
    the run: process 0 gets every process's cases merged in (the editor's report summarises all
    edits, resumed cases add up, ``data_parallel`` lists the cases each process edited); the
    others get None."""
    import torch.distributed as dist

    rank, world_size = parallel.world()
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return dict(LAST_PROTOCOL)
    evaluator = _last_evaluator
    mine = {"protocol": json.loads(json.dumps(LAST_PROTOCOL, default=str)),
            "stats": json.loads(json.dumps(evaluator.case_stats if evaluator else {}, default=str))}
    gathered: list | None = [None] * world_size if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if rank != 0:
        return None
    return merge_protocols([g["protocol"] for g in gathered], [g["stats"] for g in gathered],
                           evaluator.editor if evaluator else None)


def merge_protocols(protocols: list[dict], stats: list[dict[str, list]], editor=None) -> dict[str, Any]:
    """One process's protocol record (the first that edited or resumed a case, else process 0's)
    with every process's cases added up."""

    def worked(protocol: dict) -> bool:
        parallel_run = protocol.get("data_parallel") or {}
        return any(parallel_run.get("edited_cases", {}).values()) or any(parallel_run.get("resumed_cases", {}).values())

    merged = json.loads(json.dumps(next((p for p in protocols if worked(p)), protocols[0])))
    labels = list(dict.fromkeys(label for per_rank in stats for label in per_rank))
    if editor is not None:
        merged["editor_report"] = {label: editor.summarize([s for per_rank in stats for s in per_rank.get(label, [])])
                                   for label in labels}
    resumed: dict[str, int] = {}
    for protocol in protocols:
        for label, n in ((protocol.get("resume") or {}).get("resumed_cases") or {}).items():
            resumed[label] = resumed.get(label, 0) + n
    merged.setdefault("resume", {})["resumed_cases"] = resumed
    if any("repaired_lines" in (protocol.get("resume") or {}) for protocol in protocols):  # whichever process opened it first repaired it
        merged["resume"]["repaired_lines"] = sum((protocol.get("resume") or {}).get("repaired_lines", 0) for protocol in protocols)
    for key in ("unscored_cases", "edit_only_cases"):
        if key in merged.get("protocol", {}):
            total: dict[str, int] = {}
            for protocol in protocols:
                for label, n in (protocol.get("protocol", {}).get(key) or {}).items():
                    total[label] = total.get(label, 0) + n
            merged["protocol"][key] = total
    ranks = [dict(p.get("data_parallel") or {}) for p in protocols]
    padding: dict[str, list[int]] = {}
    for entry in ranks:
        entry["cases"] = {label: len(ids) for label, ids in entry.get("edited_cases", {}).items()}
        for task, ids in entry.pop("padding_doc_ids", {}).items():
            padding.setdefault(task, []).extend(ids)
    merged["data_parallel"] = {"world_size": len(protocols), "ranks": ranks,
                               "padding_docs": {task: len(ids) for task, ids in padding.items()},
                               "_padding_doc_ids": padding}  # for the runner, which drops them from the samples
    return merged


def _kind(probe: ProbeRequest) -> families.ProbeKind:
    """The declaration of a probe's kind, from its benchmark family (registry.yaml)."""
    return families.kind_of(probe.doc)


def _edit_only(probes: list[ProbeRequest]) -> bool:
    return bool(probes[0].doc.get("edit_only"))
