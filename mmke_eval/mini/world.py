"""The mmke_mini world: who and what exists, what is true of it, and how it is drawn.

Everything here is a pure function of a seed (and the case counts), so the benchmark generator
(``generate.py``) and the world-model trainer (``train_world/``) build exactly the same world:

* **visual entities** (``entity_level``): a shape x colour x pattern drawing with a one-word name
  and three facts: home city, year, category. A city lies in a country (the one-hop fact).
* **visual semantics** (``visual_knowledge``): signs made of 1-3 arrows of one colour pointing one
  way. A sign means something ("rain"); each meaning has a consequence, what you do ("hide").
* **user-specific** (``user_specific``): personal items (mug, hat, key, ...; colour, plain or
  striped) owned by named users and kept in a room. Users live in a city and have a job.

Images are drawn with Pillow at 4x and downsampled to 64 px; ``RenderStyle`` holds every
appearance-preserving variation (scale, rotation, position, background, noise, frame), so the
same subject can be drawn many different ways.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

# Bump when the world, the texts or the drawings change: cached data under the old version is stale,
# and a world model trained on the old world no longer matches (retrain it).
WORLD_VERSION = 3

IMAGE_PX = 64  # saved size; the world model's processor resizes to 32 px
_SS = 2  # supersampling factor for anti-aliased drawing

# ----------------------------------------------------------------------------------------------
# Vocabulary. Every answer is one word; the world model's tokenizer makes each a single token.
# ----------------------------------------------------------------------------------------------
SHAPES = ("circle", "moon", "triangle", "star", "diamond", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 215, 40),
    "purple": (145, 60, 200),
    "orange": (245, 140, 30),
    "pink": (245, 130, 200),
    "cyan": (40, 210, 220),
}
COLOUR_NAMES = tuple(COLOURS)
PATTERNS = ("plain", "striped", "spotted")
# The lifelong world's entities also stand on a coloured plate (or none): 6 x 8 x 3 x 8 = 1152 looks.
PLATES = ("none",) + COLOUR_NAMES
LIFELONG_N_EVAL, LIFELONG_N_TRAIN = 1000, 100
ITEM_KINDS = ("mug", "hat", "key", "flag", "lamp", "bag")
ITEM_PATTERNS = ("plain", "striped")
DIRECTIONS = ("up", "down", "left", "right")
COUNTS = ("one", "two", "three")
YEARS = tuple(str(y) for y in range(1910, 2010, 10))
CATEGORIES = ("toy", "tool", "relic", "coin", "badge", "mask", "drum", "bell", "kite", "vase")
PLACES = ("kitchen", "garden", "attic", "garage", "office", "bedroom", "cellar", "hallway")
JOBS = ("baker", "pilot", "nurse", "farmer", "tailor", "miner", "painter", "sailor")
# meaning of a sign -> what you do when you see it (a bijection, so a new meaning changes the consequence)
MEANINGS = {
    "danger": "run",
    "rain": "hide",
    "food": "eat",
    "water": "drink",
    "rest": "sleep",
    "fire": "flee",
    "market": "buy",
    "school": "learn",
    "silence": "whisper",
    "storm": "wait",
    "music": "dance",
    "harbor": "sail",
}
N_CITIES = 12
N_COUNTRIES = 6
N_USERS = 12

# ----------------------------------------------------------------------------------------------
# Question and answer texts (the dataset and the world model's training use exactly these).
# ----------------------------------------------------------------------------------------------
ENTITY_SRC = "What is in the image?"
ENTITY_REPHRASE = "Tell me about the thing in the image."
SIGN_SRC = "What is this sign?"
SIGN_REPHRASE = "Tell me the meaning of the sign in the image."
ITEM_SRC = "Whose item is in the image?"
ITEM_REPHRASE = "Tell me about the item in the image."

ENTITY_TEXT_Q = {
    "city": "Where is {name} from?",
    "year": "In which year was {name} made?",
    "category": "What kind of thing is {name}?",
}
ENTITY_IMAGE_Q = {
    "city": "Where is the thing in the image from?",
    "year": "In which year was the thing in the image made?",
    "category": "What kind of thing is in the image?",
}
ENTITY_NAME_Q = "What is the name of the thing in the image?"
ENTITY_PORT_Q = "In which country is the home city of the thing in the image?"
ENTITY_PORT_TEXT_Q = "In which country is the home city of {name}?"

SIGN_TEXT_Q = "What does the sign of {desc} mean?"
SIGN_IMAGE_Q = "What does the sign in the image mean?"
SIGN_IMAGE_Q2 = "What is the meaning of the sign shown here?"
SIGN_PORT_Q = "What should you do when you see this sign?"

ITEM_TEXT_Q = {"owner": "Who owns the {desc}?", "place": "Where is the {desc} kept?"}
ITEM_IMAGE_Q = {"owner": "Who owns the item in the image?", "place": "Where is the item in the image kept?"}
ITEM_PORT_Q = "In which city does the owner of this item live?"

CITY_COUNTRY_Q = "In which country is {city}?"
USER_CITY_Q = "Where does {user} live?"
USER_JOB_Q = "What is the job of {user}?"
MEANING_Q = "What should you do when a sign means {meaning}?"
RULER_Q = "Who rules {country}?"

# The chain behind VLKEB's k-hop portability: the thing in the image -> its home city -> that city's
# country -> the country's ruler (a user) -> the ruler's job.
ENTITY_HOP_Q = {
    1: ENTITY_IMAGE_Q["city"],
    2: ENTITY_PORT_Q,
    3: "Who rules the country of the home city of the thing in the image?",
    4: "What is the job of the ruler of the country of the home city of the thing in the image?",
}
ENTITY_NAME_Q2 = "What is this thing called?"  # a rephrase of ENTITY_NAME_Q
# Rephrases of the picture questions (MMEdit's text generality): same meaning, other words.
IMAGE_Q_REPHRASE = {
    ENTITY_IMAGE_Q["city"]: "Which city does the thing in the image come from?",
    ENTITY_IMAGE_Q["year"]: "When was the thing in the image made?",
    ENTITY_IMAGE_Q["category"]: "What sort of thing is in the image?",
    ITEM_IMAGE_Q["owner"]: "To whom does the item in the image belong?",
    ITEM_IMAGE_Q["place"]: "In which room is the item in the image kept?",
    SIGN_IMAGE_Q: SIGN_IMAGE_Q2,
}
YES, NO = "yes", "no"  # MIKE's complex-scenario recognition answers

# Perception questions (image locality items, and the first stage of the world model's curriculum).
SHAPE_Q = "What shape is in the image?"
SHAPE_COLOUR_Q = "What colour is the shape in the image?"
SHAPE_PATTERN_Q = "What pattern does the shape in the image have?"
ARROW_COUNT_Q = "How many arrows are in the image?"
ARROW_DIR_Q = "Which way do the arrows in the image point?"
ARROW_COLOUR_Q = "What colour are the arrows in the image?"
ITEM_KIND_Q = "What kind of item is in the image?"
ITEM_COLOUR_Q = "What colour is the item in the image?"
ITEM_PATTERN_Q = "Is the item in the image plain or striped?"
PLATE_Q = "What colour is the plate behind the shape?"  # the lifelong world's entities only


# ----------------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entity:
    name: str
    shape: str
    colour: str
    pattern: str
    city: str
    year: str
    category: str
    plate: str = "none"  # the lifelong world's entities: the colour of the plate they stand on

    @property
    def look(self):
        if self.plate != "none":
            return ("shape", self.shape, self.colour, self.pattern, self.plate)
        return ("shape", self.shape, self.colour, self.pattern)

    def description(self, city: str | None = None, year: str | None = None, category: str | None = None) -> str:
        return f"{self.name}, a {category or self.category} from {city or self.city}, made in {year or self.year}."


@dataclass(frozen=True)
class Sign:
    count: str
    colour: str
    direction: str
    meaning: str

    @property
    def look(self):
        return ("arrows", self.count, self.colour, self.direction)

    @property
    def desc(self) -> str:
        noun = "arrow" if self.count == "one" else "arrows"
        return f"{self.count} {self.colour} {self.direction} {noun}"

    def description(self, meaning: str | None = None) -> str:
        desc = self.desc
        return f"The sign of {desc} means {meaning or self.meaning}."


@dataclass(frozen=True)
class Item:
    kind: str
    colour: str
    pattern: str
    owner: str
    place: str

    @property
    def look(self):
        return ("item", self.kind, self.colour, self.pattern)

    @property
    def desc(self) -> str:
        return f"{self.colour} {self.pattern} {self.kind}"

    def description(self, owner: str | None = None, place: str | None = None) -> str:
        return f"The {self.desc} belongs to {owner or self.owner} and is kept in the {place or self.place}."


@dataclass(frozen=True)
class User:
    name: str
    city: str
    job: str


@dataclass
class World:
    seed: int
    countries: list[str]
    city_country: dict[str, str]
    users: dict[str, User]
    entities: dict[str, list[Entity]]  # split -> subjects; eval first in the generator's order
    signs: dict[str, list[Sign]]
    items: dict[str, list[Item]]
    extra: dict = field(default_factory=dict)
    rulers: dict[str, str] = field(default_factory=dict)  # country -> the user who rules it
    lifelong: bool = False  # the lifelong-scale world (build_world(lifelong=True)): entities on plates

    @property
    def cities(self) -> list[str]:
        return list(self.city_country)

    def all_entities(self) -> list[Entity]:
        return self.entities["train"] + self.entities["eval"]

    def all_signs(self) -> list[Sign]:
        return self.signs["train"] + self.signs["eval"]

    def all_items(self) -> list[Item]:
        return self.items["train"] + self.items["eval"]

    def words(self) -> list[str]:
        """Every one-word name and answer of the world (the tokenizer makes each a single token)."""
        out = list(self.countries) + self.cities + list(self.users)
        out += [e.name for e in self.all_entities()]
        out += list(SHAPES) + list(COLOURS) + list(PATTERNS) + list(ITEM_KINDS) + list(DIRECTIONS) + list(COUNTS)
        out += list(YEARS) + list(CATEGORIES) + list(PLACES) + list(JOBS) + list(MEANINGS) + list(MEANINGS.values())
        return out + [YES, NO]

    def entity_hops(self, entity: "Entity") -> dict[int, str]:
        """The answers of ENTITY_HOP_Q for ``entity``: home city, country, ruler, ruler's job."""
        country = self.city_country[entity.city]
        ruler = self.rulers[country]
        return {1: entity.city, 2: country, 3: ruler, 4: self.users[ruler].job}


_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "st", "sk")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "n", "r", "l", "s", "k", "x", "m", "sh", "t")


def _make_names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    reserved = set(w.lower() for w in _ENGLISH_WORDS)
    names: list[str] = []
    while len(names) < n:
        syllables = rng.choice((1, 2, 2))
        word = ""
        for i in range(syllables):
            word += rng.choice(_ONSETS) + rng.choice(_VOWELS)
        word += rng.choice(_CODAS)
        if not 3 <= len(word) <= 7 or word in taken or word in reserved:
            continue
        taken.add(word)
        names.append(word.capitalize())
    return names


# Words of the question/answer texts: a generated name must not be one of them.
_ENGLISH_WORDS = set(
    " ".join(
        [ENTITY_SRC, ENTITY_REPHRASE, SIGN_SRC, SIGN_REPHRASE, ITEM_SRC, ITEM_REPHRASE, ENTITY_NAME_Q, ENTITY_PORT_Q,
         SIGN_TEXT_Q, SIGN_IMAGE_Q2, SIGN_PORT_Q, ITEM_PORT_Q, CITY_COUNTRY_Q, USER_CITY_Q, USER_JOB_Q, MEANING_Q,
         SHAPE_Q, SHAPE_COLOUR_Q, SHAPE_PATTERN_Q, ARROW_COUNT_Q, ARROW_DIR_Q, ITEM_KIND_Q, ITEM_PATTERN_Q,
         *ENTITY_TEXT_Q.values(), *ITEM_TEXT_Q.values(), *ENTITY_HOP_Q.values(), *IMAGE_Q_REPHRASE.values(), RULER_Q,
         ENTITY_NAME_Q2, "new fact prompt belongs kept made means a an the yes no question short answer"]
    )
    .replace("?", " ").replace(".", " ").replace(",", " ").replace("{", " ").replace("}", " ").lower().split()
) | set(SHAPES) | set(COLOURS) | set(PATTERNS) | set(ITEM_KINDS) | set(CATEGORIES) | set(PLACES) | set(JOBS) | set(
    MEANINGS
) | set(MEANINGS.values()) | set(DIRECTIONS) | set(COUNTS)


def build_world(seed: int = 0, n_eval: int = 40, n_train: int = 40, lifelong: bool = False) -> World:
    """The world of ``seed``: ``n_eval`` + ``n_train`` subjects of each knowledge type.

    ``lifelong``: the lifelong-scale world, a stream of over 1000 distinct edits. Its entities
    (LIFELONG_N_EVAL + LIFELONG_N_TRAIN) stand on a coloured plate or none, the only way to draw
    that many distinct ones; signs and items are as in the base world. Its own world model knows it
    (mmke_eval/mini/world_model_lifelong/, docs/mmke-mini.md)."""
    n = n_eval + n_train
    n_entities = LIFELONG_N_EVAL + LIFELONG_N_TRAIN if lifelong else n
    limits = {} if lifelong else {"entities": len(SHAPES) * len(COLOURS) * len(PATTERNS)}
    limits |= {
        "signs": len(COUNTS) * len(COLOURS) * len(DIRECTIONS),
        "items": len(ITEM_KINDS) * len(COLOURS) * len(ITEM_PATTERNS),
    }
    for what, limit in limits.items():
        if n > limit:
            raise ValueError(f"n_eval + n_train = {n} exceeds the {limit} distinct-looking {what} this world can draw")
    if n_eval < 1 or n_train < 1:
        raise ValueError("n_eval and n_train must be at least 1")
    rng = random.Random(f"mmke_mini/world/{seed}")
    taken: set[str] = set()
    countries = _make_names(rng, N_COUNTRIES, taken)
    cities = _make_names(rng, N_CITIES, taken)
    city_country = {c: countries[i % N_COUNTRIES] for i, c in enumerate(cities)}
    user_names = _make_names(rng, N_USERS, taken)
    users = {u: User(u, rng.choice(cities), rng.choice(JOBS)) for u in user_names}

    if lifelong:
        looks = [(s, c, p, pl) for s in SHAPES for c in COLOURS for p in PATTERNS for pl in PLATES if pl != c]
    else:
        looks = [(s, c, p) for s in SHAPES for c in COLOURS for p in PATTERNS]
    rng.shuffle(looks)
    names = _make_names(rng, n_entities, taken)
    entities = [
        Entity(names[i], *looks[i][:3], city=rng.choice(cities), year=rng.choice(YEARS), category=rng.choice(CATEGORIES),
               plate=looks[i][3] if lifelong else "none")
        for i in range(n_entities)
    ]
    sign_looks = [(k, c, d) for k in COUNTS for c in COLOURS for d in DIRECTIONS]
    rng.shuffle(sign_looks)
    meanings = list(MEANINGS)
    signs = [Sign(*sign_looks[i], meaning=rng.choice(meanings)) for i in range(n)]
    item_looks = [(k, c, p) for k in ITEM_KINDS for c in COLOURS for p in ITEM_PATTERNS]
    rng.shuffle(item_looks)
    items = [Item(*item_looks[i], owner=rng.choice(user_names), place=rng.choice(PLACES)) for i in range(n)]

    def split(xs, n_first=n_eval):
        return {"eval": xs[:n_first], "train": xs[n_first:]}

    # Drawn from a stream of their own, so the facts drawn above stay those of earlier world versions.
    rulers = dict(zip(countries, random.Random(f"mmke_mini/world/{seed}/rulers").sample(user_names, N_COUNTRIES)))
    return World(seed, countries, city_country, users, split(entities, LIFELONG_N_EVAL if lifelong else n_eval), split(signs),
                 split(items), rulers=rulers, lifelong=lifelong)


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RenderStyle:
    """Appearance-preserving variation of one drawing."""

    scale: float = 0.8  # object size as a fraction of the canvas
    rotation: float = 0.0  # degrees
    dx: float = 0.0  # centre offset, fraction of the canvas
    dy: float = 0.0
    background: tuple[int, int, int] = (128, 128, 128)
    background2: tuple[int, int, int] | None = None  # vertical gradient to this colour
    noise: float = 0.0  # std of gaussian pixel noise
    frame: tuple[int, int, int] | None = None  # a border drawn round the picture
    seed: int = 0  # noise seed


def _grey(rng: random.Random, lo: int = 70, hi: int = 215) -> tuple[int, int, int]:
    v = rng.randint(lo, hi)
    tint = [rng.randint(-12, 12) for _ in range(3)]
    return tuple(max(0, min(255, v + t)) for t in tint)  # type: ignore[return-value]


def sample_style(rng: random.Random, kind: str, strength: str = "any") -> RenderStyle:
    """A random style. ``strength``: "mild" (edit images), "strong" (rephrase images), "any" (training)."""
    max_rot = {"shape": 15.0, "arrows": 8.0, "item": 12.0}[kind]
    if strength == "mild":
        scale, rot, off, noise = rng.uniform(0.74, 0.86), rng.uniform(-0.2, 0.2) * max_rot, 0.03, rng.uniform(0, 3)
        bg, bg2, frame = _grey(rng, 110, 190), None, None
    elif strength == "strong":
        small = rng.random() < 0.5
        scale = rng.uniform(0.52, 0.64) if small else rng.uniform(0.86, 0.92)
        rot = rng.choice((-1, 1)) * rng.uniform(0.6, 1.0) * max_rot
        off, noise = 0.1 if small else 0.03, rng.uniform(6, 14)
        bg = _grey(rng)
        bg2 = _grey(rng) if rng.random() < 0.5 else None
        frame = None
    elif strength == "context":  # one-hop images: framed, off-centre
        scale, rot, off, noise = rng.uniform(0.5, 0.66), rng.uniform(-0.5, 0.5) * max_rot, 0.08, rng.uniform(0, 8)
        bg, bg2 = _grey(rng), None
        frame = _grey(rng, 20, 240)
    else:
        scale = rng.uniform(0.5, 0.92)
        rot = rng.uniform(-1, 1) * max_rot
        off = 0.12 * (1.0 - scale) / 0.5
        noise = rng.choice((0.0, rng.uniform(0, 15)))
        bg = _grey(rng)
        bg2 = _grey(rng) if rng.random() < 0.3 else None
        frame = _grey(rng, 20, 240) if rng.random() < 0.2 else None
    if frame is not None:
        scale = min(scale, 0.7)
    return RenderStyle(
        scale=scale, rotation=rot, dx=rng.uniform(-off, off), dy=rng.uniform(-off, off),
        background=bg, background2=bg2, noise=noise, frame=frame, seed=rng.randrange(2**31),
    )


def _rot(points, cx, cy, deg):
    a = math.radians(deg)
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + (x - cx) * ca - (y - cy) * sa, cy + (x - cx) * sa + (y - cy) * ca) for x, y in points]


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape in ("circle", "moon"):
        return None
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "star":
        pts = []
        for i in range(10):
            rr = r if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.6, cy), (cx, cy + r), (cx - r * 0.6, cy)]
    if shape == "cross":
        a, b = r, r * 0.34
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b), (cx + b, cy + b),
                (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b)]
    raise ValueError(f"unknown shape {shape!r}")


_INK = (25, 25, 25)


def _pattern_layer(size: int, colour, pattern: str, cx: float, cy: float, r: float, rotation: float) -> Image.Image:
    """The fill of an object: its colour with stripes or spots in dark ink, rotated with the object."""
    layer = Image.new("RGB", (size, size), colour)
    if pattern == "plain":
        return layer
    d = ImageDraw.Draw(layer)
    if pattern == "striped":
        period = r * 0.55
        k = -4
        while k <= 4:
            y0 = cy + k * period - period * 0.22
            poly = [(cx - 2 * r, y0), (cx + 2 * r, y0), (cx + 2 * r, y0 + period * 0.44), (cx - 2 * r, y0 + period * 0.44)]
            d.polygon(_rot(poly, cx, cy, rotation), fill=_INK)
            k += 1
    elif pattern == "spotted":
        rr = r * 0.17
        for ox, oy in ((-0.4, -0.25), (0.35, -0.3), (0.0, 0.15), (-0.3, 0.5), (0.4, 0.45)):
            (x, y), = _rot([(cx + ox * r, cy + oy * r)], cx, cy, rotation)
            d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=_INK)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return layer


def _shape_mask(size: int, shape: str, cx: float, cy: float, r: float, rotation: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    poly = _shape_polygon(shape, cx, cy, r)
    if poly is None:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        if shape == "moon":  # a crescent: the disc minus a shifted disc
            (x, y), = _rot([(cx + 0.5 * r, cy - 0.2 * r)], cx, cy, rotation)
            rr = 0.82 * r
            d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=0)
    else:
        d.polygon(_rot(poly, cx, cy, rotation), fill=255)
    return mask


def _item_mask(size: int, kind: str, cx: float, cy: float, r: float, rotation: float) -> Image.Image:
    """Simple icons, drawn upright in a box of half-size r and rotated."""
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)

    def poly(points):
        d.polygon(_rot(points, cx, cy, rotation), fill=255)

    def rect(x0, y0, x1, y1):
        poly([(cx + x0 * r, cy + y0 * r), (cx + x1 * r, cy + y0 * r), (cx + x1 * r, cy + y1 * r), (cx + x0 * r, cy + y1 * r)])

    def ring(ox, oy, rad, width):
        (x, y), = _rot([(cx + ox * r, cy + oy * r)], cx, cy, rotation)
        d.ellipse([x - rad * r, y - rad * r, x + rad * r, y + rad * r], outline=255, width=int(width * r))

    if kind == "mug":
        rect(-0.75, -0.7, 0.35, 0.85)
        ring(0.52, 0.05, 0.36, 0.16)
    elif kind == "hat":
        rect(-0.95, 0.35, 0.95, 0.6)
        poly([(cx - 0.55 * r, cy + 0.36 * r), (cx - 0.42 * r, cy - 0.75 * r), (cx + 0.42 * r, cy - 0.75 * r), (cx + 0.55 * r, cy + 0.36 * r)])
    elif kind == "key":
        ring(-0.5, 0.0, 0.42, 0.2)
        rect(-0.12, -0.12, 0.95, 0.12)
        rect(0.5, 0.1, 0.64, 0.45)
        rect(0.78, 0.1, 0.92, 0.38)
    elif kind == "flag":
        rect(-0.85, -0.95, -0.68, 0.95)
        rect(-0.7, -0.9, 0.9, 0.15)
    elif kind == "lamp":
        poly([(cx - 0.35 * r, cy - 0.9 * r), (cx + 0.35 * r, cy - 0.9 * r), (cx + 0.75 * r, cy - 0.15 * r), (cx - 0.75 * r, cy - 0.15 * r)])
        rect(-0.08, -0.2, 0.08, 0.7)
        rect(-0.55, 0.7, 0.55, 0.9)
    elif kind == "bag":
        rect(-0.8, -0.3, 0.8, 0.9)
        ring(0.0, -0.35, 0.45, 0.14)
    else:
        raise ValueError(f"unknown item kind {kind!r}")
    return mask


def _arrows_mask(size: int, count: str, direction: str, cx: float, cy: float, r: float, rotation: float) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    n = COUNTS.index(count) + 1
    turn = {"up": 0.0, "right": 90.0, "down": 180.0, "left": 270.0}[direction] + rotation
    spacing = 0.62 * r
    half = 0.26 * r  # half width of the arrow head
    for i in range(n):
        ox = cx + (i - (n - 1) / 2) * spacing
        pts = [
            (ox, cy - r * 0.95),  # tip
            (ox + half, cy - r * 0.3),
            (ox + half * 0.42, cy - r * 0.3),
            (ox + half * 0.42, cy + r * 0.95),
            (ox - half * 0.42, cy + r * 0.95),
            (ox - half * 0.42, cy - r * 0.3),
            (ox - half, cy - r * 0.3),
        ]
        d.polygon(_rot(pts, cx, cy, turn), fill=255)
    return mask


def render(look: tuple, style: RenderStyle, px: int = IMAGE_PX) -> Image.Image:
    """Draw ``look`` = ("shape", shape, colour, pattern[, plate]) | ("arrows", count, colour, direction)
    | ("item", kind, colour, pattern) in ``style``; an RGB image of ``px`` x ``px``."""
    size = px * _SS
    canvas = Image.new("RGB", (size, size), style.background)
    if style.background2 is not None:
        top = np.array(style.background, dtype=np.float32)
        bottom = np.array(style.background2, dtype=np.float32)
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
        grad = (top * (1 - t) + bottom * t).astype(np.uint8)
        canvas = Image.fromarray(np.repeat(grad, size, axis=1), "RGB")
    if style.frame is not None:
        d = ImageDraw.Draw(canvas)
        m = int(size * 0.06)
        d.rectangle([m, m, size - 1 - m, size - 1 - m], outline=style.frame, width=int(size * 0.05))
    cx = size * (0.5 + style.dx)
    cy = size * (0.5 + style.dy)
    r = size * style.scale / 2
    kind = look[0]
    if kind == "shape":
        _, shape, colour, pattern = look[:4]
        if len(look) == 5:  # the lifelong world's plate: a square behind the shape, turned with it
            h = r * 0.92
            plate = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
            ImageDraw.Draw(canvas).polygon(_rot(plate, cx, cy, style.rotation), fill=COLOURS[look[4]])
        mask = _shape_mask(size, shape, cx, cy, r, style.rotation)
        fill = _pattern_layer(size, COLOURS[colour], pattern, cx, cy, r, style.rotation)
    elif kind == "item":
        _, item_kind, colour, pattern = look
        mask = _item_mask(size, item_kind, cx, cy, r, style.rotation)
        fill = _pattern_layer(size, COLOURS[colour], pattern, cx, cy, r, style.rotation + 35.0)
    elif kind == "arrows":
        _, count, colour, direction = look
        mask = _arrows_mask(size, count, direction, cx, cy, r, style.rotation)
        fill = Image.new("RGB", (size, size), COLOURS[colour])
    else:
        raise ValueError(f"unknown look {look!r}")
    canvas.paste(fill, (0, 0), mask)
    img = canvas.resize((px, px), Image.LANCZOS)
    if style.noise > 0:
        arr = np.asarray(img, dtype=np.float32)
        noise = np.random.default_rng(style.seed).normal(0.0, style.noise, arr.shape).astype(np.float32)
        img = Image.fromarray(np.clip(arr + noise, 0, 255).round().astype(np.uint8), "RGB")
    return img


def with_seed(style: RenderStyle, seed: int) -> RenderStyle:
    return replace(style, seed=seed)
