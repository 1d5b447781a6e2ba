"""Reuse of a shared input prefix's key/value cache: IKE's demonstrations are computed once per image.

An IKE probe reads ``[BOS] [image] demonstrations + question [+ answer]``: about 2k tokens of
which all but the last few dozen are the same for every probe of the case that shows the same
image, and for both its teacher-forced pass and its generation. Without reuse each of the 18
passes of a case (9 probes x 2) recomputes them; with it, each (image, prefix) pair is computed
once, and each probe runs only its own tokens on top of the cached keys and values, one row at a
time (so no padded batches of 2k-token rows either).

An entry holds the token ids it covers (the key, with a digest of the image's pixels), the
model's cache for them, and the logits at the covered positions a probe is scored on (the BOS and
image positions: locality compares every position but the prefix's). A probe uses an entry only
when its own token ids start with the entry's ids exactly, its image is the same, and the entry
holds the logits it needs; otherwise a new entry is made, or the probe takes the plain path.
Results equal the plain path's up to floating-point rounding (attention over the same keys with
another query length); the tests check the scores match.

The cache lives only inside ``ModelAdapter.reusing_prefixes()``, which the evaluator opens around
the post-edit probes of one in-context edit: no weight changes inside it, so an entry can never be
served for other weights. Entries are evicted least recently used first, beyond a memory budget.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

# Shorter shared parts are not worth an extra model call.
MIN_SHARED_TOKENS = 64
# The entry stops this many tokens before the prefix's end: where the prefix meets the question,
# a tokenizer may merge characters across the boundary, so the last prefix tokens can differ
# between probes with different questions.
BOUNDARY_MARGIN = 4
# Memory for entries: a quarter of the weights' bytes, at least this much.
MIN_BUDGET_BYTES = 256 * 2**20


def image_digest(image: Any) -> str:
    """Identity of an image's pixels ("" for none): equal images share an entry, whatever object holds them."""
    if image is None:
        return ""
    digest = hashlib.sha1(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def cache_bytes(cache: Any) -> int:
    """Bytes held by a transformers cache's keys and values."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def crop_to(cache: Any, length: int) -> None:
    """Drop what a probe added to ``cache`` after its first ``length`` positions. (``crop`` with
    a negative count removes that many: the one spelling transformers 4 and 5 both accept.)"""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


@dataclass
class PrefixEntry:
    image: str  # image_digest of the image the ids show ("" for none)
    ids: tuple[int, ...]  # the token ids the cache covers
    cache: Any  # the model's key/value cache of ``ids`` (cropped back to them after every use)
    logits: dict[int, torch.Tensor] = field(default_factory=dict)  # position -> logits row, for scored positions
    nbytes: int = 0

    def serves(self, image: str, ids: list[int], needed: list[int], limit: int) -> bool:
        """Whether a probe with token ids ``ids`` that needs the logits at ``needed`` can use this
        entry and still run at least its tokens from ``limit`` on itself."""
        n = len(self.ids)
        return (self.image == image and n <= limit and tuple(ids[:n]) == self.ids
                and all(p in self.logits for p in needed if p < n))


class PrefixCache:
    """The entries of one ``reusing_prefixes()`` block, least recently used first."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.entries: OrderedDict[int, PrefixEntry] = OrderedDict()
        self.images: dict[str, tuple[dict, int]] = {}  # image digest -> (processed image inputs, image tokens)
        self.made = 0  # entries computed
        self.reused = 0  # probes served by an entry

    def find(self, image: str, ids: list[int], needed: list[int], limit: int) -> PrefixEntry | None:
        for key, entry in reversed(self.entries.items()):
            if entry.serves(image, ids, needed, limit):
                self.entries.move_to_end(key)
                self.reused += 1
                return entry
        return None

    def add(self, entry: PrefixEntry) -> None:
        entry.nbytes = cache_bytes(entry.cache) + sum(t.numel() * t.element_size() for t in entry.logits.values())
        self.entries[id(entry)] = entry
        self.made += 1
        self.reused += 1
        while len(self.entries) > 1 and sum(e.nbytes for e in self.entries.values()) > self.budget_bytes:
            self.entries.popitem(last=False)
