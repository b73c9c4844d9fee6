"""keras_raptr demo: a small residual model trained with a RaPTr schedule.

Prints, per stage: keep count, steps, mean step time and loss.
Run through `bash scripts/demo.sh` (sets up .venv first).
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_raptr  # noqa: E402


def residual_block(dim, name):
    inputs = keras.Input((dim,))
    h = keras.layers.Dense(4 * dim, activation="gelu")(inputs)
    h = keras.layers.Dense(dim)(h)
    outputs = keras.layers.LayerNormalization()(inputs + h)
    return keras.Model(inputs, outputs, name=name)


class StageTimer(keras.callbacks.Callback):
    def __init__(self, scheduler):
        super().__init__()
        self.scheduler = scheduler
        self.rows = {}

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        k = self.scheduler.current_keep_count
        row = self.rows.setdefault(k, {"steps": 0, "time": 0.0})
        row["steps"] += 1
        row["time"] += time.perf_counter() - self._start
        row["loss"] = float(logs["loss"])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--schedule", default="6-8-10-12")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.steps * args.batch, args.dim)).astype("float32")
    w = rng.normal(size=(args.dim, 1)).astype("float32") / np.sqrt(args.dim)
    y = np.tanh(x @ w) + 0.1 * np.sin(3 * x[:, :1])

    inputs = keras.Input((args.dim,))
    stack = keras_raptr.RandomPartStack(
        [residual_block(args.dim, f"block_{i}") for i in range(args.blocks)]
    )
    model = keras.Model(inputs, keras.layers.Dense(1)(stack(inputs)))
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    scheduler = keras_raptr.StageScheduler(
        args.schedule, total_steps=args.steps
    )
    timer = StageTimer(scheduler)
    model.fit(
        x, y, batch_size=args.batch, epochs=1, callbacks=[scheduler, timer]
    )
    print(f"\nbackend={keras.config.backend()} blocks={args.blocks}")
    print(f"{'keep':>5} {'steps':>6} {'ms/step':>8} {'loss':>8}")
    for k, row in timer.rows.items():
        ms = 1000 * row["time"] / row["steps"]
        print(f"{k:>5} {row['steps']:>6} {ms:>8.2f} {row['loss']:>8.4f}")


if __name__ == "__main__":
    main()
