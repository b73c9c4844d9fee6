"""Probe: what a stage start costs on TensorFlow, and where the time goes.

TensorFlow traces the training step again at every stage (`docs/design.md`).
This runs the CPU model of `benchmarks/step_time.py` (8 TransformerEncoder
blocks, first and last fixed) through the schedule 2-4-6-8, a few steps per
stage, and prints for each stage the time of its first step (trace, graph
optimization and one step) and the median of its other steps.

`--profile` also runs the whole `fit` under cProfile and prints how the
Python trace of the training steps splits into the forward pass, the
gradient and the optimizer update.

`--optimizer-in-own-function` puts the optimizer update in a `tf.function` of
its own, traced once and called by every stage's step, to measure how much of
a stage start that part is. It replaces the compiled optimizer's `apply` on
this model. This is an experiment, not a keras_raptr feature:
`tf.distribute` does not allow the update's `merge_call` inside a nested
`tf.function`.

    python benchmarks/tf_stage_starts.py [--steps-per-stage 4] [--profile]
"""

import argparse
import cProfile
import os
import pstats
import sys
import time

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from step_time import SIZES  # noqa: E402
from step_time import build_model  # noqa: E402

import keras_raptr  # noqa: E402

KEEP_COUNTS = (2, 4, 6, 8)


class StepTimes(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def optimizer_in_own_function(model):
    """Traces `model.optimizer.apply` once, as its own `tf.function`."""
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    apply, variables = optimizer.apply, model.trainable_variables

    @tf.function(autograph=False)
    def update(grads):
        apply(grads, variables)

    optimizer.apply = lambda grads, trainable_variables=None: update(
        list(grads)
    )


def profile_split(profile):
    """Seconds of the Python trace of the training steps, by part."""
    stats = pstats.Stats(profile).stats
    parts = {
        "training steps (all)": ("tensorflow/trainer.py", "train_step"),
        "optimizer update": ("optimizers/base_optimizer.py", "apply"),
        "gradient": ("eager/backprop.py", "gradient"),
    }
    seconds = {}
    for name, (path, function) in parts.items():
        seconds[name] = sum(
            value[3] for (file, _, func), value in stats.items()
            if file.endswith(path) and func == function
        )
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps-per-stage", type=int, default=4)
    parser.add_argument("--optimizer-in-own-function", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.steps_per_stage < 2:
        parser.error("--steps-per-stage must be at least 2 (the first step "
                     f"holds the trace); received {args.steps_per_stage}")
    per = args.steps_per_stage
    size = dict(SIZES["cpu"], jit_compile=False, steps=per * len(KEEP_COUNTS))
    model, data, labels = build_model(size, "raptr", size["layers"])
    if args.optimizer_in_own_function:
        optimizer_in_own_function(model)
    scheduler = keras_raptr.StageScheduler(
        [(k, per) for k in KEEP_COUNTS[:-1]] + [(KEEP_COUNTS[-1], None)],
        verbose=0,
        # Each stage traces at its start, as this probe measures (tracing
        # ahead would move the trace into the stage before).
        compile_ahead=False,
    )
    timer = StepTimes()
    profile = cProfile.Profile() if args.profile else None
    if profile:
        profile.enable()
    model.fit(data, labels, batch_size=size["batch"], epochs=1, verbose=0,
              shuffle=False, callbacks=[scheduler, timer])
    if profile:
        profile.disable()
    times = np.array(timer.times)
    print(f"TensorFlow {tf.__version__}, keras {keras.__version__}; "
          f"L={size['layers']} blocks, batch {size['batch']}, seq "
          f"{size['seq']}; tf.function; optimizer update in its own "
          f"function: {args.optimizer_in_own_function}\n")
    print("| stage | keep count | first step s | median other steps ms |")
    print("|---|---|---|---|")
    for stage, keep in enumerate(KEEP_COUNTS):
        stage_times = times[stage * per:(stage + 1) * per]
        print(f"| {stage + 1} | {keep} | {stage_times[0]:.2f} | "
              f"{1000 * np.median(stage_times[1:]):.0f} |")
    if profile:
        print("\nPython trace of the training steps under cProfile (every "
              "stage; the first stage traces twice, as its first trace "
              "creates the optimizer's variables):\n")
        print("| part | s |")
        print("|---|---|")
        for name, seconds in profile_split(profile).items():
            print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
