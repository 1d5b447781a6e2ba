"""In-context knowledge editing (IKE): no weight changes, a prompt prefix of demonstrations.

The pool holds three demonstrations per record of the train split (copy, paraphrase and a
locality neighbour). The ``k`` most similar to the query ``New Fact: {prompt} {target}\\nPrompt:
{prompt} {target}`` come first (most similar first, as a semantic search ranks them), then the
current fact as a last demonstration, then ``New Fact: {prompt} {target}\\nPrompt: ``, so that the
post-edit input ``prefix + question`` is the reference query
``New Fact: {src} {alt}\\nPrompt: {question}``. Texts come from templates/ike/*.jinja.

Unlike the reference, which rebuilds the retriever for every case, the pool and its vectors are
built once per train file. The embedding retriever needs sentence-transformers and the model in
the local cache (or a local path); ``retriever="auto"`` falls back to a TF-IDF retriever.
"""

from __future__ import annotations

import json
import logging
import math
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from editors.base import ConfigError, EditHandle, Editor, EditorConfig, EditRequest
from mmke_eval.adapters.base import Query
from mmke_eval.templates import render

logger = logging.getLogger(__name__)

RETRIEVERS = ("auto", "embedding", "lexical")
DEMONSTRATION = "ike/demonstration.jinja"
QUERY = "ike/query.jinja"


@dataclass
class IKEConfig(EditorConfig):
    k: int = field(default=25, metadata={"help": "demonstrations retrieved from the train split (MMKE 25, VLKEB 32)"})
    retriever: str = field(default="auto", metadata={"help": "embedding | lexical | auto (embedding, else lexical)"})
    embedding_model: str = field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        metadata={"help": "sentence-transformers model name (local cache) or local path"},
    )
    reserve_tokens: int = field(
        default=64,
        metadata={"help": "tokens kept free for probe questions/answers longer than the edit prompt"},
    )

    def __post_init__(self):
        if self.k < 0:
            raise ConfigError("editor 'ike': k must be >= 0")
        if self.retriever not in RETRIEVERS:
            raise ConfigError(f"editor 'ike': retriever must be one of {RETRIEVERS}, not {self.retriever!r}")
        if self.reserve_tokens < 0:
            raise ConfigError("editor 'ike': reserve_tokens must be >= 0")


# -- retrievers --------------------------------------------------------------------------------
def _ranked(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the ``k`` best scores, best first; ties go to the lower index (deterministic)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:k].tolist()


class LexicalRetriever:
    """TF-IDF cosine similarity over lower-case word tokens (smoothed idf, L2-normalised rows)."""

    name = "lexical"

    def __init__(self, texts: list[str]):
        self.n = len(texts)
        counts = [Counter(self.tokenize(t)) for t in texts]
        df = Counter(term for c in counts for term in c)
        # idf = ln((1 + N) / (1 + df)) + 1: never zero, so terms present everywhere still count a little.
        self.idf = {term: math.log((1 + self.n) / (1 + d)) + 1.0 for term, d in df.items()}
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for doc, c in enumerate(counts):
            weights = {term: tf * self.idf[term] for term, tf in c.items()}
            norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
            for term, w in weights.items():
                docs, values = postings.setdefault(term, ([], []))
                docs.append(doc)
                values.append(w / norm)
        # An inverted index: scoring a query touches only the documents sharing a term with it.
        self.postings = {t: (np.asarray(d, dtype=np.int64), np.asarray(v)) for t, (d, v) in postings.items()}

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    def scores(self, query: str) -> np.ndarray:
        weights = {t: tf * self.idf[t] for t, tf in Counter(self.tokenize(query)).items() if t in self.idf}
        norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        scores = np.zeros(self.n)
        for term, w in weights.items():
            docs, values = self.postings[term]
            scores[docs] += values * (w / norm)
        return scores

    def top_k(self, query: str, k: int) -> list[int]:
        return _ranked(self.scores(query), k)


class EmbeddingRetriever:
    """Cosine similarity of sentence-transformers embeddings (normalised, dot product)."""

    name = "embedding"

    def __init__(self, texts: list[str], model: Any):
        self.model = model
        self.vectors = self._encode(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    def scores(self, query: str) -> np.ndarray:
        return self.vectors @ self._encode([query])[0]

    def top_k(self, query: str, k: int) -> list[int]:
        return _ranked(self.scores(query), k)


def load_embedding_model(name: str):
    """The sentence-transformers model; raises when it is not installed or not available offline."""
    _check_available_offline(name)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name)


def _check_available_offline(name: str) -> None:
    """Fail fast (before importing sentence-transformers, ~5 s) for a Hub model that cannot be loaded.

    Without this, an uncached model on a machine without network costs a minute of retries per file.
    """
    if Path(name).expanduser().is_dir():
        return
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, not a Hub id
        raise OSError(f"embedding model folder {name!r} does not exist")
    import huggingface_hub

    if isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str):
        return
    if huggingface_hub.is_offline_mode():
        raise OSError(f"{name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise OSError(f"{name!r} is not in the local Hugging Face cache and the Hub cannot be reached")


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


# -- the demonstration pool --------------------------------------------------------------------
def demonstration(src: str, alt: str, question: str, answer: str) -> str:
    return render(DEMONSTRATION, src=src, alt=alt, question=question, answer=answer)


def query_text(src: str, alt: str, question: str) -> str:
    return render(QUERY, src=src, alt=alt, question=question)


def read_pool(train_file: str) -> list[str]:
    """Three demonstrations per train record: copy, paraphrase, locality neighbour."""
    path = Path(train_file)
    if not train_file or not path.is_file():
        raise FileNotFoundError(f"IKE: train split file {train_file!r} not found (EditRequest.train_file)")
    with open(path) as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise ValueError(f"IKE: train split file {train_file!r} is not a JSON list of records")
    pool = []
    for r in records:
        src, alt = r.get("src"), r.get("alt")
        if not src or not alt:
            continue
        for question, answer in ((src, alt), (r.get("rephrase"), alt), (r.get("loc"), r.get("loc_ans"))):
            if question and answer:
                pool.append(demonstration(src, alt, question, answer))
    if not pool:
        raise ValueError(f"IKE: train split file {train_file!r} holds no usable record (needs src, alt)")
    return pool


@dataclass
class _Pool:
    sentences: list[str]
    retriever: Any


class IKEEditor(Editor):
    """Retrieve demonstrations for the edit and hand them back as a prompt prefix."""

    name = "ike"
    config_class = IKEConfig
    reference_locality_span = "answer"

    def __init__(self, config: IKEConfig | None = None):
        super().__init__(config)
        self._pools: dict[str, _Pool] = {}
        self._embedding_model = None
        self._embedding_failed = False
        self.retriever_used: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "retriever_used": self.retriever_used or "none yet (no edit applied)",
            "reference_locality_span": self.reference_locality_span,
        }

    def apply(self, adapter, request: EditRequest) -> EditHandle:
        started = time.perf_counter()
        pool = self._pool(request.train_file)
        p, t = request.prompt, request.target
        hits = pool.retriever.top_k(query_text(p, t, f"{p} {t}"), self.config.k)
        demos = [pool.sentences[i] for i in hits]
        ending = demonstration(p, t, p, t) + query_text(p, t, "")
        kept, budget = self._fit(adapter, request, demos, ending)
        handle = EditHandle(editor=self.name, prefix="".join(demos[:kept]) + ending)
        handle.stats = {
            "retriever": pool.retriever.name,
            "pool_size": len(pool.sentences),
            "k": self.config.k,
            "n_demonstrations": kept,
            "dropped": len(demos) - kept,
            "demonstration_ids": hits[:kept],
            "token_budget": budget,
            "seconds": round(time.perf_counter() - started, 4),
        }
        return handle

    def restore(self, adapter, handle: EditHandle) -> None:
        # No weight changed; forgetting the prefix is the whole restore.
        handle.prefix = ""
        handle.saved.clear()

    # -- retrieval ----------------------------------------------------------------------------
    def _pool(self, train_file: str) -> _Pool:
        if not train_file:
            raise ValueError("IKE: the edit request has no train_file (the train split the demonstrations come from)")
        key = str(Path(train_file).resolve())
        if key not in self._pools:
            sentences = read_pool(train_file)
            self._pools[key] = _Pool(sentences, self._retriever(sentences))
            self.retriever_used = self._pools[key].retriever.name
            logger.info("IKE: %d demonstrations from %s, %s retriever", len(sentences), train_file, self.retriever_used)
        return self._pools[key]

    def _retriever(self, sentences: list[str]):
        if self.config.retriever == "lexical" or self._embedding_failed:
            return LexicalRetriever(sentences)
        if self._embedding_model is None:
            try:
                self._embedding_model = load_embedding_model(self.config.embedding_model)
            except Exception as err:  # not installed, not cached offline, bad path
                if self.config.retriever == "embedding":
                    raise RuntimeError(f"IKE: cannot load embedding model {self.config.embedding_model!r}: {err}") from err
                self._embedding_failed = True  # "auto": warn once, not once per train file
                logger.warning(
                    "IKE: embedding model %r unavailable (%s: %s); using the lexical TF-IDF retriever instead",
                    self.config.embedding_model, type(err).__name__, str(err).splitlines()[0] if str(err) else "",
                )
                return LexicalRetriever(sentences)
        return EmbeddingRetriever(sentences, self._embedding_model)

    # -- length budget ------------------------------------------------------------------------
    def _fit(self, adapter, request: EditRequest, demos: list[str], ending: str) -> tuple[int, int]:
        """How many demonstrations fit the model, dropping the least similar first.

        The budget keeps room for the image and the longer of the edit and rephrase probes plus
        ``reserve_tokens``.
        """
        count = adapter.count_tokens
        budget = int(adapter.max_length) - self.config.reserve_tokens
        probes = [q for q in (request.prompt, request.rephrase_prompt) if q] or [""]

        def too_long(n: int) -> bool:
            prefix = "".join(demos[:n]) + ending
            return max(count(Query(q, request.image, request.target, prefix)) for q in probes) > budget

        # Longer with every demonstration, so bisect for the largest count that fits.
        lo, hi = 0, len(demos)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if too_long(mid):
                hi = mid - 1
            else:
                lo = mid
        return lo, budget
