"""Helpers for the resume / interruption tests of `StageScheduler`."""

import keras
import numpy as np
from keras import ops

from tests.common import counts
from tests.common import make_model


class Interrupted(Exception):
    """Raised by `InterruptAt` to simulate a crash in the middle of fit."""


class InterruptAt(keras.callbacks.Callback):
    """Raises `Interrupted` before the `at`-th batch of this `fit` call."""

    def __init__(self, at):
        super().__init__()
        self.at = at
        self.seen = 0

    def on_train_batch_begin(self, batch, logs=None):
        if self.seen == self.at:
            raise Interrupted(f"interrupted before batch {self.seen} of fit")
        self.seen += 1


class StepLosses(keras.callbacks.Callback):
    """Per-step training losses, keyed by the stack's global step.

    Keras reports the running mean of the loss over the epoch; with equal
    batch sizes the loss of batch `b` is `(b + 1) * m_b - b * m_(b-1)`.
    The global step of the first batch is read from the stack once, at the
    first epoch start (after `BackupAndRestore` has restored the weights);
    later steps are counted here, independently of the scheduler.
    """

    def __init__(self, stack, scheduler=None):
        super().__init__()
        self.stack = stack
        self.scheduler = scheduler
        self.losses = {}
        self.first_keep_count = None
        self._next = None
        self._previous_mean = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if self._next is None:
            self._next = int(ops.convert_to_numpy(self.stack.step))
        self._previous_mean = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        if self.first_keep_count is None and self.scheduler is not None:
            # Runs after the scheduler (placed later in the list).
            self.first_keep_count = self.scheduler.current_keep_count

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self.losses[self._next] = (batch + 1) * mean - batch * (
            self._previous_mean
        )
        self._previous_mean = mean
        self._next += 1

    def series(self, start, stop):
        return np.array([self.losses[step] for step in range(start, stop)])


def keep_per_step(stages, num_steps):
    """Keep count at each of the first `num_steps` steps of explicit
    `(keep_count, length)` stages (last length may be None)."""
    keep = []
    for keep_count, length in stages:
        keep += [keep_count] * (num_steps if length is None else length)
    return (keep + [stages[-1][0]] * num_steps)[:num_steps]


def equal_stages(keep_counts, total_steps):
    """Explicit stages equivalent to a string schedule over total steps."""
    n = len(keep_counts)
    starts = [i * total_steps // n for i in range(n)] + [total_steps]
    return [
        (keep_counts[i], starts[i + 1] - starts[i]) for i in range(n - 1)
    ] + [(keep_counts[-1], None)]


def fresh_model(initial_weights=None, optimizer="adam", **stack_kwargs):
    """A compiled 6-block model (fixed blocks 0 and 5), keep count 2."""
    stack_kwargs.setdefault("keep_count", 2)
    model, stack, blocks = make_model(num_blocks=6, **stack_kwargs)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    model.compile(
        keras.optimizers.get(optimizer) if isinstance(optimizer, str)
        else optimizer,
        "mse",
    )
    return model, stack, blocks


def repeated_batches(num_batches, batch_size=8, dim=4, seed=0):
    """`num_batches` copies of one batch: a replayed epoch sees the same
    data as the uninterrupted run at every global step."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch_size, dim)).astype("float32")
    y = rng.normal(size=(batch_size, 1)).astype("float32")
    return np.tile(x, (num_batches, 1)), np.tile(y, (num_batches, 1))


def step_of(stack):
    return int(ops.convert_to_numpy(stack.step))


def keep_of(stack):
    return int(ops.convert_to_numpy(stack.keep_count))




@keras.saving.register_keras_serializable("keras_raptr_tests")
class PreNormBlock(keras.layers.Layer):
    """`x + dense2(gelu(dense1(layer_norm(x))))`, a pre-LN residual block
    like a transformer MLP; counts its executions like CountingBlock."""

    def __init__(self, hidden=16, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden

    def build(self, input_shape):
        dim = input_shape[-1]
        self.norm = keras.layers.LayerNormalization(name="norm")
        self.norm.build(input_shape)
        self.dense1 = keras.layers.Dense(
            self.hidden, activation="gelu", name="dense1"
        )
        self.dense1.build(input_shape)
        self.dense2 = keras.layers.Dense(dim, name="dense2")
        self.dense2.build(tuple(input_shape[:-1]) + (self.hidden,))
        self.count = self.add_weight(
            name="count", shape=(), dtype="int32", initializer="zeros",
            trainable=False,
        )

    def call(self, x, training=None):
        self.count.assign_add(1)
        return x + self.dense2(self.dense1(self.norm(x)))

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden}


def make_prenorm_model(num_blocks=8, dim=8, **stack_kwargs):
    import keras_raptr

    blocks = [PreNormBlock(name=f"block_{i}") for i in range(num_blocks)]
    inputs = keras.Input((dim,))
    stack = keras_raptr.RandomPartStack(blocks, name="stack", **stack_kwargs)
    h = keras.layers.LayerNormalization(name="final_norm")(stack(inputs))
    outputs = keras.layers.Dense(1, name="head")(h)
    return keras.Model(inputs, outputs), stack, blocks


# -- a training process to kill (run as `python -m tests.resume_helpers`) --

WORKER_STAGES = [(2, 8), (4, 8), (6, None)]
WORKER_STEPS_PER_EPOCH = 6


class _Progress(keras.callbacks.Callback):
    """Appends one JSON line per finished step to `progress.jsonl`."""

    def __init__(self, path, stack, delay):
        super().__init__()
        self.path = path
        self.stack = stack
        self.delay = delay
        self.next = None

    def _write(self, event):
        import json
        import os

        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def on_epoch_begin(self, epoch, logs=None):
        if self.next is None:  # after BackupAndRestore restored the state
            self.next = step_of(self.stack)
            self._write({"start": self.next, "epoch": epoch})

    def on_train_batch_end(self, batch, logs=None):
        import time

        self._write({"step": self.next})
        self.next += 1
        time.sleep(self.delay)

    def on_train_end(self, logs=None):
        self._write(
            {
                "final": {
                    "step": step_of(self.stack),
                    "keep_count": keep_of(self.stack),
                    "counts": counts(self.stack.blocks).tolist(),
                    "stages": WORKER_STAGES,
                }
            }
        )


def run_worker(workdir, epochs=4, delay=0.1):
    """Trains with BackupAndRestore (every 4 steps) and ModelCheckpoint
    (every epoch, `.keras`); a restart resumes from the backup."""
    import os

    import keras_raptr

    keras.utils.set_random_seed(0)
    model, stack, blocks = fresh_model()
    x, y = repeated_batches(WORKER_STEPS_PER_EPOCH)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[
            keras_raptr.StageScheduler(WORKER_STAGES, verbose=0),
            keras.callbacks.BackupAndRestore(
                os.path.join(workdir, "backup"),
                save_freq=4,
                double_checkpoint=True,
                delete_checkpoint=False,
            ),
            keras.callbacks.ModelCheckpoint(
                os.path.join(workdir, "ckpt_{epoch}.keras")
            ),
            _Progress(os.path.join(workdir, "progress.jsonl"), stack, delay),
        ],
    )


def check_checkpoints_readable(workdir):
    """Loads every checkpoint in `workdir`; returns the backup's step and
    the step of each `.keras` checkpoint."""
    import glob
    import os
    import shutil

    result = {"backup_step": None, "keras_steps": {}}
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
        path = os.path.join(workdir, "backup", name)
        if not os.path.exists(path):
            continue
        if name.endswith(".bkp"):  # Keras reads only `*.weights.h5`
            copy = os.path.join(workdir, "previous.weights.h5")
            shutil.copy(path, copy)
            path = copy
        model, stack, _ = fresh_model()
        model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
        if name == "latest.weights.h5":
            result["backup_step"] = step_of(stack)
    for path in sorted(glob.glob(os.path.join(workdir, "ckpt_*.keras"))):
        model = keras.saving.load_model(path)
        result["keras_steps"][os.path.basename(path)] = step_of(
            model.get_layer("stack")
        )
    return result


if __name__ == "__main__":
    import sys

    run_worker(sys.argv[1])
