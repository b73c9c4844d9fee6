"""Which `scaling` should RandomPartStack default to? A small measured answer.

Toy task in the spirit of the paper's Figure 2: a 12-block pre-LN residual MLP
learns y = sum_d c_d * He_d(w_d . x) / sqrt(d!) (Hermite polynomials of
degrees 1..6 of unit-norm random projections of Gaussian x, so each term has
unit variance). Each method trains for the same number of steps with
Adam; RaPTr runs the 6-8-10-12 schedule over equal stages (first and last
blocks fixed) with `scaling="none"` or `scaling="expectation"`. Reports the
held-out MSE of the full model at the end, relative to the variance of the
targets (1.0 = predicting the mean), as mean and spread over seeds.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/scaling_ablation.py
"""

import argparse
import math
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_raptr  # noqa: E402


class ResidualMLP(keras.layers.Layer):
    """Pre-LN residual block: x + W2 gelu(W1 LN(x))."""

    def __init__(self, hidden, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden

    def build(self, shape):
        self.norm = keras.layers.LayerNormalization()
        self.norm.build(shape)
        self.up = keras.layers.Dense(self.hidden, activation="gelu")
        self.up.build(shape)
        self.down = keras.layers.Dense(shape[-1])
        self.down.build(shape[:-1] + (self.hidden,))

    def call(self, x):
        return x + self.down(self.up(self.norm(x)))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


def make_data(num, dim, seed):
    rng = np.random.default_rng(1234)  # the task is fixed across seeds
    directions = rng.normal(size=(6, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    coefficients = rng.normal(size=6)
    x = np.random.default_rng(seed).normal(size=(num, dim))
    z = x @ directions.T
    hermite = [z[:, 0], z[:, 1] ** 2 - 1, z[:, 2] ** 3 - 3 * z[:, 2],
               z[:, 3] ** 4 - 6 * z[:, 3] ** 2 + 3,
               z[:, 4] ** 5 - 10 * z[:, 4] ** 3 + 15 * z[:, 4],
               z[:, 5] ** 6 - 15 * z[:, 5] ** 4 + 45 * z[:, 5] ** 2 - 15]
    y = sum(c * h / math.sqrt(math.factorial(d + 1))
            for d, (c, h) in enumerate(zip(coefficients, hermite)))
    return x.astype("float32"), y[:, None].astype("float32")


def train(method, args, seed):
    keras.utils.set_random_seed(seed)
    x, y = make_data(args.steps * args.batch, args.dim, seed)
    x_test, y_test = make_data(4096, args.dim, 10_000 + seed)
    inputs = keras.Input((args.dim,))
    h = keras.layers.Dense(args.width)(inputs)
    blocks = [ResidualMLP(2 * args.width) for _ in range(args.blocks)]
    callbacks = []
    if method == "baseline":
        for block in blocks:
            h = block(h)
    else:
        h = keras_raptr.RandomPartStack(blocks, scaling=method, seed=seed)(h)
        callbacks = [keras_raptr.StageScheduler(args.schedule, verbose=0)]
    outputs = keras.layers.Dense(1)(keras.layers.LayerNormalization()(h))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(args.lr), "mse")
    model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0,
              callbacks=callbacks)
    mse = float(ops.convert_to_numpy(
        model.evaluate(x_test, y_test, batch_size=1024, verbose=0)))
    return mse / float(np.var(y_test))  # 1.0 = predicting the mean


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", default="6-8-10-12")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    results = {}
    for method in ("baseline", "none", "expectation"):
        results[method] = [train(method, args, s) for s in range(args.seeds)]
        print(f"{method}: {results[method]}", flush=True)
    print(f"\n{args.blocks} blocks, width {args.width}, {args.steps} steps x "
          f"{args.batch}, Adam lr {args.lr}, schedule {args.schedule}, "
          f"{args.seeds} seeds, backend {keras.config.backend()}\n")
    print("| method | held-out MSE / Var(y), mean | min | max |")
    print("|---|---|---|---|")
    names = {"baseline": "full model (baseline)",
             "none": "RaPTr, scaling='none'",
             "expectation": "RaPTr, scaling='expectation'"}
    for method, values in results.items():
        print(f"| {names[method]} | {np.mean(values):.4f} | "
              f"{np.min(values):.4f} | {np.max(values):.4f} |")


if __name__ == "__main__":
    main()
