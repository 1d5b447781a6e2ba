"""How a probe's prompt and the edit's prompt are built: the one place for both entry points.

The lmms-eval tasks (``mmke_tasks.hooks.doc_to_text``), the direct scorer (``mmke_eval.direct``),
the `edited` model (the edit request), IKE (its demonstrations) and editor training all call these
functions, so they build the same text for every probe kind.

A probe's template: the one its family declares for the run's prompt path (``prompt_paths`` in
registry.yaml: EasyEdit builds MMEdit prompts differently on its trainer and editor paths,
docs/benchmarks.md), else its kind's own template, else the task's (``mmke/probe.jinja``: the
question as is). The prompt path of a run is the ``prompt_path`` option: ``auto`` resolves to the
editor's reference path (``Editor.reference_prompt_path``: IKE's numbers come from the editor
path, every other editor's from the trainer path), ``trainer`` or ``editor`` force one.
"""

from __future__ import annotations

from mmke_eval import families
from mmke_eval.templates import render

DEFAULT_TEMPLATE = "mmke/probe.jinja"
PROMPT_PATH_OPTIONS = ("auto",) + families.PROMPT_PATHS
# Editor training (mmke-eval train-editor) always builds what the reference trained on: the
# trainer path (EasyEdit's MultimodalTrainer, VLKEB's, MMKE-Bench's).
TRAINING_PATH = "trainer"

def resolve(option: str, editor) -> str:
    """The prompt path a run uses: the option, or with ``auto`` the editor's reference path."""
    if option not in PROMPT_PATH_OPTIONS:
        raise ValueError(f"prompt_path must be one of {', '.join(PROMPT_PATH_OPTIONS)}, not {option!r}")
    return getattr(editor, "reference_prompt_path", TRAINING_PATH) if option == "auto" else option


def active_path() -> str:
    """The prompt path of the active run (mmke_eval/run_context.py: the `edited` model resolves it
    for its editor), else the trainer path (the default of every editor but IKE)."""
    from mmke_eval import run_context

    context = run_context.active()
    return (context.prompt_path if context else None) or TRAINING_PATH


def probe_template(doc: dict, task_template: str = DEFAULT_TEMPLATE, path: str | None = None) -> str:
    """The template of a probe document (see the module docstring); ``path`` None: the active one."""
    family = families.get(doc["family"])
    kind = family.probe(doc["probe"])
    declared = family.path_template(path or active_path(), doc["knowledge_type"], kind.name) if family.prompt_paths else None
    return declared or kind.template or task_template


def probe_prompt(doc: dict, task_template: str = DEFAULT_TEMPLATE, path: str | None = None) -> str:
    return render(probe_template(doc, task_template, path), question=doc["question"])


def edit_prompts(family: str, knowledge_type: str, prompt: str, rephrase_prompt: str, path: str) -> tuple[str, str]:
    """The edit request's prompt and rephrase prompt on ``path`` (wrapped where the family declares
    an ``edit`` template for it, as EasyEdit's trainer wraps E-VQA's edit_inner / edit_outer)."""
    declared = families.get(family) if family else None
    template = declared.path_template(path, knowledge_type, families.EDIT_PROMPT) if declared and declared.prompt_paths else None
    if template is None:
        return prompt, rephrase_prompt
    return render(template, question=prompt), (render(template, question=rephrase_prompt) if rephrase_prompt else "")


# IKE's in-context texts (templates/ike/*.jinja): ``New Fact: {src} {alt}\nPrompt: {question}``.
IKE_DEMONSTRATION = "ike/demonstration.jinja"
IKE_QUERY = "ike/query.jinja"


def ike_demonstration(src: str, alt: str, question: str, answer: str) -> str:
    """One retrieved demonstration of IKE's prefix (the fact, then a question and its answer)."""
    return render(IKE_DEMONSTRATION, src=src, alt=alt, question=question, answer=answer)


def ike_query(src: str, alt: str, question: str) -> str:
    """The last line of IKE's prefix: the edit's fact and the probe's question."""
    return render(IKE_QUERY, src=src, alt=alt, question=question)
