"""What a learned editor trains on: the train-split cases of the named tasks, and each case as a
training example (its in-scope inputs with the new answer, and its locality probes)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from editors.base import EditRequest
from editors.learned import TrainingExample
from mmke_eval import families
from mmke_eval.adapters.base import Query
from mmke_eval.data.images import load_optional_image
from mmke_eval.data.schema import EditCase, ProbeDoc
from mmke_eval.journal import digest, file_digest
from mmke_eval.lmms.taskfiles import config_cards, named_tasks, prompt_template, task_config
from mmke_eval.training.errors import TrainingError


def task_sources(task_names: str, extra_dirs: list[str] = ()) -> list[tuple[str, dict, str]]:
    """(task, source card, prompt template) of every named task or group member."""
    found_tasks, unknown = named_tasks(task_names, extra_dirs)
    if unknown:
        raise TrainingError(f"--tasks: unknown task {unknown[0]!r} (see `mmke-eval list`)")
    found = []
    for name, path in found_tasks:
        config = task_config(path)
        found += [(name, card, prompt_template(config)) for card in config_cards(config, path.parent)]
    if not found:
        raise TrainingError(f"--tasks {task_names}: no task with a source card")
    return found


def training_cases(sources: list[tuple[str, dict, str]], data_root: Path | None = None) -> tuple[list[tuple[EditCase, str]], dict[str, Any]]:
    """The train-split cases of the tasks (each with its prompt template) and a record of the data;
    ``data_root`` (--data): the data root of every task, over the source cards' variables."""
    from mmke_eval.data import source

    cases, files, seen = [], {}, set()
    for task, card, template in sources:
        family = families.of_card(card)
        train_card = family.train_card(card)
        key = json.dumps(train_card, sort_keys=True)
        if key in seen:  # VLKEB's tasks share one train.json
            continue
        seen.add(key)
        root = source.resolve_root(train_card, family, data_root)
        loaded, report = family.load(root, train_card)
        cases += [(case, template) for case in loaded]
        for path in report.files:
            if "train" in Path(path).name or "/train" in path:
                files[path] = file_digest(path)
    if not cases:
        raise TrainingError("the train splits of the tasks hold no case")
    record = {"tasks": sorted({task for task, _, _ in sources}), "files": files, "cases": len(cases),
              "sha256": digest({"files": sorted(files.values()), "cases": [c.case_id for c, _ in cases]})}
    return cases, record


# What the learned editors' edit loss is computed on (``train_objective``):
#   reference: the reference trainers' (MMKE-Bench, VLKEB, EasyEdit MultimodalTrainer) ``edit_outer``
#              (the rephrased question on the edit image) and ``edit_outer_image`` (the edit question
#              on the rephrase image), with the new target; the scored T-Rel/I-Rel probes never;
#   probes:    every scored probe that is neither locality nor portability (ours before issue 23).
# Locality probes are the locality inputs either way.
TRAIN_OBJECTIVES = ("reference", "probes")
REFERENCE_IN_SCOPE = ("edit_outer", "edit_outer_image")


def training_example(case: EditCase, template: str, objective: str = "reference") -> TrainingExample:
    """The case's in-scope inputs with the new answer (``objective``, above) and its locality probes."""
    from mmke_eval.prompts import TRAINING_PATH, edit_prompts, probe_prompt
    from mmke_eval.templates import render

    if objective not in TRAIN_OBJECTIVES:
        raise TrainingError(f"train_objective={objective!r}: expected one of {', '.join(TRAIN_OBJECTIVES)}")
    family = families.get(case.family)
    in_scope, in_scope_kinds, locality = [], [], []
    for doc in ProbeDoc.rows(case):
        kind = family.probe(doc["probe"])
        # The prompts the reference trains on (its trainer path, where a family has several).
        query = Query(probe_prompt(doc, template, TRAINING_PATH), load_optional_image(doc["image"], case.case_id), doc["answer"])
        if kind.is_locality:
            locality.append(query)
        elif not kind.portability and objective == "probes":
            in_scope.append(query)
            in_scope_kinds.append(kind.name)
    prompt, rephrase_prompt = edit_prompts(case.family, case.knowledge_type, case.prompt, case.rephrase_prompt, TRAINING_PATH)
    if objective == "reference":
        # The edit request's questions as the trainer path builds them (wrapped where the family
        # declares an edit template, as EasyEdit's E-VQA), else through the task's template.
        wrapped = (prompt, rephrase_prompt) != (case.prompt, case.rephrase_prompt)
        for name, question, image in zip(REFERENCE_IN_SCOPE, (rephrase_prompt, prompt), (case.image, case.rephrase_image)):
            if question and (image or name == "edit_outer"):
                text = question if wrapped else render(template, question=question)
                in_scope.append(Query(text, load_optional_image(image, case.case_id), case.target))
                in_scope_kinds.append(name)
        if not in_scope:
            raise TrainingError(f"case {case.case_id}: train_objective=reference trains on the rephrased question and the "
                                "rephrase image, and this case has neither; use --editor_args train_objective=probes")
    edit = EditRequest(
        case_id=case.case_id, prompt=prompt, target=case.target,
        image=load_optional_image(case.image, case.case_id), original=case.original,
        rephrase_prompt=rephrase_prompt, rephrase_image=load_optional_image(case.rephrase_image, case.case_id),
        knowledge_type=case.knowledge_type, train_file=case.train_file, family=case.family,
    )
    return TrainingExample(case.case_id, edit, in_scope, locality, in_scope_kinds)


def case_order(step: int, n: int, seed: int) -> int:
    """The train case of ``step``: a fresh seeded permutation every pass over the cases."""
    epoch, within = divmod(step, n)
    order = list(range(n))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order[within]


def training_benchmark(sources: list[tuple[str, dict, str]], tasks: str) -> str:
    """The one benchmark family the tasks belong to: its reference budget is the default, so
    tasks of two families (each with its own budget) are refused."""
    found = sorted({families.of_card(card).name for _, card, _ in sources})
    if len(found) != 1:
        raise TrainingError(f"--tasks {tasks}: tasks of the benchmark families {', '.join(found)}; the training defaults "
                            "(budget) depend on the benchmark, so train on one family's tasks per run")
    return found[0]
