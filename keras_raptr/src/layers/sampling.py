"""Which blocks run at a training step: a pure function of (seed, step).

The subset is drawn from a counter-based hash (the 32-bit MurmurHash3
finalizer) of the layer's seed, its step counter and the block index, written
in `keras.ops` integer arithmetic. Because it has no hidden random state:

- resuming from a checkpoint (which holds the step counter) replays exactly
  the subsets an uninterrupted run would have drawn;
- every replica of a data-parallel run draws the same subset;
- the three backends draw the same subsets for the same seed.

`numpy_*` functions are the reference implementation the tests compare with.
"""

import numpy as np
from keras import ops

_MUL1 = np.uint32(0x85EBCA6B).view(np.int32).item()
_MUL2 = np.uint32(0xC2B2AE35).view(np.int32).item()
_GOLDEN = np.uint32(0x9E3779B9)


def _lower_triangle(count, dtype):
    """`[i, j] = j < i` as a `count` x `count` tensor.

    Built from Python lists, not NumPy: under `torch.compile`, Dynamo
    cannot trace Keras' conversion of an ndarray (it reads `ndarray.dtype`)
    and abandons the whole frame, the stack's call, to eager execution.
    """
    rows = [[j < i for j in range(count)] for i in range(count)]
    return ops.convert_to_tensor(rows, dtype)


def _logical_right_shift(h, bits):
    # int32 `>>` is arithmetic on every backend; mask off the sign copies.
    return ops.bitwise_and(ops.right_shift(h, bits), (1 << (32 - bits)) - 1)


def _fmix32(h):
    mul1 = ops.convert_to_tensor(_MUL1, "int32")
    mul2 = ops.convert_to_tensor(_MUL2, "int32")
    h = ops.bitwise_xor(h, _logical_right_shift(h, 16))
    h = ops.multiply(h, mul1)  # int32 products wrap, as uint32 ones would
    h = ops.bitwise_xor(h, _logical_right_shift(h, 13))
    h = ops.multiply(h, mul2)
    return ops.bitwise_xor(h, _logical_right_shift(h, 16))


def _numpy_fmix32(h):
    h = np.asarray(h, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = h ^ (h >> 16)
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> 13)
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> 16)


def seed_hash(seed):
    """The int32 a seed enters the per-step hash as (computed on the host)."""
    return _numpy_fmix32(np.uint32(seed & 0xFFFFFFFF)).view(np.int32).item()


def index_offsets(count):
    """Per-block offsets `i * golden_ratio (mod 2**32)`, as int32 (NumPy;
    a stack holds them as a tuple of Python ints, see `_lower_triangle`)."""
    with np.errstate(over="ignore"):
        offsets = np.arange(count, dtype=np.uint32) * _GOLDEN
    return offsets.view(np.int32)


def block_hashes(seed_int32, step, offsets):
    """int32 hashes, one per block, of (seed, step, block index)."""
    step = ops.cast(step, "int32")
    base = _fmix32(ops.bitwise_xor(step, seed_int32))
    return _fmix32(ops.add(base, ops.convert_to_tensor(offsets, "int32")))


def numpy_block_hashes(seed, step, count):
    return _host_block_hashes(seed_hash(seed), step, index_offsets(count))


def _host_block_hashes(seed_int32, step, offsets):
    seed32 = np.uint32(seed_int32 & 0xFFFFFFFF)
    base = _numpy_fmix32(np.uint32(step & 0xFFFFFFFF) ^ seed32)
    offsets = np.asarray(offsets, dtype=np.int32).view(np.uint32)
    with np.errstate(over="ignore"):
        return _numpy_fmix32(base + offsets)


def uniform_from_hashes(hashes):
    """Floats in [0, 1) from the top 24 bits of each hash (exact in float32)."""
    top = _logical_right_shift(hashes, 8)
    return ops.divide(ops.cast(top, "float32"), float(1 << 24))


def ranks(scores):
    """Each score's place in ascending order (along the last axis), ties
    broken by index.

    The stable `argsort(argsort(scores))`, computed from pairwise comparisons
    instead of a sort: a step compiled by XLA on CPU that holds a sort ran
    every TensorFlow Dropout in it about 9 x slower (`docs/benchmarks.md`),
    and a stack has few blocks, so the n x n comparisons cost nothing.
    """
    count = scores.shape[-1]
    row = ops.expand_dims(scores, -1)  # score i
    column = ops.expand_dims(scores, -2)  # score j
    index_before = _lower_triangle(count, "bool")
    before = ops.logical_or(
        ops.less(column, row),
        ops.logical_and(ops.equal(column, row), index_before),
    )
    return ops.sum(ops.cast(before, "int32"), axis=-1)


def keep_mask(hashes, num_to_keep, sampling, keep_probability):
    """Boolean mask over the non-fixed blocks.

    `"exact"`: the `num_to_keep` blocks with the smallest hash (a uniformly
    random subset of that size). `"bernoulli"`: each block independently with
    probability `keep_probability`.
    """
    if sampling == "exact":
        order = ranks(ops.bitwise_and(hashes, 0x7FFFFFFF))
        return ops.less(order, ops.cast(num_to_keep, order.dtype))
    return ops.less(uniform_from_hashes(hashes), keep_probability)


def kept_positions(mask, num_kept):
    """The positions where `mask` is true, ascending, as `num_kept` int32.

    `num_kept` is a Python int: the number of true entries. Like `ranks`, no
    sort and no data-dependent shape: slot s picks the entry with s true
    entries before it.
    """
    count = mask.shape[0]
    trues_before = _trues_before(mask)
    slots = ops.expand_dims(
        ops.convert_to_tensor(list(range(num_kept)), "int32"), 1
    )
    picks = ops.logical_and(ops.equal(trues_before, slots), mask)
    positions = ops.convert_to_tensor(list(range(count)), "int32")
    return ops.sum(ops.multiply(ops.cast(picks, "int32"), positions), axis=1)


def slots_of(mask, num_kept):
    """For each position of `mask`, the slot `kept_positions` gives it: the
    number of true entries before it. Positions that are not true get a
    valid slot too (clipped to `num_kept - 1`), for use under a `where`."""
    return ops.minimum(_trues_before(mask), num_kept - 1)


def _trues_before(mask):
    flags = ops.cast(mask, "int32")
    index_before = _lower_triangle(mask.shape[0], "int32")
    return ops.sum(ops.multiply(index_before, flags), axis=1)


def numpy_keep_mask(seed, step, count, num_to_keep, sampling, keep_probability):
    return host_keep_mask(
        seed_hash(seed), step, index_offsets(count), num_to_keep, sampling,
        keep_probability,
    )


def host_keep_mask(seed_int32, step, offsets, num_to_keep, sampling,
                   keep_probability):
    """`keep_mask(block_hashes(seed_int32, step, offsets), ...)` computed
    with NumPy on the host, bit for bit: the subset an eager PyTorch step
    draws without device operations. `keep_probability` must be the float32
    value the device path uses."""
    hashes = _host_block_hashes(seed_int32, step, offsets)
    if sampling == "exact":
        scores = hashes.view(np.int32) & 0x7FFFFFFF
        ranks = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
        return ranks < num_to_keep
    uniform = (hashes >> 8).astype(np.float32) / float(1 << 24)
    return uniform < np.float32(keep_probability)
