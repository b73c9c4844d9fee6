"""Property tests of the subset sampler, on the backend and via the layer."""

import functools
import itertools
import re
import threading

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops
from scipy import stats

import keras_raptr
from keras_raptr.src.layers import random_part_stack
from keras_raptr.src.layers import sampling
from tests.common import CountingBlock
from tests.common import counts
from tests.common import data
from tests.common import make_model
from tests.common import reference_counts

INT32_MAX = 2**31 - 1
seeds = st.integers(-(2**40), 2**40)
steps = st.integers(0, INT32_MAX)


def backend_hashes(seed, step, count):
    """Backend hashes; `step` may be an int or an int array (vectorized)."""
    step = np.asarray(step, dtype="int32")
    if step.ndim:
        step = step[:, None]
    hashes = sampling.block_hashes(
        sampling.seed_hash(seed),
        ops.convert_to_tensor(step),
        sampling.index_offsets(count),
    )
    return ops.convert_to_numpy(hashes).astype(np.int32)


def backend_mask(seed, step, count, keep, mode):
    step = np.asarray(step, dtype="int32")
    hashes = backend_hashes(seed, step, count)
    p = keep / count
    mask = sampling.keep_mask(
        ops.convert_to_tensor(hashes), keep, mode, ops.cast(p, "float32")
    )
    return ops.convert_to_numpy(mask).astype(bool)


@settings(max_examples=40, deadline=None)
@given(seeds, steps, st.integers(1, 24))
def test_backend_hashes_equal_numpy_reference(seed, step, count):
    expected = sampling.numpy_block_hashes(seed, step, count).view(np.int32)
    np.testing.assert_array_equal(backend_hashes(seed, step, count), expected)


@settings(max_examples=30, deadline=None)
@given(
    seeds,
    st.integers(0, INT32_MAX - 64),
    st.integers(1, 16),
    st.data(),
    st.sampled_from(["exact", "bernoulli"]),
)
def test_backend_masks_equal_reference_and_exact_keeps_k(
    seed, first_step, count, data, mode
):
    keep = data.draw(st.integers(0, count))
    step_range = np.arange(first_step, first_step + 64)
    masks = backend_mask(seed, step_range, count, keep, mode)
    expected = np.stack(
        [
            sampling.numpy_keep_mask(seed, s, count, keep, mode, keep / count)
            for s in step_range
        ]
    )
    np.testing.assert_array_equal(masks, expected)
    if mode == "exact":
        assert (masks.sum(axis=1) == keep).all()
    elif keep == 0:
        assert not masks.any()
    elif keep == count:
        assert masks.all()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=12))
def test_ranks_equal_a_stable_double_argsort(scores):
    # Values from a small range, so that ties (broken by index) are common.
    scores = np.array(scores, dtype="int32")
    expected = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
    got = ops.convert_to_numpy(sampling.ranks(ops.convert_to_tensor(scores)))
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=12))
def test_kept_positions_are_the_true_positions_in_order(mask):
    mask = np.array(mask)
    positions = sampling.kept_positions(
        ops.convert_to_tensor(mask), int(mask.sum())
    )
    np.testing.assert_array_equal(
        ops.convert_to_numpy(positions), np.flatnonzero(mask)
    )


@pytest.mark.skipif(
    keras.backend.backend() not in ("jax", "tensorflow"),
    reason="inspects the XLA program of a compiled training call",
)
@pytest.mark.parametrize("traced_for", [None, 3], ids=["run-time", "traced"])
def test_training_call_compiles_without_a_sort(traced_for):
    """A sort in a step made XLA on CPU run every TensorFlow Dropout in it
    about 9 x slower (docs/benchmarks.md), so the subset is drawn without
    one, on the run-time path and on the straight-line path traced for a
    keep count."""
    blocks = [keras.layers.Dense(4) for _ in range(6)]
    stack = keras_raptr.RandomPartStack(blocks, keep_count=3, fixed=[0, 2])
    x = np.ones((2, 4), "float32")
    stack.build(x.shape)
    trainable = [v.value for v in stack.trainable_variables]
    state = [v.value for v in stack.non_trainable_variables]

    def call(x):
        with random_part_stack.tracing_keep_count([stack], traced_for):
            return stack.stateless_call(trainable, state, x, training=True)[0]

    def holds_a_sort(program):
        return re.search(r"\bsort\b", program.lower()) is not None

    # The inspection finds a sort where there is one.
    assert holds_a_sort(_xla_program(lambda v: ops.argsort(v), np.arange(4)))
    assert not holds_a_sort(_xla_program(call, x))


def _xla_program(fn, x):
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn).lower(x).as_text()
    import tensorflow as tf

    compiled = tf.function(fn, jit_compile=True)
    return compiled.experimental_get_compiler_ir(x)(stage="hlo")


def _layer_counts_per_call(stack, blocks, x, calls):
    per_call = []
    for _ in range(calls):
        before = counts(blocks)
        stack(x, training=True)
        per_call.append(counts(blocks) - before)
    return np.array(per_call)


@settings(max_examples=8, deadline=None)
@given(st.integers(2, 7), st.data())
def test_layer_runs_fixed_blocks_and_exactly_k(num_blocks, data):
    fixed = data.draw(
        st.lists(
            st.integers(-num_blocks, num_blocks - 1),
            max_size=num_blocks,
            unique_by=lambda i: i % num_blocks,
        )
    )
    num_fixed = len(fixed)
    keep = data.draw(st.integers(num_fixed, num_blocks))
    seed = data.draw(st.integers(0, 2**31 - 1))
    blocks = [CountingBlock(name=f"b{i}") for i in range(num_blocks)]
    stack = keras_raptr.RandomPartStack(
        blocks, keep_count=keep, fixed=fixed, seed=seed
    )
    x = np.ones((2, 3), "float32")
    stack.build(x.shape)
    first = int(ops.convert_to_numpy(stack.step))
    per_call = _layer_counts_per_call(stack, blocks, x, 3)
    fixed_index = sorted({i % num_blocks for i in fixed})
    assert (per_call[:, fixed_index] == 1).all()
    assert (per_call.sum(axis=1) == keep).all()
    assert set(np.unique(per_call)) <= {0, 1}
    free = [i for i in range(num_blocks) if i not in fixed_index]
    for offset, row in enumerate(per_call):
        expected = sampling.numpy_keep_mask(
            seed, first + offset, len(free), keep - num_fixed, "exact", 0.0
        )
        np.testing.assert_array_equal(row[free].astype(bool), expected)


@pytest.mark.parametrize("count, keep", [(6, 2), (10, 5), (4, 3)])
def test_exact_subsets_are_uniform(count, keep):
    """Chi-square goodness of fit of the drawn subsets (backend sampler)
    against the uniform distribution over all C(count, keep) subsets."""
    draws = 20_000
    masks = backend_mask(11, np.arange(draws), count, keep, "exact")
    subsets = list(itertools.combinations(range(count), keep))
    index = {s: i for i, s in enumerate(subsets)}
    observed = np.zeros(len(subsets))
    for row in masks:
        observed[index[tuple(np.flatnonzero(row))]] += 1
    assert len(subsets) * 5 <= draws  # chi-square validity (>= 5 expected)
    result = stats.chisquare(observed)
    assert result.pvalue > 1e-4, (observed.min(), observed.max())
    # Each block is kept with probability keep / count.
    np.testing.assert_allclose(
        masks.mean(axis=0), keep / count, atol=5 * np.sqrt(0.25 / draws)
    )


def test_chi_square_detects_a_biased_sampler():
    # The same statistic rejects a slightly biased sampler (one subset 10%
    # more likely): the uniformity test can fail.
    rng = np.random.default_rng(0)
    probs = np.full(15, 1.0)
    probs[0] = 1.1
    observed = np.bincount(
        rng.choice(15, size=200_000, p=probs / probs.sum()), minlength=15
    )
    assert stats.chisquare(observed).pvalue < 1e-4


@pytest.mark.parametrize("count, keep", [(10, 3), (6, 1), (7, 6)])
def test_bernoulli_keep_rate(count, keep):
    draws = 10_000
    masks = backend_mask(5, np.arange(draws), count, keep, "bernoulli")
    p = keep / count
    n = draws * count
    # Overall rate within 5 standard deviations, and per block too.
    assert abs(masks.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    per_block = masks.mean(axis=0)
    assert np.all(np.abs(per_block - p) < 5 * np.sqrt(p * (1 - p) / draws))
    # The number kept per step is Binomial(count, p).
    kept = masks.sum(axis=1)
    observed = np.bincount(kept, minlength=count + 1)
    expected = stats.binom.pmf(np.arange(count + 1), count, p) * draws
    big = expected >= 5
    observed = np.append(observed[big], observed[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    expected = expected * observed.sum() / expected.sum()
    assert stats.chisquare(observed, expected).pvalue > 1e-4


def test_consecutive_steps_are_not_correlated():
    # The block kept at step s says nothing about step s + 1.
    masks = backend_mask(0, np.arange(20_000), 6, 1, "exact")
    chosen = masks.argmax(axis=1)
    table = np.zeros((6, 6))
    for a, b in zip(chosen[:-1], chosen[1:]):
        table[a, b] += 1
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_different_seeds_draw_different_sequences():
    a = backend_mask(0, np.arange(200), 10, 5, "exact")
    b = backend_mask(1, np.arange(200), 10, 5, "exact")
    assert (a != b).any(axis=1).mean() > 0.9


def test_layer_bernoulli_rate_in_fit():
    blocks = [CountingBlock(name=f"b{i}") for i in range(8)]
    stack = keras_raptr.RandomPartStack(
        blocks, keep_count=4, sampling="bernoulli"
    )
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(stack(inputs)))
    model.compile("sgd", "mse")
    x = np.zeros((600, 4), "float32")
    model.fit(x, x[:, :1], batch_size=2, epochs=1, verbose=0)  # 300 steps
    free = counts(blocks)[1:7]
    p = (4 - 2) / 6
    n = 300 * 6
    assert abs(free.sum() / n - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert (counts(blocks)[[0, 7]] == 300).all()


@pytest.mark.skipif(
    keras.config.backend() != "torch",
    reason="only an eager PyTorch step draws its subset on the host",
)
@pytest.mark.parametrize("mode", ["exact", "bernoulli"])
def test_eager_torch_draws_the_subset_on_the_host(mode, monkeypatch):
    # On a GPU, Keras' eager torch step is host-bound, and drawing the subset
    # with device operations (about 45, with host-to-device copies) is host
    # time in every step. The host draw must pick the same blocks: the same
    # executions as the reference, step by step.
    def device_draw(*args, **kwargs):
        raise AssertionError("an eager step drew its subset on the device")

    monkeypatch.setattr(sampling, "keep_mask", device_draw)
    monkeypatch.setattr(sampling, "block_hashes", device_draw)
    model, stack, blocks = make_model(
        num_blocks=6, fixed=(0,), keep_count=3, sampling=mode
    )
    model.compile("adamw", "mse")
    x, y = data(num=80)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 10 steps
    expected = reference_counts(6, (0,), [3] * 10, sampling_mode=mode)
    np.testing.assert_array_equal(counts(blocks), expected)


_HOST_READS = ("item", "tolist", "numpy", "__array__", "__int__",
               "__float__", "__bool__", "__index__")


@pytest.mark.skipif(
    keras.config.backend() != "torch",
    reason="only an eager PyTorch step reads its counters on the host",
)
def test_eager_torch_step_reads_the_device_only_after_a_write(monkeypatch):
    # On a GPU every host read of a device value waits for the device to
    # finish its queue. The stack keeps host copies of its step counter and
    # keep count: it reads them at the first step, and again only after
    # something else wrote them (here StageScheduler, at its stage change,
    # and a bare assign between two fits). The last stage (all blocks) runs
    # the plain loop and reads nothing. The subsets stay exact.
    import torch

    # Keras pythonifies each step's logs on a background thread: count the
    # training thread's reads inside the stack only.
    reads, inside = [], threading.local()
    for name in _HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            if getattr(inside, "flag", False):
                reads[-1] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    original_call = keras_raptr.RandomPartStack.call

    @functools.wraps(original_call)  # Keras reads the call signature
    def call(self, *args, **kwargs):
        inside.flag = True
        try:
            return original_call(self, *args, **kwargs)
        finally:
            inside.flag = False

    monkeypatch.setattr(keras_raptr.RandomPartStack, "call", call)

    class PerStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            reads.append(0)

    model, stack, blocks = make_model(num_blocks=6, fixed=(0,))
    model.compile("adamw", "mse")
    x, y = data(num=80)
    scheduler = keras_raptr.StageScheduler([(3, 4), (4, 3), (6, None)])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[scheduler, PerStep()])  # 10 steps
    assert reads == [2, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(
        counts(blocks), reference_counts(6, (0,), [3] * 4 + [4] * 3 + [6] * 3)
    )
    assert int(ops.convert_to_numpy(stack.step)) == 10

    # A write from elsewhere (a restore, a bare assign) is read once.
    stack.step.assign(1000)
    stack.keep_count.assign(4)
    before = counts(blocks)
    reads.clear()
    model.fit(x[:32], y[:32], batch_size=8, epochs=1, verbose=0,
              callbacks=[PerStep()])  # 4 steps, keep count read at run time
    assert reads == [2, 0, 0, 0]
    np.testing.assert_array_equal(
        counts(blocks) - before,
        reference_counts(6, (0,), [4] * 4, first_step=1000),
    )
