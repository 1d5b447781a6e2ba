"""`mmke-eval convert-checkpoint`: reference MEND / KE checkpoints, written here in the reference
trainers' layouts (keys and shapes as they save them, random values) for a tiny LLaVA, become
mmke-eval checkpoints whose networks hold the file's tensors and compute the reference's edit.

The hand-computed formulas below are written from the reference's documented behaviour
(docs/editors.md, "Loading the published checkpoints"), independently of editors/mend.py and
editors/ke.py: MEND's IDMLP over standardised (u, delta) with per-mode scale and shift, ``W +
lr * delta~^T u~``; KE's LSTM condition and weight-normalised conditioners, ``W + max_scale *
sigmoid(eta) * (grad * a + b)`` with the gradient from autograd.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from PIL import Image

from editors.base import EditRequest
from editors.learned import META_FILE, gradient_factors
from mmke_eval import registry
from mmke_eval.adapters.base import Query
from mmke_eval.adapters.llava_hf import LlavaHFAdapter
from mmke_eval.reference.convert import convert
from mmke_eval.reference.safe_pickle import ConversionError
from mmke_eval.reference.weights import layer_and_module

PROMPT = "What is shown in the image?"
TARGET = "A red circle"


@pytest.fixture(scope="module")
def tiny():
    from mmke_eval.testing.tiny_vlms import build_tiny_llava15

    return build_tiny_llava15()


@pytest.fixture
def adapter(tiny):
    model, processor = tiny
    return LlavaHFAdapter(model.eval(), processor)


@pytest.fixture(scope="module")
def request_():
    image = Image.new("RGB", (48, 40), (230, 30, 30))
    return EditRequest(case_id="c0", prompt=PROMPT, target=TARGET, image=image, original="a square")


def autograd_gradient(adapter, name: str, request) -> torch.Tensor:
    """dL/dW of the edit loss for one weight, by autograd (the model's grad flags left as found)."""
    weight = dict(adapter.model.named_parameters())[name]
    flag = weight.requires_grad
    try:
        weight.requires_grad_(True)
        return torch.autograd.grad(adapter.target_loss(Query(request.prompt, request.image, request.target)), weight)[0]
    finally:
        weight.requires_grad_(flag)


def edited_weights(adapter) -> dict[str, tuple[int, int]]:
    """The weights MEND/KE edit on the tiny model (its last 3 layers' up/down_proj: all 2 layers)."""
    return {n: tuple(p.shape) for n, p in adapter.parameter_group("llm_last_mlp", last_k=3).items()}


def reference_name(ours: str) -> str:
    """The original LLaVA code's name of the same weight (the reference's inner_params)."""
    layer, module = layer_and_module(ours)
    return f"model.layers.{layer}.mlp.{module}.weight"


def fake_module_class(module: str, name: str):
    """A class pickled under ``module.name`` that does not exist when the file is read (the
    reference's LlavaConfig, Lightning's AttributeDict)."""
    mod = types.ModuleType(module)
    cls = type(name, (dict,) if name == "AttributeDict" else (), {"__module__": module})
    setattr(mod, name, cls)
    return mod, cls


def save_with_fake_module(obj_builder, path, module: str, name: str):
    mod, cls = fake_module_class(module, name)
    parts = module.split(".")
    added = []
    try:
        for i in range(1, len(parts) + 1):
            key = ".".join(parts[:i])
            if key not in sys.modules:
                sys.modules[key] = mod if i == len(parts) else types.ModuleType(key)
                added.append(key)
        torch.save(obj_builder(cls), path)
    finally:
        for key in added:
            del sys.modules[key]


# -- MEND in the EasyEdit trainer's layout ----------------------------------------------------------
def mend_reference(adapter, rank=1920, seed=0, step=5000) -> tuple[dict, list[str]]:
    """(the dict BaseTrainer.save_state writes, the reference's inner_params order)."""
    g = torch.Generator().manual_seed(seed)
    shapes = edited_weights(adapter)
    inner = sorted((reference_name(n) for n in shapes), key=lambda n: (int(n.split(".")[2]), n))
    ours_of = {reference_name(n): n for n in shapes}
    groups: dict[tuple[int, int], list[str]] = {}
    for ref in inner:
        d_out, d_in = shapes[ours_of[ref]]
        groups.setdefault((d_in, d_out), []).append(ref)
    sd = {"edit_lrs": torch.randn(len(inner), generator=g) * 1e-2}
    for (d_in, d_out), names in groups.items():
        key, dim = f"mend.({d_in}, {d_out})", d_in + d_out
        r = min(rank, dim)
        sd[f"{key}.u_mean"] = torch.randn(d_in, generator=g) * 0.1
        sd[f"{key}.v_mean"] = torch.randn(d_out, generator=g) * 1e-3
        sd[f"{key}.u_std"] = torch.rand(d_in, generator=g) + 0.5
        sd[f"{key}.v_std"] = (torch.rand(d_out, generator=g) + 0.5) * 1e-2
        sd[f"{key}.u_s"] = torch.rand(d_in, generator=g)
        sd[f"{key}.v_s"] = torch.rand(d_out, generator=g)
        sd[f"{key}.k"] = torch.tensor([1234.0])
        for i in range(2):  # n_hidden 1: two LRLinear layers
            sd[f"{key}.mlp.layers.{i}.u"] = torch.randn(dim, r, generator=g) * 0.05
            sd[f"{key}.mlp.layers.{i}.v"] = torch.randn(r, dim, generator=g) * 0.05
            sd[f"{key}.mlp.layers.{i}.bias"] = torch.randn(dim, generator=g) * 0.1
            sd[f"{key}.mlp.layers.{i}.mode_scale.weight"] = 1 + 0.3 * torch.randn(len(names), dim, generator=g)
            sd[f"{key}.mlp.layers.{i}.mode_shift.weight"] = 0.1 * torch.randn(len(names), dim, generator=g)
    return sd, inner


def write_mend_reference(path, adapter, **kwargs) -> tuple[dict, list[str]]:
    sd, inner = mend_reference(adapter, **kwargs)

    def build(config_cls):
        config = config_cls()
        config.__dict__.update({"_name_or_path": "liuhaotian/llava-v1.5-7b", "hidden_size": 64, "num_hidden_layers": 2})
        model = {**sd, "model_config": config}
        opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-6, "params": [0]}]}
        return {"model": model, "opt": opt, "lr_opt": None, "val_stats": {"loss/total_edit_val": 0.25, "edit/acc_val": 0.9},
                "start_time": "2024-06-01_12-00-00", "elapsed_time": 3600.0, "step": kwargs.get("step", 5000)}

    save_with_fake_module(build, path, "llava.model.language_model.llava_llama", "LlavaConfig")
    return sd, inner


def mend_by_hand(sd, inner, ours_of, factors) -> dict[str, torch.Tensor]:
    """What the reference adds to each weight: IDMLP over standardised (u, delta), lr * delta~^T u~."""
    out = {}
    by_shape: dict[str, list[str]] = {}
    for ref in inner:
        u, delta = factors[ours_of[ref]]
        key = f"mend.({u.shape[1]}, {delta.shape[1]})"
        by_shape.setdefault(key, []).append(ref)
    for i, ref in enumerate(inner):
        u, delta = (t.float() for t in factors[ours_of[ref]])
        key = f"mend.({u.shape[1]}, {delta.shape[1]})"
        mode = by_shape[key].index(ref)
        keep = (u != 0).any(-1) & (delta != 0).any(-1)
        u, delta = u[keep], delta[keep]
        z = torch.cat([(u - sd[f"{key}.u_mean"]) / (sd[f"{key}.u_std"] + 1e-7),
                       (delta - sd[f"{key}.v_mean"]) / (sd[f"{key}.v_std"] + 1e-7)], -1)
        for layer in range(2):
            p = f"{key}.mlp.layers.{layer}"
            pre = (sd[f"{p}.u"] @ (sd[f"{p}.v"] @ z.T)).T + sd[f"{p}.bias"]
            pre = pre * sd[f"{p}.mode_scale.weight"][mode] + sd[f"{p}.mode_shift.weight"][mode]
            z = pre.clamp(min=0) + z
        u_t, d_t = z[:, : u.shape[1]], z[:, u.shape[1]:]
        out[ours_of[ref]] = sd["edit_lrs"][i] * torch.einsum("bi,bj->ji", u_t, d_t)
    return out


def test_mend_reference_converts_and_computes_the_reference_edit(adapter, request_, tmp_path):
    ref_file = tmp_path / "llava_mend-step_5000.pt"
    sd, inner = write_mend_reference(ref_file, adapter)
    editor = registry.build_editor("mend")
    meta = convert(editor, adapter, ref_file, tmp_path / "ckpt")

    saved = json.loads((tmp_path / "ckpt" / META_FILE).read_text())
    assert saved["base_model"]["fingerprint"] is None
    conv = saved["converted_from"]
    assert conv["step"] == 5000 and conv["format"].startswith("EasyEdit") and len(conv["sha256"]) == 64
    assert conv["inner_params"] == inner and conv["model_config"]["class"].endswith("LlavaConfig")
    assert conv["model_config"]["_name_or_path"] == "liuhaotian/llava-v1.5-7b"
    assert meta["training"]["reference_val_stats"]["loss/total_edit_val"] == 0.25

    # Loaded through the ordinary path: the file's tensors, every one.
    loaded = registry.build_editor("mend", overrides={"checkpoint": str(tmp_path / "ckpt")})
    loaded.ensure_ready(adapter)
    assert not loaded.learned.training
    state = loaded.learned.state_dict()
    ours_of = {reference_name(n): n for n in edited_weights(adapter)}
    for i, ref in enumerate(inner):
        ours = ours_of[ref]
        assert torch.equal(state["edit_lrs"][loaded.learned.names.index(ours)], sd["edit_lrs"][i])
        d_out, d_in = edited_weights(adapter)[ours]
        key, mode = loaded.learned.slot[ours]
        same_shape = [r for r in inner if edited_weights(adapter)[ours_of[r]] == (d_out, d_in)]
        for layer in range(2):
            theirs = f"mend.({d_in}, {d_out}).mlp.layers.{layer}"
            assert torch.equal(state[f"transforms.{key}.mlp.layers.{layer}.u"], sd[f"{theirs}.u"])
            assert torch.equal(state[f"transforms.{key}.mlp.layers.{layer}.v"], sd[f"{theirs}.v"])
            assert torch.equal(state[f"transforms.{key}.mlp.layers.{layer}.mode_scale"][mode],
                               sd[f"{theirs}.mode_scale.weight"][same_shape.index(ref)])
        for buffer in ("u_mean", "v_mean", "u_std", "v_std", "u_s", "v_s", "k"):
            assert torch.equal(state[f"transforms.{key}.{buffer}"], sd[f"mend.({d_in}, {d_out}).{buffer}"])

    # The edit equals the reference's formula on the same gradient factors.
    factors = gradient_factors(adapter, loaded.learned.names, request_)
    expected = mend_by_hand(sd, inner, ours_of, factors)
    params = dict(adapter.model.named_parameters())
    before = {n: params[n].detach().clone() for n in expected}
    handle = loaded.apply(adapter, request_)
    for name, delta in expected.items():
        scale = float(delta.abs().max())
        assert scale > 0
        # float32 sums in another order: equal to within 1e-5 of the update's largest entry
        torch.testing.assert_close(params[name].detach() - before[name], delta, rtol=0, atol=1e-5 * scale)
    loaded.restore(adapter, handle)
    assert all(torch.equal(params[n], before[n]) for n in before)
    # The statistics were not touched by evaluation (running statistics move in training only).
    assert torch.equal(loaded.learned.state_dict()["transforms.64x176.k"], sd["mend.(176, 64).k"])
    assert loaded.describe()["checkpoint_info"]["converted_from"]["sha256"] == conv["sha256"]


def test_mend_factors_are_the_gradient(adapter, request_):
    """delta^T u summed over positions is dL/dW (what the reference's hooks decompose)."""
    names = sorted(edited_weights(adapter))
    factors = gradient_factors(adapter, names, request_)
    grad = autograd_gradient(adapter, names[0], request_)
    u, delta = factors[names[0]]
    torch.testing.assert_close(delta.t() @ u, grad, rtol=1e-4, atol=1e-7)


def test_mend_refuses_files_that_do_not_fit(adapter, tmp_path):
    editor = registry.build_editor("mend")

    def attempt(mutate, name):
        sd, _ = mend_reference(adapter)
        obj = {"model": sd, "opt": {}, "lr_opt": None, "val_stats": {}, "step": 1}
        obj = mutate(obj) if mutate else obj
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(ConversionError) as err:
            convert(editor, adapter, path, tmp_path / f"out_{name}")
        assert name in str(err.value)  # the message names the file
        assert not (tmp_path / f"out_{name}").exists()
        return str(err.value)

    def drop(key):
        def mutate(obj):
            del obj["model"][key]
            return obj
        return mutate

    def reshape_rank(obj):
        obj["model"]["mend.(176, 64).mlp.layers.0.u"] = torch.zeros(240, 100)
        return obj

    msg = attempt(drop("mend.(176, 64).u_std"), "missing.pt")
    assert "'mend.(176, 64).u_std'" in msg and "missing" in msg
    msg = attempt(reshape_rank, "rank.pt")
    assert "'mend.(176, 64).mlp.layers.0.u'" in msg and "[240, 100]" in msg and "[240, 240]" in msg
    msg = attempt(lambda obj: {**obj, "model": {**obj["model"], "mend.(99, 7).k": torch.zeros(1)}}, "othershape.pt")
    assert "'mend.(99, 7)'" in msg
    msg = attempt(lambda obj: {**obj, "model": {**obj["model"], "edit_lrs": torch.zeros(5)}}, "lrs.pt")
    assert "'edit_lrs'" in msg and "[5]" in msg and "[4]" in msg
    msg = attempt(lambda obj: {**obj, "model": {**obj["model"], "classifier.weight": torch.zeros(2)}}, "unexpected.pt")
    assert "unexpected key 'classifier.weight'" in msg
    msg = attempt(lambda obj: {k: v for k, v in obj.items() if k != "model"}, "nomodel.pt")
    assert "missing key 'model'" in msg
    msg = attempt(lambda obj: [obj["model"]], "list.pt")
    assert "not the dict" in msg
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ConversionError, match="text.pt: not a torch.save archive"):
        convert(editor, adapter, tmp_path / "text.pt", tmp_path / "out_text")


def test_mend_file_for_other_layers_is_refused_naming_the_weights(adapter, tmp_path):
    sd, inner = mend_reference(adapter)
    torch.save({"model": sd, "opt": {}, "step": 1}, tmp_path / "ref.pt")
    wrong = [n.replace("layers.0.", "layers.29.") for n in inner]
    with pytest.raises(ConversionError, match=r"model\.layers\.29\.mlp\.down_proj\.weight.*layer 29, down_proj"):
        convert(registry.build_editor("mend"), adapter, tmp_path / "ref.pt", tmp_path / "out", inner_params=wrong)


def test_converted_mend_checkpoint_is_refused_for_a_model_of_other_shapes(adapter, tmp_path):
    """No fingerprint in a converted checkpoint, but the edited modules' names and shapes are checked."""
    from transformers import LlavaForConditionalGeneration

    from mmke_eval.testing.tiny_llava import build_config, build_processor, build_tokenizer

    sd, _ = mend_reference(adapter)
    torch.save({"model": sd, "opt": {}, "step": 1}, tmp_path / "ref.pt")
    convert(registry.build_editor("mend"), adapter, tmp_path / "ref.pt", tmp_path / "ckpt")
    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    config.text_config.intermediate_size = 96
    other = LlavaHFAdapter(LlavaForConditionalGeneration(config).eval(), build_processor(tokenizer))
    editor = registry.build_editor("mend", overrides={"checkpoint": str(tmp_path / "ckpt")})
    with pytest.raises(Exception, match="edits other modules"):
        editor.ensure_ready(other)


def test_mend_network_statistics_and_identity_start(adapter):
    """Running statistics: rows with a zero side are skipped; the rest give the sample mean and std."""
    from editors.mend import GradientTransform

    net = GradientTransform(3, 2, rank=4, n_modes=1)
    u = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [2.0, 0.0, 1.0], [4.0, 1.0, 1.0]])
    d = torch.tensor([[0.5, 0.1], [1.0, 1.0], [0.0, 0.0], [0.3, 0.2]])
    net.train()
    net(u[:2], d[:2], 0)
    net(u[2:], d[2:], 0)
    kept_u, kept_d = u[[0, 3]], d[[0, 3]]
    assert float(net.k) == 2
    torch.testing.assert_close(net.u_mean, kept_u.mean(0))
    torch.testing.assert_close(net.u_std, kept_u.std(0))
    torch.testing.assert_close(net.v_std, kept_d.std(0))
    net.eval()
    u_t, d_t = net(kept_u, kept_d, 0)  # U = 0: the identity on the standardised inputs
    torch.testing.assert_close(u_t, (kept_u - net.u_mean) / (net.u_std + 1e-7))
    torch.testing.assert_close(d_t, (kept_d - net.v_mean) / (net.v_std + 1e-7))


# -- KE as a PyTorch-Lightning checkpoint of OneShotLearner -----------------------------------------
def ke_reference(adapter, extra_rows=5, seed=1) -> dict:
    g = torch.Generator().manual_seed(seed)
    emb = adapter.model.get_input_embeddings().weight
    vocab, width, hidden, cond = emb.shape[0] + extra_rows, emb.shape[1], 8, 16
    sd = {"learner.condition.embedding.weight": torch.randn(vocab, width, generator=g)}
    for suffix in ("", "_reverse"):
        sd[f"learner.condition.lstm._module.weight_ih_l0{suffix}"] = torch.randn(4 * hidden, width, generator=g) * 0.2
        sd[f"learner.condition.lstm._module.weight_hh_l0{suffix}"] = torch.randn(4 * hidden, hidden, generator=g) * 0.2
        sd[f"learner.condition.lstm._module.bias_ih_l0{suffix}"] = torch.randn(4 * hidden, generator=g) * 0.1
        sd[f"learner.condition.lstm._module.bias_hh_l0{suffix}"] = torch.randn(4 * hidden, generator=g) * 0.1
    sd["learner.condition.linear._linear_layers.0.weight"] = torch.randn(cond, 2 * hidden, generator=g) * 0.3
    sd["learner.condition.linear._linear_layers.0.bias"] = torch.randn(cond, generator=g) * 0.1
    for ours, (d_out, d_in) in edited_weights(adapter).items():
        c = f"learner.conditioners.{reference_name(ours).replace('.', '_')}_conditioner.conditioners"
        sd[f"{c}.0.weight_g"] = torch.rand(hidden, 1, generator=g) + 0.5
        sd[f"{c}.0.weight_v"] = torch.randn(hidden, cond, generator=g)
        sd[f"{c}.0.bias"] = torch.randn(hidden, generator=g) * 0.1
        sd[f"{c}.2.weight_g"] = torch.rand(2 * (d_out + d_in) + 1, 1, generator=g) + 0.5
        sd[f"{c}.2.weight_v"] = torch.randn(2 * (d_out + d_in) + 1, hidden, generator=g)
        sd[f"{c}.2.bias"] = torch.randn(2 * (d_out + d_in) + 1, generator=g) * 0.1
    sd["alpha_lp"] = torch.tensor(0.7)
    sd["margin_lp"] = torch.tensor(1e-5)
    return sd


def write_ke_reference(path, adapter, max_scale=0.5, **kwargs) -> dict:
    sd = ke_reference(adapter, **kwargs)

    def build(attribute_dict):
        hparams = attribute_dict({"max_scale": max_scale, "lr": 3e-4, "model_name": "llava"})
        return {"epoch": 3, "global_step": 20000, "pytorch-lightning_version": "1.3.0", "state_dict": sd,
                "callbacks": {}, "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": hparams}

    save_with_fake_module(build, path, "pytorch_lightning.utilities.parsing", "AttributeDict")
    return sd


def ke_by_hand(sd, adapter, request_, max_scale) -> dict[str, torch.Tensor]:
    ids = adapter.tokenizer(f"{request_.original} >> {request_.target} || {request_.prompt}", truncation=True,
                            max_length=32, return_tensors="pt").input_ids[0]
    x = sd["learner.condition.embedding.weight"][ids]
    hidden = sd["learner.condition.lstm._module.weight_hh_l0"].shape[1]
    lstm = torch.nn.LSTM(x.shape[1], hidden, batch_first=True, bidirectional=True)
    lstm.load_state_dict({k.rpartition(".")[2]: v for k, v in sd.items() if "._module." in k})
    _, (h, _) = lstm(x[None])
    cond = torch.tanh(torch.cat([h[0, 0], h[1, 0]]) @ sd["learner.condition.linear._linear_layers.0.weight"].T
                      + sd["learner.condition.linear._linear_layers.0.bias"])
    out = {}
    for ours, (d_out, d_in) in edited_weights(adapter).items():
        grad = autograd_gradient(adapter, ours, request_)
        c = f"learner.conditioners.{reference_name(ours).replace('.', '_')}_conditioner.conditioners"

        def wn(i, c=c):
            v = sd[f"{c}.{i}.weight_v"]
            return sd[f"{c}.{i}.weight_g"] * v / v.norm(dim=1, keepdim=True)

        z = wn(2) @ torch.tanh(wn(0) @ cond + sd[f"{c}.0.bias"]) + sd[f"{c}.2.bias"]
        col_a, row_a, col_b, row_b, eta = z.split([d_in, d_out, d_in, d_out, 1])
        a = row_a.softmax(-1)[:, None] @ col_a[None]
        b = row_b.softmax(-1)[:, None] @ col_b[None]
        out[ours] = max_scale * torch.sigmoid(eta) * (grad * a + b)
    return out


def test_ke_reference_converts_and_computes_the_reference_edit(adapter, request_, tmp_path):
    ref_file = tmp_path / "model-epoch=03-valid_acc=0.9500.ckpt"
    sd = write_ke_reference(ref_file, adapter)
    overrides = {"hidden_dim": 8, "condition_dim": 16}  # the file's sizes (the reference uses 128 and 1024)
    convert(registry.build_editor("ke", overrides=overrides), adapter, ref_file, tmp_path / "ckpt")
    conv = json.loads((tmp_path / "ckpt" / META_FILE).read_text())["converted_from"]
    rows = adapter.model.get_input_embeddings().weight.shape[0]
    assert conv["step"] == 20000 and conv["max_scale"] == 0.5 and conv["format"].startswith("PyTorch-Lightning")
    assert conv["embedding_rows"] == {"reference": rows + 5, "model": rows, "from_reference": rows}

    loaded = registry.build_editor("ke", overrides={**overrides, "checkpoint": str(tmp_path / "ckpt")})
    loaded.ensure_ready(adapter)
    state = loaded.learned.state_dict()
    assert torch.equal(state["condition.embedding.weight"], sd["learner.condition.embedding.weight"][:rows])
    assert torch.equal(state["condition.lstm.weight_ih_l0_reverse"], sd["learner.condition.lstm._module.weight_ih_l0_reverse"])
    assert float(state["max_scale"]) == 0.5 and float(state["lagrange"]) == pytest.approx(0.7)

    expected = ke_by_hand(sd, adapter, request_, max_scale=0.5)
    params = dict(adapter.model.named_parameters())
    before = {n: params[n].detach().clone() for n in expected}
    handle = loaded.apply(adapter, request_)
    for name, delta in expected.items():
        delta = delta.detach()
        torch.testing.assert_close(params[name].detach() - before[name], delta, rtol=0, atol=1e-5 * float(delta.abs().max()))
    loaded.restore(adapter, handle)
    assert all(torch.equal(params[n], before[n]) for n in before)


def test_ke_refuses_files_that_do_not_fit(adapter, tmp_path):
    overrides = {"hidden_dim": 8, "condition_dim": 16}
    sd = ke_reference(adapter)
    name = next(k for k in sd if k.endswith(".2.weight_v"))
    bad = {**sd, name: torch.zeros(7, 8)}
    torch.save({"state_dict": bad, "global_step": 1}, tmp_path / "shape.ckpt")
    with pytest.raises(ConversionError, match=rf"shape.ckpt: '{name}' has shape \[7, 8\]; the editor on this model needs \[481, 8\]"):
        convert(registry.build_editor("ke", overrides=overrides), adapter, tmp_path / "shape.ckpt", tmp_path / "o1")
    torch.save({"state_dict": sd, "global_step": 1}, tmp_path / "dims.ckpt")  # default sizes: 128 / 1024
    with pytest.raises(ConversionError, match=r"'learner.condition.lstm._module.weight_ih_l0' has shape \[32, 64\].*\[512, 64\]"):
        convert(registry.build_editor("ke"), adapter, tmp_path / "dims.ckpt", tmp_path / "o2")
    torch.save({"epoch": 1}, tmp_path / "nostate.ckpt")
    with pytest.raises(ConversionError, match="nostate.ckpt: missing key 'state_dict'"):
        convert(registry.build_editor("ke", overrides=overrides), adapter, tmp_path / "nostate.ckpt", tmp_path / "o3")
    torch.save({"state_dict": {**sd, "learner.extra.weight": torch.zeros(1)}}, tmp_path / "extra.ckpt")
    with pytest.raises(ConversionError, match="unexpected key 'learner.extra.weight'"):
        convert(registry.build_editor("ke", overrides=overrides), adapter, tmp_path / "extra.ckpt", tmp_path / "o4")


# -- the command ------------------------------------------------------------------------------------
def test_convert_checkpoint_command(tiny_llava_dir, tmp_path, capsys):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmke_eval import cli

    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.float32).eval()
    adapter = LlavaHFAdapter(model, AutoProcessor.from_pretrained(tiny_llava_dir))
    write_mend_reference(tmp_path / "ref.pt", adapter)
    model_args = f"pretrained={tiny_llava_dir},device=cpu,device_map=cpu,dtype=float32"
    argv = ["convert-checkpoint", "--editor", "mend", "--reference", str(tmp_path / "ref.pt"), "--model", "llava_hf",
            "--model_args", model_args, "--output_path", str(tmp_path / "ckpt")]
    assert cli.main(argv) == 0
    assert "Use it with --editor mend --editor_args checkpoint=" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ckpt" / META_FILE).read_text())
    assert meta["converted_from"]["step"] == 5000 and meta["base_model"]["fingerprint"] is None
    assert cli.main(argv) == 1  # the folder holds a checkpoint now: refused, not overwritten
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert cli.main(["convert-checkpoint", "--editor", "serac", "--reference", str(tmp_path / "ref.pt"),
                     "--output_path", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err  # a MEND file given as SERAC: refused before any model loads
    assert "ref.pt: no 'classifier.*' key in 'model': not a SERAC checkpoint" in err
    assert cli.main(["convert-checkpoint", "--editor", "ft_llm", "--reference", str(tmp_path / "ref.pt"),
                     "--output_path", str(tmp_path / "x")]) == 1
    assert "only mend, ke" in capsys.readouterr().err


def test_reading_a_reference_file_runs_none_of_its_code(adapter, tmp_path):
    """A pickle that would call a function on loading gets an inert stand-in instead."""
    import os

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {"edit_lrs": torch.zeros(4), "model_config": Payload()}, "step": 1}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError):
        convert(registry.build_editor("mend"), adapter, tmp_path / "evil.pt", tmp_path / "out")
    torch.save(Payload(), tmp_path / "evil_top.pt")
    with pytest.raises(ConversionError, match="not the dict"):
        convert(registry.build_editor("mend"), adapter, tmp_path / "evil_top.pt", tmp_path / "out")
    assert not marker.exists()


def test_a_damaged_reference_file_is_refused_naming_it(adapter, tmp_path):
    """Damage a torch.save file can take in a download: its zip headers, or a record inside it."""
    write_mend_reference(tmp_path / "ref.pt", adapter)
    good = (tmp_path / "ref.pt").read_bytes()
    (tmp_path / "headers.pt").write_bytes(bytes(64) + good[64:])
    (tmp_path / "record.pt").write_bytes(good.replace(b"ref/data/0", b"ref/data/Z"))  # a tensor's record lost
    for name, problem in (("headers.pt", "a damaged zip archive"), ("record.pt", "cannot be loaded")):
        with pytest.raises(ConversionError, match=rf"{name}: {problem} \(.*download it again"):
            convert(registry.build_editor("mend"), adapter, tmp_path / name, tmp_path / f"out_{name}")
        assert not (tmp_path / f"out_{name}").exists()
