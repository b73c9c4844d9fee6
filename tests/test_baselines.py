"""The baselines of benchmarks/baselines.py (PLD, gradual stacking) and its
task: the comparison in docs/benchmarks.md rests on them."""

import argparse
import math

import keras
import numpy as np
import pytest
from keras import ops

from tests.common import load_script

baselines = load_script("benchmarks", "baselines.py")


def test_terms_are_orthonormal_and_sum_to_the_label():
    # So the held-out mean of prediction x term d is the share of degree d.
    # Exact moments by Gauss-Hermite quadrature (weight exp(-z^2 / 2)).
    from numpy.polynomial import hermite_e

    nodes, weights = hermite_e.hermegauss(30)
    weights = weights / weights.sum()
    terms = np.stack([
        baselines.hermite(d, nodes) / np.sqrt(math.factorial(d))
        for d in range(1, baselines.DEGREES + 1)
    ])
    for d in range(1, baselines.DEGREES + 1):  # the recurrence is He_d
        np.testing.assert_allclose(
            baselines.hermite(d, nodes),
            hermite_e.hermeval(nodes, [0] * d + [1]), rtol=1e-9, atol=1e-6,
        )
    np.testing.assert_allclose((terms * weights) @ terms.T,
                               np.eye(baselines.DEGREES), atol=1e-9)
    _, y, data_terms = baselines.make_data(1000, 16, seed=0)
    np.testing.assert_allclose(data_terms.sum(axis=1), y[:, 0], rtol=1e-5,
                               atol=1e-5)


def test_pld_gamma_matches_the_flops_target():
    steps, blocks = 3000, 20
    gamma = baselines.pld_gamma(0.8, steps, blocks)
    t = np.arange(steps)
    theta = 0.5 * np.exp(-gamma * t) + 0.5
    keep = [1 - (i / blocks) * (1 - theta) for i in range(1, blocks + 1)]
    assert abs(np.mean(keep) - 0.8) < 1e-6


def test_pld_gamma_refuses_an_unreachable_target():
    # theta_bar = 0.5 keeps at least 1 - 0.5 * 21 / 40 of 20 blocks.
    with pytest.raises(ValueError, match="cannot average 0.700"):
        baselines.pld_gamma(0.7, 1000, 20)


class Counter(keras.layers.Layer):
    """Adds 1 to its input: the stack's output counts the kept blocks."""

    def call(self, x):
        return x + 1.0


def test_pld_keeps_each_block_with_its_probability_and_scales_it():
    blocks = [Counter() for _ in range(4)]
    gamma = 0.05
    stack = baselines.ProgressiveLayerDrop(blocks, gamma, seed=3)
    x = ops.zeros((1, 1))
    stack(x)  # build
    totals = []
    for step in range(400):
        theta = 0.5 * np.exp(-gamma * step) + 0.5
        keeps = [1 - (i / 4) * (1 - theta) for i in range(1, 5)]
        out = float(ops.convert_to_numpy(stack(x, training=True))[0, 0])
        # Each kept block adds 1 / keep: the output is a subset sum.
        sums = [sum(1 / k for k, m in zip(keeps, mask) if m)
                for mask in np.ndindex(2, 2, 2, 2)]
        assert min(abs(out - s) for s in sums) < 1e-4, (out, sums)
        totals.append(out)
    # Scaled by 1 / keep, each block adds 1 in expectation.
    assert abs(np.mean(totals) - 4.0) < 0.25
    assert int(ops.convert_to_numpy(stack.step)) == 400
    # Evaluation runs every block, unscaled.
    assert float(ops.convert_to_numpy(stack(x, training=False))[0, 0]) == 4.0


def test_stacking_grows_by_copying_the_top_blocks():
    args = argparse.Namespace(dim=3, width=4, blocks=5)
    model, blocks = baselines.build(args, depth=3)
    grown, new_blocks = baselines.grow(model, blocks, args, depth=5)
    assert len(new_blocks) == 5
    for new, old in zip(new_blocks, blocks + blocks[1:]):
        for a, b in zip(new.get_weights(), old.get_weights()):
            np.testing.assert_array_equal(a, b)
    for name in ("embed", "final_norm", "head"):
        for a, b in zip(grown.get_layer(name).get_weights(),
                        model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Cannot grow 5 blocks to 11"):
        baselines.grow(grown, new_blocks, args, depth=11)
