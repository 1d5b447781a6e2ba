"""serac_ref (editors/serac_reference.py) and its converter (editors/serac_reference_checkpoint.py): a reference
SERAC_MULTI file, written here in the trainer's layout with random values for a tiny LLaVA, becomes a
checkpoint whose editor computes the reference's soft mixture.

The tiny stand-ins: ``cls_name`` is a folder holding a tiny DistilBERT config and a WordPiece
tokenizer built from a vocab written here; ``small_name`` a tiny LlamaForCausalLM of the base
model's text width. The reference saves the counterfactual model's trained layer 31 of Vicuna-7B;
the tiny model's last layer is 1, and the file holds layer 1's tensors (the converter takes every
``replacement.*`` tensor the file holds, whatever its layer). For BLIP-2 the file holds all of a
tiny OPT (the reference's OPT-125m) and the projection from the Q-Former's outputs into it, of
another width than the base model's. The expected values are computed here by hand from the
documented behaviour, not with the editor's helpers.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from dataclasses import replace

import pytest
import torch
from PIL import Image

from editors.base import ConfigError, EditRequest
from editors.learned import META_FILE, WEIGHTS_FILE
from editors.serac_reference import SERACReferenceEditor, mixture_log_probs
from mmke_eval import registry
from mmke_eval.adapters.base import Query
from mmke_eval.adapters.llava_hf import LlavaHFAdapter
from mmke_eval.reference.convert import convert
from mmke_eval.reference.safe_pickle import ConversionError

PROMPT = "What is shown in the image?"
TARGET = "A red circle"
WORDS = ("what is shown in the image a red circle who painted this picture where does person live paris blue square "
         "which building castle church star").split()
# The file's scale buffer (1 in the reference): the tiny random DistilBERT's CLS vectors lie close together
# (squared distances ~5e-4), so a large scale spreads the similarities over (0, 1).
SCALE = 1500.0


def write_cls_folder(path):
    """A DistilBERT config and a WordPiece tokenizer (lowercasing, as distilbert-base-uncased)."""
    from transformers import BertTokenizer, DistilBertConfig

    letters = list("abcdefghijklmnopqrstuvwxyz0123456789?.,'")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *letters, *(f"##{c}" for c in letters)]
    path.mkdir(parents=True, exist_ok=True)
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    config = DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    config.save_pretrained(path)
    return path, config


def small_lm_config(tokenizer, hidden=64):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)


def seeded(build, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@pytest.fixture(scope="module")
def tiny():
    from mmke_eval.testing.tiny_vlms import build_tiny_llava15

    model, processor = build_tiny_llava15()
    return LlavaHFAdapter(model.eval(), processor)


@pytest.fixture(scope="module")
def names(tiny, tmp_path_factory):
    """(cls_name folder, small_name folder)."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("serac_names")
    cls_dir, _ = write_cls_folder(root / "distilbert")
    small = seeded(lambda: LlamaForCausalLM(small_lm_config(tiny.tokenizer)), 11)
    small.save_pretrained(root / "vicuna")
    return str(cls_dir), str(root / "vicuna")


def reference_state(names, seed=5) -> dict:
    """The SERAC wrapper's state dict as the reference saves it: classifier.*, scale, the
    counterfactual model's trained (last) layer under replacement.*, model_config."""
    from transformers import AutoConfig, DistilBertModel, LlamaForCausalLM

    cls_dir, small_dir = names
    classifier = seeded(lambda: DistilBertModel(AutoConfig.from_pretrained(cls_dir)), seed)
    trained = seeded(lambda: LlamaForCausalLM(AutoConfig.from_pretrained(small_dir)), seed + 1)
    sd = {f"classifier.{k}": v for k, v in classifier.state_dict().items()}
    sd.update({f"replacement.{k}": v for k, v in trained.state_dict().items() if ".layers.1." in k})
    sd["scale"] = torch.tensor(SCALE)
    return sd


def write_reference(path, names, mutate=None, seed=5, sd=None) -> dict:
    """torch.save of the EasyEdit trainer's dict (``sd``, default the LLaVA one), model_config an
    instance of a class that is not importable when the file is read (the reference's LlavaConfig)."""
    sd = reference_state(names, seed) if sd is None else sd
    if mutate:
        sd = mutate(sd)
    module = types.ModuleType("llava_reference_config")
    config_cls = type("LlavaConfig", (), {"__module__": module.__name__})
    module.LlavaConfig = config_cls
    sys.modules[module.__name__] = module
    try:
        config = config_cls()
        config.__dict__.update({"_name_or_path": "liuhaotian/llava-v1.5-7b", "hidden_size": 4096})
        torch.save({"model": {**sd, "model_config": config}, "opt": {}, "lr_opt": None, "val_stats": {"loss/total_edit_val": 0.5},
                    "start_time": "2024-06-01_12-00-00", "elapsed_time": 10.0, "step": 7000}, path)
    finally:
        del sys.modules[module.__name__]
    return sd


@pytest.fixture(scope="module")
def converted(tiny, names, tmp_path_factory):
    """(reference file, its state dict, the converted checkpoint folder)."""
    root = tmp_path_factory.mktemp("serac_ckpt")
    sd = write_reference(root / "serac_llava-step_7000.pt", names)
    cls_dir, small_dir = names
    editor = registry.build_editor("serac_ref", overrides={"cls_name": cls_dir, "small_name": small_dir})
    convert(editor, tiny, root / "serac_llava-step_7000.pt", root / "ckpt")
    return root / "serac_llava-step_7000.pt", sd, root / "ckpt"


def loaded(tiny, converted, **overrides) -> SERACReferenceEditor:
    editor = registry.build_editor("serac_ref", family=tiny.family, overrides={"checkpoint": str(converted[2]), **overrides})
    editor.ensure_ready(tiny)
    return editor


def image(color=(230, 30, 30)):
    return Image.new("RGB", (48, 40), color)


def edit(case="c0", prompt=PROMPT, target=TARGET):
    return EditRequest(case_id=case, prompt=prompt, target=target, image=image())


def same_results(a, b) -> bool:
    return all(x.token_acc == y.token_acc or (x.token_acc != x.token_acc and y.token_acc != y.token_acc) for x, y in zip(a, b)) \
        and all(x.answer_ids == y.answer_ids and x.predicted_ids == y.predicted_ids and torch.equal(x.topk, y.topk)
                and x.answer_positions == y.answer_positions for x, y in zip(a, b)) and len(a) == len(b)


# -- conversion ---------------------------------------------------------------------------------------------
def test_conversion_round_trips_the_tensors_and_records_the_source(tiny, names, converted):
    from safetensors.torch import load_file

    path, sd, ckpt = converted
    tensors = load_file(str(ckpt / WEIGHTS_FILE))
    assert set(tensors) == set(sd)  # model_config left out, nothing added
    assert all(torch.equal(tensors[k], sd[k]) for k in sd)
    meta = json.loads((ckpt / META_FILE).read_text())
    conv = meta["converted_from"]
    assert meta["editor"] == "serac_ref" and meta["config"] == {"cls_name": names[0], "small_name": names[1]}
    assert conv["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and conv["step"] == 7000
    assert conv["replacement_layers"] == [1] and conv["scale"] == pytest.approx(SCALE)
    assert conv["model_config"]["class"].endswith("LlavaConfig")
    assert meta["base_model"]["fingerprint"] and meta["base_model"]["class"] == "LlavaForConditionalGeneration"

    # Loaded: the classifier is the file's; the counterfactual model is small_name's but for the file's layer.
    from transformers import LlamaForCausalLM

    editor = loaded(tiny, converted)
    assert editor.cls_name == names[0] and editor.small_name == names[1] and editor.scale == pytest.approx(SCALE)
    assert all(torch.equal(v, sd[f"classifier.{k}"]) for k, v in editor.classifier.state_dict().items())
    small = LlamaForCausalLM.from_pretrained(names[1]).state_dict()
    for k, v in editor.replacement.state_dict().items():
        assert torch.equal(v, sd[f"replacement.{k}"] if f"replacement.{k}" in sd else small[k]), k
    assert editor.describe()["checkpoint_info"]["converted_from"]["sha256"] == conv["sha256"]


def test_files_that_do_not_fit_are_refused_naming_the_key(tiny, names, tmp_path):
    cls_dir, small_dir = names
    editor = registry.build_editor("serac_ref", overrides={"cls_name": cls_dir, "small_name": small_dir})

    def attempt(mutate, name):
        write_reference(tmp_path / name, names, mutate)
        with pytest.raises(ConversionError) as err:
            convert(editor, tiny, tmp_path / name, tmp_path / f"out_{name}")
        assert name in str(err.value) and not (tmp_path / f"out_{name}").exists()
        return str(err.value)

    def reshape(sd):
        sd["replacement.model.layers.1.mlp.up_proj.weight"] = torch.zeros(100, 64)
        return sd

    msg = attempt(reshape, "shape.pt")
    assert "'replacement.model.layers.1.mlp.up_proj.weight' has shape [100, 64]" in msg and "[96, 64]" in msg
    msg = attempt(lambda sd: {k: v for k, v in sd.items() if k != "classifier.transformer.layer.1.ffn.lin1.weight"}, "missing.pt")
    assert "missing key 'classifier.transformer.layer.1.ffn.lin1.weight'" in msg
    msg = attempt(lambda sd: {**sd, "replacement.model.layers.7.mlp.up_proj.weight": torch.zeros(96, 64)}, "layer.pt")
    assert "'replacement.model.layers.7.mlp.up_proj.weight' is not a tensor of small_name=" in msg
    msg = attempt(lambda sd: {**sd, "language_projection.weight": torch.zeros(64, 32)}, "unexpected.pt")
    assert "unexpected key 'language_projection.weight'" in msg
    msg = attempt(lambda sd: {k: v for k, v in sd.items() if k != "scale"}, "noscale.pt")
    assert "missing key 'scale'" in msg
    msg = attempt(lambda sd: {k: v for k, v in sd.items() if not k.startswith("replacement.")}, "noreplacement.pt")
    assert "no 'replacement.*' tensor" in msg
    # Buffers older transformers saved (rebuilt from the config) are left out, and listed.
    write_reference(tmp_path / "buffers.pt", names, lambda sd: {**sd, "classifier.embeddings.position_ids": torch.arange(64)[None],
                                                               "replacement.model.layers.1.self_attn.rotary_emb.inv_freq": torch.ones(8)})
    meta = convert(editor, tiny, tmp_path / "buffers.pt", tmp_path / "out_buffers")
    assert len(meta["converted_from"]["ignored_keys"]["rebuilt_buffers"]) == 2
    # A MEND file is not a SERAC file.
    torch.save({"model": {"edit_lrs": torch.zeros(4)}, "step": 1}, tmp_path / "mend.pt")
    with pytest.raises(ConversionError, match="no 'classifier.\\*' key in 'model': not a SERAC checkpoint"):
        convert(editor, tiny, tmp_path / "mend.pt", tmp_path / "out_mend")


def test_small_name_of_another_width_is_refused(tiny, names, tmp_path):
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(small_lm_config(tiny.tokenizer, hidden=32)).save_pretrained(tmp_path / "narrow")
    editor = registry.build_editor("serac_ref", overrides={"cls_name": names[0], "small_name": str(tmp_path / "narrow")})
    write_reference(tmp_path / "ref.pt", names)
    with pytest.raises(ConversionError, match="narrow embeds tokens in 32 dimensions; this model's image features have 64"):
        convert(editor, tiny, tmp_path / "ref.pt", tmp_path / "out")


def test_a_checkpoint_is_refused_for_another_base_model_or_missing_names(tiny, converted):
    projector = tiny.model.model.multi_modal_projector.linear_1.weight
    saved = projector.detach().clone()
    try:
        with torch.no_grad():
            projector.mul_(2.0)  # another fine-tune of the same architecture
        with pytest.raises(Exception, match="converted for another base model"):
            loaded(tiny, converted)
    finally:
        with torch.no_grad():
            projector.copy_(saved)
    with pytest.raises(ConfigError, match="cls_name=/no/such/distilbert: cannot load it.*--editor_args cls_name=PATH"):
        loaded(tiny, converted, cls_name="/no/such/distilbert")


def test_other_models_are_refused_naming_them():
    from mmke_eval.testing.tiny_vlms import build_tiny_llava_next, build_tiny_minigpt4

    model, processor = build_tiny_minigpt4()
    editor = registry.build_editor("serac_ref", overrides={"checkpoint": "/nonexistent"})
    with pytest.raises(ConfigError, match=f"LLaVA-1.5 .*BLIP-2 .*not {type(model).__name__} .*--editor serac"):
        editor.ensure_ready(registry.adapter_class("minigpt4")(model.eval(), processor))
    model, processor = build_tiny_llava_next()  # llava_hf, but not LLaVA-1.5's layout
    with pytest.raises(ConfigError, match="LlavaNextForConditionalGeneration \\('llava_next'\\)"):
        editor.ensure_ready(LlavaHFAdapter(model.eval(), processor))
    with pytest.raises(ConfigError, match="cls_input"):
        registry.build_editor("serac_ref", overrides={"cls_input": "answer"})
    with pytest.raises(ConfigError, match="needs a converted reference checkpoint"):
        registry.build_editor("serac_ref").ensure_ready(None)


def test_train_editor_refuses_it_and_points_to_serac(tmp_path, capsys):
    from mmke_eval import cli

    assert cli.main(["train-editor", "--editor", "serac_ref", "--output_path", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "not trained here" in err and "train-editor --editor serac`" in err


# -- what it computes ------------------------------------------------------------------------------------------
def cls_by_hand(names, sd, texts):
    from transformers import AutoConfig, AutoTokenizer, DistilBertModel

    model = DistilBertModel(AutoConfig.from_pretrained(names[0])).eval()
    model.load_state_dict({k[len("classifier."):]: v for k, v in sd.items() if k.startswith("classifier.")})
    tokens = AutoTokenizer.from_pretrained(names[0])(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state[:, 0]


def test_similarity_is_exp_of_minus_scale_times_squared_distance_of_cls_embeddings(tiny, names, converted):
    editor = loaded(tiny, converted)
    editor.apply(tiny, edit())
    editor.apply(tiny, edit("c1", "Who painted this picture?", "Monet"))
    probes = [Query("Which building is this?", None, "a castle"), Query("Where does this person live?", image(), "Paris")]
    found = editor.scope(probes)
    emb = cls_by_hand(names, converted[1], [PROMPT, "Who painted this picture?", *[q.prompt for q in probes]])
    for (entry, s), q in zip(found, emb[2:]):
        sims = torch.exp(-SCALE * ((emb[:2] - q) ** 2).sum(-1))
        assert s == pytest.approx(float(sims.max()), rel=1e-4) and 0 < s < 1
        assert entry is editor.memory[int(sims.argmax())]
    assert editor.scope([Query(PROMPT, None, "x")])[0][1] == pytest.approx(1.0)  # its own prompt: distance 0


def test_cls_input_prompt_never_shows_the_answer_and_reference_does(tiny, converted):
    for mode in ("prompt", "reference"):
        editor = loaded(tiny, converted, cls_input=mode)
        seen = []
        embed = editor.embed
        editor.embed = lambda texts: (seen.extend(texts), embed(texts))[1]  # records what the classifier reads
        handle = editor.apply(tiny, edit(target="A red circle today"))
        handle.responder.teacher_forced([Query("Which building is this?", image(), "zanzibarish")], k=3)
        if mode == "prompt":
            assert seen == [PROMPT, "Which building is this?"]
        else:  # the edit text minus its last word, then "[SEP]" as text; the probe with its answer (reference pitfall 4)
            assert seen == [f"{PROMPT} A red circle[SEP]", "Which building is this? zanzibarish"]
        assert editor.describe()["cls_input"] == mode


def test_cls_input_reference_key_ends_with_two_sep_tokens_as_the_reference_tokenises_it(tiny, converted):
    """The reference appends the classifier tokenizer's sep_token to the key text before tokenising
    (SERAC.py build_cls_cache_inputs), so the classifier reads [CLS] ... [SEP] [SEP]."""
    editor = loaded(tiny, converted, cls_input="reference")
    key = editor.key_text(edit(target="A red circle today"))
    tok = editor.cls_tokenizer
    ids = tok([key])["input_ids"][0]
    words = tok(["what is shown in the image? a red circle"], add_special_tokens=False)["input_ids"][0]
    assert ids == [tok.cls_token_id, *words, tok.sep_token_id, tok.sep_token_id]
    assert loaded(tiny, converted).key_text(edit()) == PROMPT  # cls_input=prompt: unchanged


def test_edit_then_restore_leaves_the_memory_empty_and_sequential_keeps_the_rest(tiny, converted):
    editor = loaded(tiny, converted)
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    first, second = editor.apply(tiny, edit()), editor.apply(tiny, edit("c1", "Who painted this picture?", "Monet"))
    assert [e.request.case_id for e in editor.memory] == ["c0", "c1"] and second.stats["memory"] == 2
    assert editor.memory[0].prefix == f"{PROMPT} {TARGET} "
    editor.restore(tiny, first)
    assert [e.request.case_id for e in editor.memory] == ["c1"]
    editor.restore(tiny, second)
    assert editor.memory == [] and all(torch.equal(v, before[k]) for k, v in tiny.model.state_dict().items())


def test_scope_zero_answers_bit_identically_to_the_adapter(tiny, converted):
    editor = loaded(tiny, converted)
    probes = [Query("Which building is this?", image(), "a castle"), Query("Where does this person live?", None, "Paris"),
              Query("What is shown?", image((10, 200, 10)), "a blue square")]
    base = tiny.teacher_forced(probes, k=5)
    base_text = tiny.generate(probes, max_new_tokens=4)
    handle = editor.apply(tiny, edit())
    editor.scale = 1e30  # every distance > 0 underflows: s = 0 exactly
    assert all(s == 0.0 for _, s in editor.scope(probes))
    assert same_results(handle.responder.teacher_forced(probes, k=5), base)
    assert handle.responder.generate(probes, max_new_tokens=4) == base_text
    editor.restore(tiny, handle)  # an empty memory: s = 0 as well
    assert same_results(handle.responder.teacher_forced(probes, k=5), base)


def test_memory_is_empty_between_cases_and_accumulates_in_sequential_mode(tiny, converted, mmke_fixture_root):
    from mmke_tasks.mmke.loader import load_cases
    from mmke_eval.direct import probe_requests, score_cases
    from mmke_eval.protocol import Protocol
    from mmke_eval.engine.evaluator import CaseEvaluator

    cases = load_cases(mmke_fixture_root, "entity_level", "eval")[0][:3]
    none = score_cases(tiny, registry.build_editor("none"), cases, Protocol(generate=False))
    for sequential in (False, True):
        editor = loaded(tiny, converted)
        grouped = probe_requests(cases)
        results = [None] * sum(len(g) for g in grouped)
        CaseEvaluator(tiny, editor, Protocol(generate=False, sequential=sequential)).answer_cases(grouped, results, progress=False)
        sizes = [json.loads(results[g[0].index])["edit"]["memory"] for g in grouped]
        assert sizes == ([1, 2, 3] if sequential else [1, 1, 1]) and editor.memory == []
        editor.scale = 1e30  # s = 0 for every probe that is not an edit prompt itself: the base model's numbers
        scores = score_cases(tiny, editor, cases, Protocol(generate=False, sequential=sequential))
        assert scores["t_loc"] == 100.0 and scores["i_loc"] == 100.0 and scores["port"] == none["port"]


def cf_by_hand(tiny, names, sd):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(names[1]).eval()
    model.load_state_dict({k[len("replacement."):]: v for k, v in sd.items() if k.startswith("replacement.")}, strict=False)
    return model


def test_the_mixture_equals_a_hand_computation(tiny, names, converted):
    editor = loaded(tiny, converted)
    handle = editor.apply(tiny, edit())
    probe = Query("What does the picture show?", image((20, 20, 220)), "A red circle")
    ((entry, s),) = editor.scope([probe])
    assert 0.05 < s < 0.999  # a real mixture

    # Base: the adapter's own input and the model's own image path.
    processor, model = tiny.processor, tiny.model
    enc = tiny.encoded(probe)
    pixel = processor.image_processor(images=[probe.image], return_tensors="pt")["pixel_values"]
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        base = model(input_ids=ids, pixel_values=pixel).logits[0]
        # Counterfactual: "src alt " + the probe's text, in the same layout; LLaVA's image features
        # (vision tower layer -2 without CLS, projector) at its image-token positions.
        cf_ids = torch.tensor([tiny.encoded(replace(probe, prefix=f"{PROMPT} {TARGET} ")).ids])
        vision = model.model.vision_tower(pixel, output_hidden_states=True).hidden_states[-2][:, 1:]
        features = model.model.multi_modal_projector(vision)[0]
        cf_model = cf_by_hand(tiny, names, converted[1])
        embeds = cf_model.model.embed_tokens(cf_ids.clamp(max=cf_model.config.vocab_size - 1))[0].clone()
        embeds[cf_ids[0] == tiny.image_token_id] = features
        cf = cf_model(inputs_embeds=embeds[None]).logits[0]
    cf = cf[cf.shape[0] - base.shape[0]:]  # right-aligned
    p = (1 - s) * base.softmax(-1) + s * cf.softmax(-1)

    enc_r, log_p = handle.responder.mixed_log_probs(probe, entry, s)
    assert enc_r.ids == enc.ids
    torch.testing.assert_close(log_p.exp(), p, rtol=1e-4, atol=1e-6)
    (result,) = handle.responder.teacher_forced([probe], k=4)
    answer_rows = p[enc.answer_start - 1: len(enc.ids) - 1]
    assert result.predicted_ids == answer_rows.argmax(-1).tolist() and result.answer_ids == enc.ids[enc.answer_start:]
    assert torch.equal(result.topk, log_p.topk(4, dim=-1).indices)
    assert result.token_acc == sum(a == b for a, b in zip(result.predicted_ids, result.answer_ids)) / len(result.answer_ids)

    # Greedy generation follows the mixture's argmax, token by token (here recomputed in full each step).
    asked = replace(probe, target="")
    base_ids, cf_ids, new = tiny.encoded(asked).ids, tiny.encoded(replace(asked, prefix=f"{PROMPT} {TARGET} ")).ids, []
    image_rows = torch.tensor(cf_ids) == tiny.image_token_id
    with torch.no_grad():
        for _ in range(5):
            base = model(input_ids=torch.tensor([base_ids + new]), pixel_values=pixel).logits[0, -1]
            ids = torch.tensor(cf_ids + new)
            embeds = cf_model.model.embed_tokens(ids.clamp(max=cf_model.config.vocab_size - 1)).clone()
            embeds[: len(cf_ids)][image_rows] = features
            cf = cf_model(inputs_embeds=embeds[None]).logits[0, -1]
            token = int(((1 - s) * base.softmax(-1) + s * cf.softmax(-1)).argmax())
            if token == tiny.tokenizer.eos_token_id:
                break
            new.append(token)
    assert len(new) > 1
    (text,) = handle.responder.generate([probe], max_new_tokens=5)
    assert text == tiny.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_mixture_gives_ids_the_counterfactual_vocabulary_lacks_its_base_share():
    base, cf = torch.randn(3, 10), torch.randn(3, 8)
    mixed = mixture_log_probs(base, cf, 0.25).exp()
    expected = 0.75 * base.softmax(-1) + 0.25 * torch.cat([cf.softmax(-1), torch.zeros(3, 2)], -1)
    torch.testing.assert_close(mixed, expected)
    torch.testing.assert_close(mixture_log_probs(base, cf, 1.0).exp()[:, :8], cf.softmax(-1))


# -- the command line ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_convert_and_evaluate_from_the_command_line(tiny_llava_dir, mmke_fixture_root, names, tmp_path, capsys, monkeypatch):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmke_eval import cli

    adapter = LlavaHFAdapter(LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval(),
                             AutoProcessor.from_pretrained(tiny_llava_dir))
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(small_lm_config(adapter.tokenizer)).save_pretrained(tmp_path / "vicuna")
    names = (names[0], str(tmp_path / "vicuna"))
    write_reference(tmp_path / "ref.pt", names)
    model_args = f"pretrained={tiny_llava_dir},device=cpu,device_map=cpu,dtype=float32"
    assert cli.main(["convert-checkpoint", "--editor", "serac", "--reference", str(tmp_path / "ref.pt"), "--model", "llava_hf",
                     "--model_args", model_args, "--editor_args", f"cls_name={names[0]},small_name={names[1]}",
                     "--output_path", str(tmp_path / "ckpt")]) == 0
    assert "Use it with --editor serac_ref --editor_args checkpoint=" in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = cli.main(["--tasks", "mmke_entity", "--model", "llava_hf", "--model_args", model_args, "--editor", "serac_ref",
                     "--editor_args", f"checkpoint={tmp_path / 'ckpt'},cls_input=reference", "--data", str(mmke_fixture_root),
                     "--cases", "2", "--output_path", str(out)])
    assert code == 0, capsys.readouterr().err[-3000:]
    (results_file,) = (out / "serac_ref").rglob("*_results.json")
    described = json.loads(results_file.read_text())["mmke"]["editor"]
    assert described["editor"] == "serac_ref" and described["cls_input"] == "reference"
    assert described["small_name_resolved"] == names[1] and described["checkpoint_info"]["converted_from"]["step"] == 7000
    rows = json.loads((out / "mmke_table.json").read_text())
    assert rows[0]["editor"] == "serac_ref" and 0 <= rows[0]["t_loc"] <= 100


# -- BLIP-2: OPT-125m reading the Q-Former's outputs through the file's own projection ---------------------
OPT_WIDTH = 48  # the tiny OPT-125m stand-in's width, not the base model's 64: the projection bridges them


@pytest.fixture(scope="module")
def blip2():
    from mmke_eval.adapters.blip2 import Blip2Adapter
    from mmke_eval.testing.tiny_vlms import build_tiny_blip2

    model, processor = build_tiny_blip2()
    return Blip2Adapter(model.eval(), processor)


@pytest.fixture(scope="module")
def blip2_converted(blip2, names, tmp_path_factory):
    """(the file's state dict, the converted checkpoint, the OPT-125m stand-in's folder)."""
    from transformers import OPTConfig, OPTForCausalLM

    root = tmp_path_factory.mktemp("serac_blip2")
    tok = blip2.tokenizer
    config = OPTConfig(vocab_size=len(tok), hidden_size=OPT_WIDTH, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
                       word_embed_proj_dim=OPT_WIDTH, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    seeded(lambda: OPTForCausalLM(config), 21).save_pretrained(root / "opt125m")
    qformer = blip2.model.config.qformer_config.hidden_size
    sd = {k: v for k, v in reference_state(names).items() if not k.startswith("replacement.")}
    # All of OPT-125m is trained and saved; the projection is saved with its (untrained) random values.
    sd.update({f"replacement.{k}": v.clone() for k, v in seeded(lambda: OPTForCausalLM(config), 22).state_dict().items()})
    sd["language_projection.weight"] = seeded(lambda: torch.randn(OPT_WIDTH, qformer), 23) * 0.1
    sd["language_projection.bias"] = seeded(lambda: torch.randn(OPT_WIDTH), 24) * 0.1
    write_reference(root / "serac_blip2.pt", names, sd=sd)
    editor = registry.build_editor("serac_ref", overrides={"cls_name": names[0], "small_name": str(root / "opt125m")})
    convert(editor, blip2, root / "serac_blip2.pt", root / "ckpt")
    return sd, root / "ckpt", root / "opt125m"


def test_blip2_conversion_keeps_the_projection_and_all_of_opt(blip2, names, blip2_converted, tmp_path):
    from safetensors.torch import load_file

    sd, ckpt, _ = blip2_converted
    tensors = load_file(str(ckpt / WEIGHTS_FILE))
    assert set(tensors) == set(sd) and all(torch.equal(tensors[k], sd[k]) for k in sd)
    meta = json.loads((ckpt / META_FILE).read_text())
    assert "language_projection" in meta["converted_from"]["image_path"] and meta["base_model"]["class"] == "Blip2ForConditionalGeneration"
    editor = registry.build_editor("serac_ref", family=blip2.family, overrides={"checkpoint": str(ckpt)})
    editor.ensure_ready(blip2)
    assert all(torch.equal(v, sd[f"replacement.{k}"]) for k, v in editor.replacement.state_dict().items())
    assert torch.equal(editor.projection.weight, sd["language_projection.weight"])
    # A LLaVA file (no projection) does not fit BLIP-2.
    write_reference(tmp_path / "llava.pt", names)
    bad = registry.build_editor("serac_ref", overrides={"cls_name": names[0], "small_name": str(blip2_converted[2])})
    with pytest.raises(ConversionError, match="'replacement.model.layers.1.self_attn.q_proj.weight' is not a tensor of small_name"):
        convert(bad, blip2, tmp_path / "llava.pt", tmp_path / "out")
    write_reference(tmp_path / "noproj.pt", names, sd={k: v for k, v in sd.items() if not k.startswith("language_projection.")})
    with pytest.raises(ConversionError, match="missing key 'language_projection.weight'"):
        convert(bad, blip2, tmp_path / "noproj.pt", tmp_path / "out2")


def test_blip2_mixture_equals_a_hand_computation(blip2, blip2_converted):
    from transformers import OPTForCausalLM

    sd, ckpt, opt_dir = blip2_converted
    editor = registry.build_editor("serac_ref", family=blip2.family, overrides={"checkpoint": str(ckpt)})
    editor.ensure_ready(blip2)
    handle = editor.apply(blip2, edit())
    cf_model = OPTForCausalLM.from_pretrained(opt_dir).eval()
    cf_model.load_state_dict({k[len("replacement."):]: v for k, v in sd.items() if k.startswith("replacement.")})
    model = blip2.model
    for probe in (Query("What does the picture show?", image((20, 20, 220)), "A red circle"),
                  Query("Where does this person live?", None, "Paris")):
        ((entry, s),) = editor.scope([probe])
        assert 0.05 < s < 0.999
        enc = blip2.encoded(probe)
        cf_ids = torch.tensor(blip2.encoded(replace(probe, prefix=f"{PROMPT} {TARGET} ")).ids)
        with torch.no_grad():
            embeds = cf_model.get_input_embeddings()(cf_ids.clamp(max=cf_model.config.vocab_size - 1)).clone()
            if probe.image is not None:
                pixel = blip2.processor.image_processor([probe.image], return_tensors="pt")["pixel_values"]
                base = model(input_ids=torch.tensor([enc.ids]), pixel_values=pixel).logits[0]
                queries = model.get_image_features(pixel_values=pixel, return_dict=True).qformer_outputs[0][0]
                embeds[cf_ids == blip2.image_token_id] = queries @ sd["language_projection.weight"].T + sd["language_projection.bias"]
            else:  # the language model alone, as the adapter answers a text-only query
                base = model.language_model(input_ids=torch.tensor([enc.ids])).logits[0]
            cf = cf_model(inputs_embeds=embeds[None]).logits[0]
        cf = cf[cf.shape[0] - base.shape[0]:]
        p = (1 - s) * base.softmax(-1) + s * cf.softmax(-1)
        _, log_p = handle.responder.mixed_log_probs(probe, entry, s)
        torch.testing.assert_close(log_p.exp(), p, rtol=1e-4, atol=1e-6)
        (result,) = handle.responder.teacher_forced([probe], k=3)
        assert result.predicted_ids == p[enc.answer_start - 1: len(enc.ids) - 1].argmax(-1).tolist()
        assert len(handle.responder.generate([probe], max_new_tokens=3)) == 1
    # s = 0: the adapter's own answers.
    probes = [Query("Which building is this?", image(), "a castle"), Query("Where does this person live?", None, "Paris")]
    base_results = blip2.teacher_forced(probes, k=5)
    editor.scale = 1e30
    assert same_results(handle.responder.teacher_forced(probes, k=5), base_results)
    assert handle.responder.generate(probes, max_new_tokens=3) == blip2.generate(probes, max_new_tokens=3)


def test_broken_checkpoint_files_are_refused_naming_the_file(tiny, converted, tmp_path):
    import shutil

    from editors.learned import CheckpointError

    folder = shutil.copytree(converted[2], tmp_path / "ck")
    (folder / META_FILE).write_text("{\"format\": ")
    with pytest.raises(CheckpointError, match=rf"ck/{META_FILE}: invalid JSON at line 1, column \d+"):
        loaded(tiny, (None, None, folder))
    shutil.copy(converted[2] / META_FILE, folder / META_FILE)
    (folder / WEIGHTS_FILE).write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match=rf"ck/{WEIGHTS_FILE}: not a readable safetensors file"):
        loaded(tiny, (None, None, folder))


def test_two_edit_images_make_two_memory_entries_recorded_and_both_restored(tiny, converted):
    """edit_images=2: one memory entry per edit image (the reference's memory holds text only, so both
    have the same key and prefix); the edit report says 2; restore removes both."""
    editor = loaded(tiny, converted)
    red, blue = image(), image((30, 30, 230))
    handle = editor.apply(tiny, EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=red, extra_images=(blue,)))
    assert handle.stats["edit_images"] == 2 and handle.stats["memory_entries_added"] == 2
    assert [e.request.image for e in editor.memory] == [red, blue] and editor.memory[0].key_text == editor.memory[1].key_text
    editor.restore(tiny, handle)
    assert editor.memory == []
    assert editor.multi_image_rule() is not None
