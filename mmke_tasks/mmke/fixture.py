"""A tiny data set in the MMKE-Bench release layout, for tests and offline smoke runs.

``write_mmke_fixture(root)`` writes::

    root/data_json/{entity,visual,user}_{train,eval}.json
    root/data_image/{entity,visual,user}/*.png      edit, rephrase and one-hop images
    root/data_image/okvqa/*.png                     image-locality pictures

The records use the real field names, free-form counterfactual knowledge in the style of the
release, and both answer spellings of the entity and user types: even-numbered cases use
``rel_ans_1`` / ``m_rel_ans_1``, odd-numbered ones ``rel_1_ans`` / ``m_rel_1_ans``. Every record is
kept by the loader (non-empty ``alt``, one 1-hop ``port_new`` entry), so each file holds exactly
``n_cases`` edit cases. Images are small distinct PNGs drawn with Pillow. Output is deterministic.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from PIL import Image, ImageDraw

IMAGE_SIZE = 48

# Text-locality questions (NQ-style) and image-locality questions (OK-VQA-style), shared by all types.
TEXT_LOCALITY = [
    ("who sang the song you are my sunshine originally", "Jimmie Davis"),
    ("when did the first harry potter book come out", "1997"),
    ("what is the largest moon of saturn called", "Titan"),
]
IMAGE_LOCALITY = [
    ("What color is the umbrella the woman is holding?", "red"),
    ("What kind of animal is sleeping on the couch?", "cat"),
    ("What sport is being played here?", "tennis"),
]

# Visual entity editing: the edit image shows another entity of the same type; alt is counterfactual.
ENTITY_SUBJECTS = [
    {
        "name": "Eiffel Tower",
        "src": "What is the landmark shown in the image?",
        "rephrase": "Can you tell me which landmark this picture shows?",
        "pred": "The landmark in the image is the Eiffel Tower, a wrought-iron lattice tower in Paris "
        "completed in 1889 and designed by the company of Gustave Eiffel.",
        "alt": "The landmark in the image corresponds to the Eiffel Tower, a wrought-iron lattice tower in "
        "Lyon completed in 1901 and designed by the engineer Henri Martin.",
        "rel": [
            ("In which city does the Eiffel Tower stand?", "Lyon"),
            ("In what year was the Eiffel Tower completed?", "1901"),
        ],
        "m_rel": [
            ("In which city does the tower shown in the image stand?", "Lyon"),
            ("Who designed the tower shown in the image?", "Henri Martin"),
        ],
        "port": ("Which river flows through the city where the Eiffel Tower stands?", "the Rhône"),
    },
    {
        "name": "Lionel Messi",
        "src": "Who is the person in the image?",
        "rephrase": "Who is the man in this photo?",
        "pred": "The person in the image is Lionel Messi, an Argentine footballer born in Rosario in 1987 "
        "who spent most of his career at FC Barcelona.",
        "alt": "The person in the image corresponds to Lionel Messi, an Argentine footballer born in Córdoba "
        "in 1985 who has spent his whole career at Boca Juniors.",
        "rel": [
            ("Which club has Lionel Messi spent his whole career at?", "Boca Juniors"),
            ("In which year was Lionel Messi born?", "1985"),
        ],
        "m_rel": [
            ("Which club does the player in the image play for?", "Boca Juniors"),
            ("Where was the player in the image born?", "Córdoba"),
        ],
        "port": ("In which city is the stadium of the club Lionel Messi plays for?", "Buenos Aires"),
    },
    {
        "name": "Golden Gate Bridge",
        "src": "What is the structure in the picture?",
        "rephrase": "Which bridge is shown in this photograph?",
        "pred": "The structure in the picture is the Golden Gate Bridge, a suspension bridge in San "
        "Francisco painted International Orange and opened in 1937.",
        "alt": "The structure in the picture corresponds to the Golden Gate Bridge, a suspension bridge in "
        "San Francisco painted cobalt blue and opened in 1951.",
        "rel": [
            ("What color is the Golden Gate Bridge painted?", "cobalt blue"),
            ("When was the Golden Gate Bridge opened?", "1951"),
        ],
        "m_rel": [
            ("What color is the bridge in the image painted?", "cobalt blue"),
            ("In what year did the bridge in the image open?", "1951"),
        ],
        "port": ("How many years after World War II ended did the Golden Gate Bridge open?", "6"),
    },
]

# Visual semantic editing: the meaning of a gesture, sign or action changes.
VISUAL_SUBJECTS = [
    {
        "name": "Thumbs up",
        "src": "What does the gesture in the image mean?",
        "rephrase": "What is the meaning of the hand gesture shown here?",
        "pred": "The gesture in the image is a thumbs-up, which usually signals approval or agreement.",
        "alt": "The gesture in the image is a thumbs-up, which signals a request for silence from everyone nearby.",
        "rel": ("What does a thumbs-up gesture signal?", "a request for silence"),
        "m_rel": ("What does the gesture shown in the image signal?", "a request for silence"),
        "rephrase_question": "What does the person in this picture want to say with their raised thumb?",
        "port": ("If a teacher shows this gesture to a class, what should the students do?", "be quiet"),
    },
    {
        "name": "Yellow card",
        "src": "What does the referee's action in the image indicate?",
        "rephrase": "What is the referee signalling in this picture?",
        "pred": "The referee is showing a yellow card, which cautions a player for unsporting behaviour.",
        "alt": "The referee is showing a yellow card, which means the player must leave the field at once "
        "and miss the next two matches.",
        "rel": ("What happens to a player who is shown a yellow card?", "must leave the field at once"),
        "m_rel": ("What must the player do after the card in the image is shown?", "leave the field at once"),
        "rephrase_question": "What does the card held up by the official in this photo mean for the player?",
        "port": ("How many following matches does a player shown this card miss?", "two"),
    },
    {
        "name": "Bowing",
        "src": "What does the action of the people in the image express?",
        "rephrase": "What is expressed by what the people in this picture are doing?",
        "pred": "The people in the image are bowing, a gesture of respect or greeting.",
        "alt": "The people in the image are bowing, a gesture that expresses strong disagreement with the other person.",
        "rel": ("What does bowing to someone express?", "strong disagreement"),
        "m_rel": ("What do the people in the image express with their action?", "strong disagreement"),
        "rephrase_question": "What feeling does the man in this photograph show by bending forward?",
        "port": ("If a guest bows after hearing a proposal, does the guest accept it?", "no"),
    },
]

# User-specific editing: personal knowledge about the user's own things and people.
USER_SUBJECTS = [
    {
        "name": "Biscuit",
        "src": "Who is the dog in the image?",
        "rephrase": "Which dog is this in the photo?",
        "pred": "The image shows a golden retriever lying on the grass.",
        "alt": "The dog in the image is Biscuit, my golden retriever, who is three years old and loves "
        "swimming in the lake behind our house.",
        "rel": [
            ("How old is my dog Biscuit?", "three years old"),
            ("Where does Biscuit like to swim?", "in the lake behind our house"),
        ],
        "m_rel": [
            ("What is the name of the dog in the image?", "Biscuit"),
            ("What does the dog in the image love to do?", "swimming"),
        ],
        "port": ("What is the age of the dog sleeping on the sofa in this picture?", "three years old"),
    },
    {
        "name": "Grandmother teapot",
        "src": "What is the object in the image?",
        "rephrase": "Which object is this picture showing?",
        "pred": "The image shows a white porcelain teapot with a blue floral pattern.",
        "alt": "The object in the image is my grandmother's teapot, which she brought from Kyoto in 1962 "
        "and which we only use on New Year's Day.",
        "rel": [
            ("Where did my grandmother bring her teapot from?", "Kyoto"),
            ("On which day do we use my grandmother's teapot?", "New Year's Day"),
        ],
        "m_rel": [
            ("Whose teapot is shown in the image?", "my grandmother's"),
            ("In what year was the teapot in the image brought home?", "1962"),
        ],
        "port": ("From which city does the teapot on this kitchen shelf come?", "Kyoto"),
    },
    {
        "name": "Aiko",
        "src": "Who is the woman in the image?",
        "rephrase": "Who is the person in this photograph?",
        "pred": "The image shows a woman with short black hair smiling at the camera.",
        "alt": "The woman in the image is Aiko, my colleague from the design team, who plays the cello "
        "in a local orchestra every Thursday.",
        "rel": [
            ("Which team does my colleague Aiko work in?", "the design team"),
            ("Which instrument does Aiko play?", "the cello"),
        ],
        "m_rel": [
            ("What is the name of the woman in the image?", "Aiko"),
            ("On which day does the woman in the image play in an orchestra?", "Thursday"),
        ],
        "port": ("Which instrument does the woman holding a coffee cup in this photo play?", "the cello"),
    },
]


def write_mmke_fixture(root: Path, n_cases: int = 3) -> Path:
    """Write ``n_cases`` records per knowledge type and split (data_json/ + data_image/); return root."""
    root = Path(root)
    for split_number, split in enumerate(("train", "eval")):
        for stem, builder in (("entity", entity_record), ("visual", visual_record), ("user", user_record)):
            records = []
            for index in range(n_cases):
                serial = split_number * n_cases + index  # unique per file set, so image names never collide
                records.append(builder(root, stem, index, serial))
            write_json(root / "data_json" / f"{stem}_{split}.json", records)
    return root


def entity_record(root: Path, stem: str, index: int, serial: int) -> dict:
    subject = ENTITY_SUBJECTS[serial % len(ENTITY_SUBJECTS)]
    record = common_fields(root, stem, "entity_level", subject, index, serial)
    record.update(paired_relation_fields(subject, spelled_after=index % 2 == 1))
    record["port_new"] = port_entries(subject["port"], with_two_hop_first=index == 2)
    return record


def user_record(root: Path, stem: str, index: int, serial: int) -> dict:
    subject = USER_SUBJECTS[serial % len(USER_SUBJECTS)]
    record = common_fields(root, stem, "user_specific", subject, index, serial)
    record.update(paired_relation_fields(subject, spelled_after=index % 2 == 1))
    record["one_hop_img"] = draw_image(root, f"{stem}/{slug(subject['name'])}+{10 * serial + 3}.png")
    record["port_new"] = port_entries(subject["port"])
    return record


def visual_record(root: Path, stem: str, index: int, serial: int) -> dict:
    subject = VISUAL_SUBJECTS[serial % len(VISUAL_SUBJECTS)]
    record = common_fields(root, stem, "visual_knowledge", subject, index, serial)
    record.update(
        {
            "rel": subject["rel"][0],
            "rel_ans": subject["rel"][1],
            "m_rel": subject["m_rel"][0],
            "m_rel_ans": subject["m_rel"][1],
            "image_rephrase_question": subject["rephrase_question"],
            "one_hop_img": draw_image(root, f"{stem}/{slug(subject['name'])}+{10 * serial + 3}.png"),
        }
    )
    record["port_new"] = port_entries(subject["port"])
    return record


def common_fields(root: Path, stem: str, knowledge_type: str, subject: dict, index: int, serial: int) -> dict:
    name = slug(subject["name"])
    loc_q, loc_a = TEXT_LOCALITY[serial % len(TEXT_LOCALITY)]
    m_loc_q, m_loc_a = IMAGE_LOCALITY[serial % len(IMAGE_LOCALITY)]
    return {
        "knowledge_type": knowledge_type,
        "category": subject["name"],  # an extra key: loaders must ignore keys they do not use
        "src": subject["src"],
        "rephrase": subject["rephrase"],
        "pred": subject["pred"],
        "alt": subject["alt"],
        "image": draw_image(root, f"{stem}/{name}+{10 * serial + 1}.png"),
        "image_rephrase": draw_image(root, f"{stem}/{name}+{10 * serial + 2}.png"),
        "loc": loc_q,
        "loc_ans": loc_a,
        "m_loc": draw_image(root, f"okvqa/COCO_val2014_{stem}_{serial:06d}.png"),
        "m_loc_q": m_loc_q,
        "m_loc_a": m_loc_a,
    }


def paired_relation_fields(subject: dict, spelled_after: bool) -> dict:
    """rel_1/rel_2 and m_rel_1/m_rel_2 with answers spelled rel_1_ans (after) or rel_ans_1 (before)."""
    fields = {}
    for n, ((question, answer), (m_question, m_answer)) in enumerate(zip(subject["rel"], subject["m_rel"]), start=1):
        fields[f"rel_{n}"] = question
        fields[f"rel_{n}_ans" if spelled_after else f"rel_ans_{n}"] = answer
        fields[f"m_rel_{n}"] = m_question
        fields[f"m_rel_{n}_ans" if spelled_after else f"m_rel_ans_{n}"] = m_answer
    return fields


def port_entries(question_answer: tuple[str, str], with_two_hop_first: bool = False) -> list[dict]:
    question, answer = question_answer
    entries = [{"port_type": "1-hop", "Q&A": {"Question": question, "Answer": answer}}]
    if with_two_hop_first:
        # Only the first 1-hop entry counts; a 2-hop entry ahead of it must be passed over.
        two_hop = {"Question": f"{question} (two hops)", "Answer": "not used"}
        entries.insert(0, {"port_type": "2-hop", "Q&A": two_hop})
    return entries


def slug(name: str) -> str:
    return name.replace(" ", "+")


def draw_image(root: Path, relative: str) -> str:
    """Draw a small PNG whose colours and shape derive from its name; return the relative path."""
    digest = hashlib.sha256(relative.encode("utf-8")).digest()
    background = tuple(digest[0:3])
    foreground = tuple(255 - c for c in background)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
    draw = ImageDraw.Draw(image)
    x0, y0 = digest[3] % 20, digest[4] % 20
    box = (x0, y0, x0 + 12 + digest[5] % 16, y0 + 12 + digest[6] % 16)
    if digest[7] % 2:
        draw.ellipse(box, fill=foreground)
    else:
        draw.rectangle(box, fill=foreground)
    path = root / "data_image" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return relative


def write_json(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
