"""Length-aware batches: every batching mode trains the same samples to the same gradient, the
length-grouped order is a pure, complete reordering, and packing wastes little."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tamer.engine import batching
from tamer.engine.loss import loss_sum
from tamer.engine.sampling import LengthGroupedOrder, SampleOrder
from tamer.presets import TINY_ARCHITECTURE
from tamer.recipes import squad


@pytest.fixture(scope="module")
def examples() -> list[squad.Example]:
    train, _ = squad.load_train_and_eval("bundled", 64, 0)
    built, _ = squad.build_examples(train[:200], squad.load_tokenizer("bundled", "tiny-llama"), 512)
    return built


def _tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY_ARCHITECTURE)).float()


def _gradients(
    model: LlamaForCausalLM, micro_batches: list[batching.MicroBatch]
) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    supervised = sum(int((micro.tensors["labels"][:, 1:] != squad.IGNORE_INDEX).sum()) for micro in micro_batches)
    total = 0.0
    for micro in micro_batches:
        summed, _ = loss_sum(model, micro.tensors)
        (summed / supervised).backward()
        total += float(summed.detach()) / supervised
    return total, {name: parameter.grad.clone() for name, parameter in model.named_parameters()}


@pytest.mark.parametrize("mode", ["bucket", "packed", "max_len"])
def test_every_mode_gives_the_padded_steps_gradient(examples, mode):
    """The same 6 samples in two micro-batches give the loss and gradient of `longest` padding in every mode (fp32)."""
    model = _tiny_model()
    ids = [0, 5, 17, 3, 42, 8]
    reference_loss, reference = _gradients(model, batching.build(examples, ids, 3, "longest", 0, 512, 64))
    loss, gradients = _gradients(model, batching.build(examples, ids, 3, mode, 0, 512, 64))
    assert loss == pytest.approx(reference_loss, rel=1e-5)
    for name, gradient in reference.items():
        torch.testing.assert_close(gradients[name], gradient, rtol=1e-4, atol=1e-6, msg=f"{name} differs")


def test_packed_attention_stays_within_each_sample(examples):
    """A sample's loss in a packed row does not change when its neighbour in the row changes."""
    model = _tiny_model().eval()
    with torch.no_grad():
        alone, _ = loss_sum(model, batching.pack([examples[1]], 0, 64))
        first = (
            loss_sum(model, batching.pack([examples[2], examples[1]], 0, 64))[0]
            - loss_sum(model, batching.pack([examples[2]], 0, 64))[0]
        )
    torch.testing.assert_close(first, alone, rtol=1e-4, atol=1e-4)


def test_packed_row_restarts_positions_and_rounds_to_the_multiple(examples):
    """A packed row's length is a multiple of `multiple`; position ids restart at every sample and at the padding."""
    chosen = examples[:3]
    row = batching.pack(chosen, 0, 64)
    lengths = [len(example.input_ids) for example in chosen]
    assert row["input_ids"].shape[1] % 64 == 0 and row["input_ids"].shape[1] - sum(lengths) < 64
    starts = (row["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts[:3] == [0, lengths[0], lengths[0] + lengths[1]]


def test_length_grouped_order_is_a_pure_reordering_of_each_window(examples):
    """Each window trains exactly the plain order's samples, identically for a fresh object, with similar lengths per step."""
    lengths = [len(example.input_ids) for example in examples]
    plain = SampleOrder(len(examples), seed=3)
    grouped = LengthGroupedOrder(len(examples), 3, lengths, step_size=8, window_steps=5)
    window = 8 * 5
    for start in (0, window, 7 * window):
        assert sorted(grouped.indices(start, window)) == sorted(plain.indices(start, window))
    again = LengthGroupedOrder(len(examples), 3, lengths, step_size=8, window_steps=5)
    assert grouped.indices(13, 50) == again.indices(13, 50)

    def spread(order: SampleOrder) -> int:
        steps = [order.indices(k * 8, 8) for k in range(20)]
        return sum(max(lengths[i] for i in step) - min(lengths[i] for i in step) for step in steps)

    assert spread(grouped) < spread(plain) / 3


def test_length_grouped_order_trains_every_sample_once_per_epoch():
    """With windows that straddle epoch boundaries (50 samples, windows of 24), each epoch's 50 positions hold every sample once."""
    lengths = [(index * 37) % 101 for index in range(50)]
    order = LengthGroupedOrder(50, 1, lengths, step_size=8, window_steps=3)
    for epoch in range(4):
        assert sorted(order.indices(epoch * 50, 50)) == list(range(50))


def test_default_packed_batches_are_at_least_90_percent_useful(examples):
    """Packed micro-batches of 8 in the length-grouped order compute at most 10% padding (padding to the longest: ~64%)."""
    lengths = [len(example.input_ids) for example in examples]
    order = LengthGroupedOrder(len(examples), 0, lengths, step_size=8, window_steps=64)
    useful = computed = 0
    for step in range(20):
        for micro in batching.build(examples, order.indices(step * 8, 8), 8, "packed", 0, 512, 64):
            useful, computed = useful + micro.useful_tokens, computed + micro.computed_tokens
    assert useful / computed >= 0.9


def _counted(forward, calls: list[int], index: int):
    def counting(*args, **kwargs):
        calls[index] += 1
        return forward(*args, **kwargs)

    return counting


def test_selective_checkpointing_recomputes_only_k_layers_with_identical_gradients(examples):
    """Checkpointing 1 of 2 layers reruns only layer 0 in backward and gives bit-identical gradients to checkpointing both."""
    from tamer.engine.model import checkpoint_only_first

    micro_batches = batching.build(examples, [0, 5, 17], 3, "packed", 0, 512, 64)
    results = []
    for count in (None, 1):
        model = _tiny_model()
        model.train().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if count is not None:
            checkpoint_only_first(model, count)
        calls = [0, 0]
        for index, layer in enumerate(model.model.layers):  # forward hooks do not fire in the recomputation
            layer.mlp.forward = _counted(layer.mlp.forward, calls, index)
        results.append((_gradients(model, micro_batches)[1], calls))
    (all_layers, all_calls), (first_only, first_calls) = results
    assert all_calls == [2, 2] and first_calls == [2, 1]
    for name, gradient in all_layers.items():
        assert torch.equal(first_only[name], gradient), f"{name} differs"


def test_checkpointing_by_size_switches_layers_per_micro_batch_with_identical_gradients(examples):
    """A plan's table by size checkpoints no layer for a short packed row and both for a long one, switching
    between micro-batches of one step, and the step's gradient is bit-identical to checkpointing both always."""
    from tamer.engine.model import LayerCheckpointing
    from tamer.plan import Plan

    micro_batches = batching.build(examples, [0, 5, 17, 3, 8, 11, 2], 4, "packed", 0, 512, 64)
    sizes = [micro.computed_tokens for micro in micro_batches]
    assert len(set(sizes)) == 2, sizes
    plan = Plan(
        micro_batch_size=4,
        grad_accumulation=2,
        eval_batch_size=4,
        gradient_checkpointing=True,
        checkpoint_layers=None,
        checkpoint_layers_by_tokens=((min(sizes), 0),),
    )
    results = []
    for table in (False, True):
        model = _tiny_model()
        model.train().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        calls = [0, 0]
        for index, layer in enumerate(model.model.layers):
            layer.mlp.forward = _counted(layer.mlp.forward, calls, index)
        switch = LayerCheckpointing(model)
        model.zero_grad(set_to_none=True)
        supervised = sum(int((micro.tensors["labels"][:, 1:] != squad.IGNORE_INDEX).sum()) for micro in micro_batches)
        used = []
        for micro in micro_batches:
            if table:
                used.append(switch.for_tokens(plan, micro.computed_tokens)[0])
            summed, _ = loss_sum(model, micro.tensors)
            (summed / supervised).backward()
        results.append(({name: p.grad.clone() for name, p in model.named_parameters()}, calls, used))
    (always, always_calls, _), (by_size, by_size_calls, used) = results
    assert sorted(used) == [0, 2]  # the short row: none; the long one: every layer (checkpoint_layers None)
    assert always_calls == [4, 4] and by_size_calls == [3, 3]  # 2 forwards + 2 recomputations vs 2 + 1
    for name, gradient in always.items():
        assert torch.equal(by_size[name], gradient), f"{name} differs"
