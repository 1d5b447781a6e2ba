"""WISE (editors/wise.py): the side memory learns the edit, the router keeps unrelated inputs on the
main memory, the activation covers the image tokens, shards merge with TIES on schedule, and a
lifelong stream restores in reverse order exactly."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from editors.base import EditRequest
from editors.wise import WISEConfig, WISEEditor, WISEMemory, ties_merge
from mmke_eval import registry
from mmke_eval.adapters.base import Query

PROMPT = "What is shown in the image?"
TARGET = "A red circle on a white background"
UNRELATED = Query("Where does this person live?", None, "Paris")
# A tiny random model learns the target in 20 steps at lr 5; no shard fills unless a test asks for it.
FAST = dict(layer=-1, reference_layers=0, steps=20, lr=5.0, merge_freq=1000, num_shards=2)


@pytest.fixture(scope="module")
def adapter():
    model, processor = registry.adapter_test_models("llava_hf")["build_tiny_llava15"]()
    return registry.adapter_class("llava_hf")(model.eval(), processor)


def editor(**settings) -> WISEEditor:
    return WISEEditor(WISEConfig(**{**FAST, **settings}))


def image(rgb=(230, 30, 30)):
    return Image.new("RGB", (48, 40), rgb)


def request(i: int = 0, target: str = TARGET) -> EditRequest:
    colours = [(230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230), (230, 30, 230)]
    return EditRequest(case_id=f"c{i}", prompt=PROMPT, target=target, image=image(colours[i % len(colours)]))


def state(model) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def memory_of(adapter) -> WISEMemory:
    found = [m for m in adapter.model.modules() if isinstance(m, WISEMemory)]
    assert len(found) == 1
    return found[0]


def test_edit_changes_the_edited_answer_and_restore_is_bit_identical(adapter):
    query = Query(PROMPT, image(), TARGET)
    before = state(adapter.model)
    (old,) = adapter.teacher_forced([query], k=1)
    with editor().editing(adapter, request()) as handle:
        (new,) = adapter.teacher_forced([query], k=1)
        assert memory_of(adapter).last_routes == ["shard"]
        assert new.token_acc > old.token_acc and new.predicted_ids != old.predicted_ids
        assert handle.stats["edit_images"] == 1 and handle.stats["loss"] < handle.stats["initial_loss"]
        assert handle.stats["side_memory_params"] == memory_of(adapter).shard.numel() and handle.stats["merges"] == 0
    after = state(adapter.model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(isinstance(m, WISEMemory) for m in adapter.model.modules())


def test_router_sends_unrelated_inputs_to_the_main_memory_and_the_edit_to_the_side(adapter):
    edit_query = Query(PROMPT, image(), TARGET)
    with torch.no_grad():
        base_logits = adapter.sequence_logits(UNRELATED)
    with editor().editing(adapter, request()):
        memory = memory_of(adapter)
        results = adapter.teacher_forced([UNRELATED, edit_query], k=3)  # two batches: text-only, then image
        assert memory.last_routes == ["shard"]  # the edit input
        with torch.no_grad():
            logits = adapter.sequence_logits(UNRELATED)
        assert memory.last_routes == ["main"]
        assert torch.equal(logits, base_logits)  # answered by the unedited weights, bit for bit
        assert results[0].token_acc == adapter.teacher_forced([UNRELATED], k=3)[0].token_acc


def test_router_by_hand_on_a_small_projection():
    """A 2x3 projection whose shard changed only the column of input feature 0: an input without
    feature 0 has distance 0 (main memory, exactly its output); one with it goes to the shard."""
    torch.manual_seed(0)
    main = torch.nn.Linear(3, 2, bias=False)
    memory = WISEMemory(main, WISEConfig(distance_act="none", route_stat="mean", act_ratio=0.5))
    with torch.no_grad():
        memory.shard[:, 0] += torch.tensor([3.0, 4.0])  # |delta . x| = 5 x0
    memory.shard_changed, memory.min_act, memory.edits = True, 5.0, 1  # threshold 2.5
    x = torch.tensor([[[0.0, 1.0, 2.0], [0.0, -1.0, 1.0]],   # no feature 0: distance 0
                      [[1.0, 0.0, 0.0], [0.2, 0.0, 0.0]]])  # distances 5 and 1: mean 3 >= 2.5
    with torch.no_grad():
        out = memory(x)
    assert memory.last_routes == ["main", "shard"]
    assert memory.last_distances == pytest.approx([0.0, 3.0])
    assert torch.equal(out[0], main(x)[0])
    assert torch.allclose(out[1], x[1] @ memory.shard.T)
    memory.row_mask = torch.tensor([[1, 1], [0, 1]])  # padding: row 2 keeps only its distance-1 position
    with torch.no_grad():
        memory(x)
    assert memory.last_routes == ["main", "main"] and memory.last_distances == pytest.approx([0.0, 1.0])


def test_activation_distance_covers_the_image_tokens(adapter):
    """The routed distance of the edit input is the mean over all its positions, the image tokens
    included (EasyEdit's issue 697 left them out): computed by hand from the projection's input."""
    query = Query(PROMPT, image(), TARGET)
    with editor(steps=3, route_stat="mean").editing(adapter, request()):
        memory = memory_of(adapter)
        seen = []
        hook = memory.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
        try:
            adapter.teacher_forced([query], k=1)
        finally:
            hook.remove()
        (x,) = seen
        with torch.no_grad():
            norms = torch.linalg.vector_norm(F_silu(x @ memory.shard.T) - F_silu(memory.main(x)), dim=-1)[0]
        (enc,), _ = adapter._batch([query])
        is_image = torch.tensor([t == adapter.image_token_id for t in enc.ids])
        assert len(norms) == len(enc.ids) == adapter.count_tokens(query) and is_image.sum() > 0
        assert memory.last_distances[0] == pytest.approx(float(norms.mean()), rel=1e-5)
        assert abs(float(norms[~is_image].mean()) - float(norms.mean())) > 1e-3 * float(norms.mean())


def F_silu(t):
    return torch.nn.functional.silu(t)


def full_state(adapter) -> dict:
    """Everything the side memory holds (copies), or None without one."""
    found = [m for m in adapter.model.modules() if isinstance(m, WISEMemory)]
    if not found:
        return {"model": state(adapter.model)}
    m = found[0]
    clone = lambda t: None if t is None else t.detach().clone()
    return {"model": state(adapter.model), "shard": clone(m.shard), "mask": clone(m.mask), "pending": [clone(t) for t in m.pending],
            "merged": clone(m.merged), "memories": [(clone(w), a) for w, a in m.memories], "pending_acts": list(m.pending_acts),
            "min_act": m.min_act, "edits": m.edits, "merges": m.merges, "shard_changed": m.shard_changed}


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("retrieve", [False, True])
def test_lifelong_stream_merges_on_schedule_and_reverse_restores_give_each_state_back(adapter, retrieve):
    wise = editor(steps=2, num_shards=2, merge_freq=4, retrieve=retrieve)  # shards of 2 edits, a merge every 4
    states, handles = [full_state(adapter)], []
    for i in range(5):
        handles.append(wise.apply(adapter, request(i, target=f"{TARGET} {i}")))
        states.append(full_state(adapter))
        memory = memory_of(adapter)
        # knowledge sharding: the current shard differs from the original weight only inside its mask
        assert not bool(((memory.shard != memory.original) & ~memory.mask).any())
    assert [h.stats["merges"] for h in handles] == [0, 0, 0, 1, 1]
    assert [h.stats["shard_filled"] for h in handles] == [False, True, False, True, False]
    memory = memory_of(adapter)
    if retrieve:
        assert len(memory.memories) == 1 and memory.merged is None and memory.pending == []
    else:
        assert memory.merged is not None and memory.pending == [] and memory.memories == []
    for handle, before in zip(reversed(handles), reversed(states[:-1])):
        wise.restore(adapter, handle)
        assert same(full_state(adapter), before)
    assert not any(isinstance(m, WISEMemory) for m in adapter.model.modules())


def test_the_merge_is_ties_of_the_full_shards(adapter):
    wise = editor(steps=2, num_shards=2, merge_freq=2)
    first = wise.apply(adapter, request(0))  # fills shard one (one edit per shard)
    (shard_one,) = memory_of(adapter).pending
    second = wise.apply(adapter, request(1))
    memory = memory_of(adapter)
    shard_two = second.wise_state[2][0].detach()  # the shard the second edit trained (now merged away)
    expected = ties_merge(memory.original, [shard_one, shard_two], [0.5, 0.5], 0.53)
    assert second.stats["merges"] == 1 and torch.equal(memory.merged, expected)
    assert second.stats["side_memory_params"] == 2 * shard_one.numel()  # the merged memory and a fresh shard
    wise.restore(adapter, second)
    wise.restore(adapter, first)


def test_ties_merge_by_hand():
    base = torch.zeros(4)
    one, two = torch.tensor([1.0, -2.0, 3.0, 0.0]), torch.tensor([2.0, 1.0, -0.5, 0.0])
    # no trimming: elected signs of the weighted sums [1.5, -0.5, 1.25, 0] are +, -, +, + ; agreeing changes averaged
    assert torch.equal(ties_merge(base, [one, two], [0.5, 0.5], 1.0), torch.tensor([1.5, -2.0, 3.0, 0.0]))
    # density 0.5: one keeps (-2, 3), two keeps (2, 1); sums [1, -0.5, 1.5, 0]: entry 1 keeps only one's -2
    assert torch.equal(ties_merge(base, [one, two], [0.5, 0.5], 0.5), torch.tensor([2.0, -2.0, 3.0, 0.0]))


def test_restores_out_of_order_are_refused(adapter):
    wise = editor(steps=1)
    first = wise.apply(adapter, request(0))
    second = wise.apply(adapter, request(1))
    with pytest.raises(RuntimeError, match="reverse order"):
        wise.restore(adapter, first)
    wise.restore(adapter, second)
    wise.restore(adapter, first)
    assert not any(isinstance(m, WISEMemory) for m in adapter.model.modules())


def test_bad_settings_are_refused_in_one_line():
    from editors.base import ConfigError

    with pytest.raises(ConfigError, match="merge_freq .* multiple of num_shards"):
        WISEConfig(merge_freq=5, num_shards=2)
    with pytest.raises(ConfigError, match="route_stat"):
        WISEConfig(route_stat="median")
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        WISEEditor(WISEConfig(layer=5))._layer_index(4)
    assert WISEEditor(WISEConfig(layer=23, reference_layers=32))._layer_index(32) == 23
    assert WISEEditor(WISEConfig(layer=23, reference_layers=28))._layer_index(4) == 3


def test_wise_merge_answers_with_the_waiting_shards_merged_as_the_reference_forward_does(adapter):
    """Once a shard has filled, EasyEdit's WISE-Merge forward merges the waiting shards (and the
    current one, once written) before answering; ours answers with that merge without storing it."""
    wise = editor(steps=2, num_shards=2, merge_freq=4)  # shards of 2 edits
    handles = [wise.apply(adapter, request(i)) for i in range(2)]  # shard one full, waiting
    memory = memory_of(adapter)
    (waiting,) = memory.pending
    assert memory.merged is None and [name for name, _, _ in memory.candidates()] == ["merged"]
    assert torch.equal(memory.merged_view(), ties_merge(memory.original, [waiting], [1.0], 0.53))
    handles.append(wise.apply(adapter, request(2)))  # the current shard written: merged with the waiting one
    assert torch.equal(memory.merged_view(), ties_merge(memory.original, [waiting, memory.shard.detach()], [0.5, 0.5], 0.53))
    assert memory.merged is None and memory.merges == 0  # nothing stored
    for handle in reversed(handles):
        wise.restore(adapter, handle)


def test_caching_the_frozen_lower_layers_and_vision_tower_gives_the_same_edit(adapter):
    trained = []
    for cached in (False, True):
        wise = editor(steps=3, cache_lower_layers=cached, cache_vision=cached)
        handle = wise.apply(adapter, request(0))
        trained.append((memory_of(adapter).shard.detach().clone(), handle.stats["loss"], handle.stats["edit_distance"]))
        wise.restore(adapter, handle)
    (plain, loss_plain, d_plain), (fast, loss_fast, d_fast) = trained
    assert torch.equal(plain, fast) and loss_plain == loss_fast and d_plain == d_fast
