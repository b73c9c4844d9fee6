"""Probe: a sort in an XLA-compiled TensorFlow step slows its Dropout.

Times one gradient step (`tf.function(jit_compile=True)`) of four
`keras_hub.layers.TransformerEncoder` blocks (dropout 0.1), each run through
`stateless_call` on weights and seed state gathered at an index, the way
`RandomPartStack`'s straight-line path runs its kept blocks. Only where the
indices come from differs:

- `direct`: no gathering, the blocks are called as they are;
- `variable`: the indices are a variable's value;
- `int-ops`: the variable's value through a few integer ops;
- `sort`: the variable's value through `ops.sort`;
- `argsort`: `argsort` of random scores, then `sort` (keras_raptr's subset
  draw before it stopped sorting).

On a 2-core CPU (TF 2.21.0, keras 3.15.1) `sort` and `argsort` took about 9 x
as long as the others (`docs/benchmarks.md`). Usage:

    python benchmarks/xla_sort_probe.py [--dropout 0.1] [--modes direct,sort]
"""

import argparse
import os
import time

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

MODES = ("direct", "variable", "int-ops", "sort", "argsort")
NUM_BLOCKS = 4


def kept_indices(mode, index_variable):
    indices = index_variable.value
    if mode == "int-ops":
        mixed = ops.bitwise_xor(ops.multiply(indices, 3), 5)
        return ops.add(indices, ops.bitwise_and(mixed, 0))
    if mode == "sort":
        return ops.sort(indices)
    if mode == "argsort":
        scores = tf.random.stateless_uniform((NUM_BLOCKS,), seed=[1, 2])
        return ops.sort(ops.argsort(scores))
    return indices


def time_step(mode, dropout, steps=6):
    keras.utils.set_random_seed(0)
    blocks = [
        keras_hub.layers.TransformerEncoder(512, 4, dropout=dropout)
        for _ in range(NUM_BLOCKS)
    ]
    x = np.random.default_rng(0).standard_normal((32, 128, 128))
    x = x.astype("float32")
    for block in blocks:
        block.build(x.shape)
    weights = [v for block in blocks for v in block.trainable_variables]
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(weights)
    index_variable = keras.Variable(
        np.arange(NUM_BLOCKS, dtype="int32"), trainable=False
    )

    def stacked(variables_of):
        columns = zip(*[variables_of(block) for block in blocks])
        return [ops.stack([v.value for v in column]) for column in columns]

    def forward(x):
        if mode == "direct":
            for block in blocks:
                x = block(x, training=True)
            return x
        trainable = stacked(lambda b: b.trainable_variables)
        state = stacked(lambda b: b.non_trainable_variables)
        kept = kept_indices(mode, index_variable)
        for slot in range(NUM_BLOCKS):
            index = kept[slot]
            x, _ = blocks[0].stateless_call(
                [ops.take(w, index, axis=0) for w in trainable],
                [ops.take(v, index, axis=0) for v in state],
                x,
                training=True,
            )
        return x

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(forward(x)))
        gradients = tape.gradient(loss, [v.value for v in weights])
        optimizer.apply(gradients, weights)
        return loss

    for _ in range(3):
        step(x)
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step(x).numpy()
        seconds.append(time.perf_counter() - start)
    return 1000 * float(np.median(seconds))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(
            f"Invalid --modes {unknown}. Expected a comma-separated subset "
            f"of {', '.join(MODES)}."
        )
    print(f"| indices (dropout {args.dropout}) | ms/step |")
    print("|---|---|")
    for mode in modes:
        print(f"| {mode} | {time_step(mode, args.dropout):.1f} |", flush=True)


if __name__ == "__main__":
    main()
