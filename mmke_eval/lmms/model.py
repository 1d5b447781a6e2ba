"""The `edited` lmms-eval model: any registered backend, put in its post-edit state case by case.

    lmms-eval --model edited --model_args base=llava_hf,editor=ft_llm,pretrained=...,editor.steps=40

Model arguments: mmke_eval/config.py (``EditedConfig.from_model_args``, the one reader);
``mmke_eval.evaluate`` builds the same configuration from Python values.

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
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from lmms_eval.api.model import lmms

from mmke_eval import parallel, registry, run_context
from mmke_eval.adapters.base import Query
from mmke_eval.config import EditedConfig
from mmke_eval.engine.cases import PADDING_REASON, ProbeRequest, ProbeResponse, is_probe_doc
from mmke_eval.engine.evaluator import CaseEvaluator
from mmke_eval.engine.run_report import merge_protocols
from mmke_eval.journal import CaseJournal, model_identity
from mmke_eval.journal import digest as journal_digest
from mmke_eval.lmms import patches
from mmke_eval.protocol import check_device_map, check_gpu, check_pretrained
from mmke_eval.resources import package_version

logger = logging.getLogger("mmke_eval")


class RankFailed(SystemExit):
    """An error in one process of a multi-process lmms-eval run, as an exit (code 1) that lmms-eval's
    ``except Exception`` cannot swallow, so that the launcher stops every process and fails."""


@contextmanager
def _ending_the_process_on_error(rank: int, world_size: int, raise_errors: bool):
    try:
        yield
    except Exception as err:
        if world_size <= 1 or raise_errors:
            raise
        traceback.print_exc()
        message = f"mmke-eval: error in process {rank} of {world_size}: {type(err).__name__}: {err}"
        raise RankFailed(message) from err


class BackendError(RuntimeError):
    """A base backend failed on other tasks' requests; the message says which and why."""

    is_root_cause = True  # the CLI shows this message, not the exception it wraps


def _lock_journal_folder(config: EditedConfig) -> None:
    """Hold the journal's folder until the process ends (the mmke-eval CLI holds it already: then
    nothing happens). Under lmms-eval's CLI, which logs errors and exits 0, a refusal ends the process."""
    from mmke_eval import run_lock

    try:
        run_lock.acquire(config.journal_path.parent, wait=config.wait_for_lock)
    except run_lock.FolderLocked as err:
        if config.raise_errors:
            raise
        raise SystemExit(f"mmke-eval: error: {type(err).__name__}: {err}") from err


class EditedLMM(lmms):
    """lmms-eval model that edits its base model per edit case before answering.

    Built from an ``EditedConfig`` (``mmke_eval.evaluate``) or from lmms-eval's model_args. Its
    report (``describe``; ``gather_report`` in several processes) stays on the instance."""

    # (editor name, editor args) to resolve per benchmark family (``editor_for``); None: use ``editor``
    _editor_request: tuple[str, dict] | None = None

    def __init__(self, config: EditedConfig | None = None, **model_args: Any) -> None:
        super().__init__()
        if config is None:  # lmms-eval's CLI: one run per process; the tasks load after this model
            config = EditedConfig.from_model_args(model_args)
            run_context.activate_for_lmms_cli(config.context)
        elif model_args:
            raise TypeError(f"EditedLMM takes a config or model arguments, not both: {sorted(model_args)}")
        self.config = config
        rank, world_size = parallel.world()
        if config.journal and rank == 0:  # one run at a time per journal folder (mmke_eval/run_lock.py)
            _lock_journal_folder(config)
        with _ending_the_process_on_error(rank, world_size, config.raise_errors):
            self._build(config)

    def _build(self, config: EditedConfig) -> None:
        from lmms_eval.models import get_model

        from mmke_eval.backends.no_torchvision import image_only_processors

        self.protocol = config.protocol
        rank, world_size = parallel.world()
        refused = parallel.refusal(self.protocol, world_size)
        if refused:
            raise ValueError(refused)
        warning = parallel.accelerate_cpu_warning()
        if warning and not config.raise_errors:  # (the mmke-eval CLI has said it already)
            logger.warning("mmke-eval: %s", warning)
        # What the task loaders read (lmms-eval loads the tasks after building the model): in several
        # processes, user_number=N groups of N cases stay on one process; with --cases N, the
        # loader adds the G cases VLKEB edits after the N scored ones (sequential_gap=G).
        config.context.case_block = self.protocol.user_number
        config.context.edit_only_tail = self.protocol.sequential_gap if self.protocol.sequential else 0
        base, base_args = config.base, dict(config.base_args)
        adapter_cls = registry.adapter_class(base)  # fail on an unknown base before loading weights
        adapter_cls.check_backend(base)  # or on one that cannot be served (docs/models.md)
        if config.device is not None:
            base_args["device"] = config.device
        check_pretrained(base_args.get("pretrained"))
        backend_args = dict(base_args)  # base_args, unchanged, go into the run key (the same in every process)
        if world_size > 1:
            parallel.prepare_backend(backend_args)
        backend_cls = get_model(base, force_simple=True)
        check_gpu(backend_cls, backend_args)
        check_device_map(backend_cls, backend_args, several_processes=world_size > 1)
        with image_only_processors():  # Qwen2-VL / OneVision processors on a CPU torch without torchvision
            self.base = backend_cls(batch_size=config.batch_size, **backend_args)
            self.base.task_dict = self.task_dict  # the evaluator fills this dict in place
            # The launcher's numbers: a backend on device_map=cpu says rank 0 of 1 in every process.
            self._rank, self._world_size = (rank, world_size) if world_size > 1 else (self.base.rank, self.base.world_size)
            if hasattr(self.base, "accelerator"):
                self.accelerator = self.base.accelerator
            self.adapter = adapter_cls.from_lmms(self.base, **config.adapter_args)
        # The model family's editor, to fail on bad values and checkpoints before any case; each
        # task's cases are edited by the editor resolved for its benchmark family (``editor_for``).
        editor, editor_args = config.editor, dict(config.editor_args)
        self.editor = registry.build_editor(editor, family=self.adapter.family, overrides=editor_args)
        if hasattr(self.editor, "ensure_ready"):  # a learned editor: load and check its checkpoint now, not mid-run
            self.editor.ensure_ready(self.adapter)
        self._editor_request = (editor, editor_args)
        self.editors_by_benchmark: dict[str, Any] = {}
        self.defaults_by_benchmark: dict[str, dict] = {}  # where each value came from, per benchmark family
        self.base_name = base
        self.journal_path = config.journal
        self.run_key = journal_digest({
            "mmke_eval": package_version("mmke-eval"), "base": base, "base_args": {**base_args, "batch_size": config.batch_size},
            "model": model_identity(self.adapter.model), "adapter": self.adapter.describe(),
            "editor": {"name": editor, **self.editor.config.to_dict()}, "protocol": asdict(self.protocol),
        })
        case_journal = CaseJournal(self.journal_path, self.run_key) if self.journal_path else None
        message = case_journal.resume_message() if case_journal else None
        if message and (self._rank == 0 or case_journal.repaired):  # (the process that repaired it says so)
            print(f"mmke-eval: {message}", file=sys.stderr, flush=True)
        self.evaluator = CaseEvaluator(self.adapter, self.editor, self.protocol, journal=case_journal)
        # lmms-eval renders the tasks' prompts after building the model: doc_to_text reads this.
        config.context.prompt_path = self.evaluator.prompt_path
        self.padding_docs: dict[str, list[int]] = {}  # per task: ids of the filler documents answered (several processes)
        patches.install_run_time(EditedLMM)
        logger.info("mmke-eval protocol: %s", json.dumps(self.describe(), default=str))

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
                **({"unscored_cases": dict(self.evaluator.unscored_cases)} if self.protocol.lifelong else {}),
            },
            "editor_report": dict(self.evaluator.editor_reports),
            **({"lifelong": dict(self.evaluator.lifelong_rows)} if self.protocol.lifelong else {}),
            "resume": {"journal": self.journal_path, "run_key": self.run_key,
                       "resumed_cases": dict(self.evaluator.resumed_cases),
                       **({"repaired_lines": self.evaluator.journal.repaired,
                           "unreadable_lines": self.evaluator.journal.unreadable} if self.evaluator.journal else {})},
            "token_accuracy": "teacher-forced argmax over the answer tokens; input = prompt + ' ' + answer",
            **parallel_run,
        }

    # -- lmms-eval API -------------------------------------------------------------------------
    def generate_until(self, requests) -> list:
        with _ending_the_process_on_error(self.rank, self.world_size, self.config.raise_errors):
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
        return ProbeResponse(probe=doc["probe"], editor=self.editor.name, score=None, unscored=PADDING_REASON).to_json()

    def loglikelihood(self, requests) -> list:
        return self.base.loglikelihood(requests)

    def generate_until_multi_round(self, requests) -> list:
        return self.base.generate_until_multi_round(requests)

    def gather_report(self) -> dict[str, Any] | None:
        """``describe()`` of the whole run. In several processes every process must call this after
        the run: process 0 gets every process's cases merged in (the editor's report summarises all
        edits, resumed cases add up, ``data_parallel`` lists the cases each process edited); the
        others get None."""
        import torch.distributed as dist

        rank, world_size = parallel.world()
        if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
            return self.describe()
        mine = {"protocol": json.loads(json.dumps(self.describe(), default=str)),
                "stats": json.loads(json.dumps(self.evaluator.case_stats, default=str))}
        gathered: list | None = [None] * world_size if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if rank != 0:
            return None
        return merge_protocols([g["protocol"] for g in gathered], [g["stats"] for g in gathered], self.evaluator.editor)
