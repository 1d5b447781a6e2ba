"""A plain (non-editing) lmms-eval task written into a folder, to run beside the MMKE tasks in tests."""

from __future__ import annotations

from pathlib import Path

PLAIN_TASK = """
task: {name}
dataset_path: json
dataset_kwargs: {{data_files: {{test: data.jsonl}}}}
test_split: test
output_type: generate_until
doc_to_visual: !function hooks.visual
doc_to_text: question
doc_to_target: answer
generation_kwargs: {{max_new_tokens: 4, until: ["\\n"]}}
process_results: !function hooks.plain_answer
metric_list: [{{metric: plain_answer, aggregation: mean, higher_is_better: true}}]
"""

HOOKS = """
from PIL import Image

def visual(doc):
    # lmms-eval 0.7.3's llava_hf fails on text-only requests (a bug of its simple path)
    return [Image.new("RGB", (32, 32), (200, 30, 30))] if {with_image} else []

def plain_answer(doc, results):
    # 1 when the base model's own generation came back, not an edited-model JSON response
    return {{"plain_answer": float(not results[0].startswith('{{"mmke_probe"'))}}
"""


def write_plain_task(folder: Path, name: str = "plain_probe", with_image: bool = True) -> Path:
    """``folder`` holding task ``name`` (one question), its hooks and its data; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    (folder / f"{name}.yaml").write_text(PLAIN_TASK.format(name=name))
    (folder / "hooks.py").write_text(HOOKS.format(with_image=with_image))
    (folder / "data.jsonl").write_text('{"question": "What colour is the sky?", "answer": "blue"}\n')
    return folder
