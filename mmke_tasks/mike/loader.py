"""MIKE (fine-grained entity editing, arXiv 2402.14835) from a local folder.

MIKE's data is not public, so mmke-eval defines its layout (docs/benchmarks.md):

    PATH/mike_{train,eval}.json   a JSON list, one record per entity
    PATH/...                      the images the records name, relative to PATH

A record::

    {"name": "Ruby-throated Hummingbird",           the entity name E: the edit target
     "images": ["entities/e01/0.jpg", ...],         >= 2 images of the entity: [0] is the edit image,
                                                    [1] the image-generality image, the rest are
                                                    extra edit images (multi-step editing)
     "caption": "A Ruby-throated Hummingbird ...",  entity-level caption, naming E (ELC target)
     "scene_images": ["scenes/s01.jpg"],            >= 1 complex scene showing the entity (CSR)
     "loc": "nq question: ...", "loc_ans": "...",   text locality (Natural Questions)
     "rephrase": "..."}                             optional: the rephrased identity prompt (T-Gen)

The edit (every task): the edit image with the Vanilla Name Answering prompt -> E. Probes per task
(card ``subset``): Reliability (the edit itself), T-Generality (the rephrased prompt on the edit
image), I-Generality (the task's prompt on another image: VNA -> E; ELC -> the caption; CSR: a
scene with "Does {name} appear ...?", the name and the scene drawn at random (seeded) from this
entity's and another's, answer "yes" iff they match), T-Locality (``loc``) and I-Locality (the
task's probe for another entity, drawn at random). The paper's prompts are used as written.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from mmke_eval.data.records import RecordReader, read_records
from mmke_eval.data.schema import DataError, EditCase, Probe, SkipReport

TASKS = ("vna", "elc", "csr")
VNA_PROMPT = "Question: Do you know the identity of the character depicted here? Short answer:"
REPHRASE_PROMPT = "Question: Who is the character shown in this picture? Short answer:"
ELC_PROMPT = (
    "Please write a caption of the picture in a sentence. The caption must contain the fine-grained entity names. "
    "Please include all fine-grained entity names as much as possible."
)
CSR_PROMPT = "Does {name} appear in the picture? Please answer yes or no."
LAYOUT = "PATH/mike_{train,eval}.json (a list of entity records: name, images, caption, scene_images, loc, loc_ans) and the images they name, relative to PATH"


def split_path(root: Path, split: str) -> Path:
    return root / f"mike_{split}.json"


class Entity:
    """One checked record: every field present and typed, every image found."""

    def __init__(self, reader: RecordReader):
        self.reader = reader
        self.name = reader.text("name")
        if not self.name.strip():
            raise reader.error("name", "empty entity name")
        self.images = self.image_list("images", minimum=2)
        self.scenes = self.image_list("scene_images", minimum=1)
        self.caption = reader.text("caption")
        if self.name.lower() not in self.caption.lower():
            raise reader.error("caption", f"the entity-level caption must contain the entity name {self.name!r}")
        self.loc, self.loc_ans = reader.text("loc"), reader.text("loc_ans")
        self.rephrase = reader.text("rephrase") if reader.has("rephrase") else REPHRASE_PROMPT

    def image_list(self, field: str, minimum: int) -> list[str]:
        value = self.reader.value(field)
        if not isinstance(value, list) or len(value) < minimum:
            raise self.reader.error(field, f"expected a list of at least {minimum} image paths, got {value!r:.80}")
        return [self.reader.image_path(f"{field}[{i}]", self.reader.expect_text(f"{field}[{i}]", v)) for i, v in enumerate(value)]


def load_card(root: Path, card: dict) -> tuple[list[EditCase], SkipReport]:
    """The family loader (family.yaml `loader`): the cases of one MIKE task (card ``subset``: vna, elc or csr)."""
    task, split = card.get("subset"), card["split"]
    if task not in TASKS:
        raise DataError(f"source card {card!r}: subset must be one of {TASKS}")
    root = Path(os.path.abspath(root))
    json_path = split_path(root, split)
    if not json_path.is_file():
        raise DataError(f"no MIKE {split} file under {root}: looked for {json_path}. Expected {LAYOUT}.")
    train_path = split_path(root, "train")
    records = read_records(json_path)
    report = SkipReport(total=len(records), files=[str(p) for p in dict.fromkeys((json_path, train_path)) if p.is_file()])
    benchmark = card["benchmark"]
    entities = [Entity(RecordReader(r, json_path, i, f"{benchmark}/{task}/{split}/{i}", (root,), data_root=root)) for i, r in enumerate(records)]
    if len(entities) < 2:
        raise DataError(f"{json_path}: MIKE needs at least 2 entities (locality and CSR draw another one), found {len(entities)}")
    seed = int(card.get("seed", 0))
    cases = [build_case(entity, entities, index, task, seed, str(train_path) if train_path.is_file() else "")
             for index, entity in enumerate(entities)]
    return cases, report


def case_random(seed: int, case_id: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{seed}:{case_id}".encode()).digest()[:8], "little"))


def build_case(entity: Entity, entities: list[Entity], index: int, task: str, seed: int, train_file: str) -> EditCase:
    case_id = entity.reader.case_id
    rng = case_random(seed, case_id)
    other = entities[rng.choice([i for i in range(len(entities)) if i != index])]
    edit_image, second_image = entity.images[0], entity.images[1]
    name = entity.name
    probes = [
        Probe("rel", "rel", VNA_PROMPT, name, edit_image, "images[0]", entity=name),
        Probe("t_gen", "t_gen", entity.rephrase, name, edit_image, "rephrase", entity=name),
    ]
    if task == "vna":
        probes.append(Probe("i_gen", "i_gen", VNA_PROMPT, name, second_image, "images[1]", entity=name))
        probes.append(Probe("i_loc", "i_loc", VNA_PROMPT, other.name, other.images[0], "images[0] of another entity"))
    elif task == "elc":
        probes.append(Probe("i_gen", "i_gen", ELC_PROMPT, entity.caption, second_image, "caption", entity=name))
        probes.append(Probe("i_loc", "i_loc", ELC_PROMPT, other.caption, other.images[0], "caption of another entity"))
    else:  # csr: the name and the scene each from this entity or the other, at random
        asked = name if rng.random() < 0.5 else other.name
        scene_of = entity if rng.random() < 0.5 else other
        answer = "yes" if (asked == name) == (scene_of is entity) else "no"
        # The "entity" is the expected answer word here (entity_acc=generation: "yes" scores 1, "Yes, it does" 0.5).
        probes.append(Probe("i_gen", "i_gen", CSR_PROMPT.format(name=asked), answer, rng.choice(scene_of.scenes),
                            "scene_images", entity=answer))
        probes.append(Probe("i_loc", "i_loc", CSR_PROMPT.format(name=other.name), "yes", rng.choice(other.scenes),
                            "scene_images of another entity"))
    probes.insert(3, Probe("t_loc", "t_loc", entity.loc, entity.loc_ans, "", "loc"))
    return EditCase(
        case_id=case_id,
        knowledge_type=task,
        prompt=VNA_PROMPT,
        target=name,
        original="",
        image=edit_image,
        rephrase_prompt=entity.rephrase,
        rephrase_image=second_image,
        probes=tuple(probes),
        train_file=train_file,
        extra_images=tuple(entity.images[2:]),
        family="mike",
    )


def demonstration_pool(train_file: str) -> list[tuple[str, str, str, str]]:
    """IKE's pool from the MIKE train split: per entity, the edit, its rephrase and its locality neighbour."""
    path = Path(train_file)
    if not train_file or not path.is_file():
        raise FileNotFoundError(f"IKE: MIKE train split file {train_file!r} not found")
    pool = []
    for record in read_records(path):
        if not isinstance(record, dict) or not record.get("name"):
            continue
        name = record["name"]
        pool.append((VNA_PROMPT, name, VNA_PROMPT, name))
        pool.append((VNA_PROMPT, name, record.get("rephrase") or REPHRASE_PROMPT, name))
        if record.get("loc") and record.get("loc_ans"):
            pool.append((VNA_PROMPT, name, record["loc"], record["loc_ans"]))
    if not pool:
        raise ValueError(f"IKE: MIKE train split file {train_file!r} holds no entity with a name")
    return pool
