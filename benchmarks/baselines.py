"""RaPTr against the paper's baselines at equal block FLOPs, on a toy task.

The paper's Figure 2 trains a 20-block residual network on labels built from
polynomials of degrees 1 to 10 and compares RaPTr with Progressive Layer
Dropping (PLD) at 20% fewer FLOPs than the full model: RaPTr reaches the full
model's loss and learns the higher degrees in its later stages; PLD ends
worse, mostly on the high degrees. Its exact task is not available to us;
this is our version of it:

- Task: 16-d Gaussian x; y = sum over d = 1..6 of He_d(w_d . x) / sqrt(d!)
  (probabilists' Hermite polynomials of unit-norm random projections, as in
  `scaling_ablation.py`, here with every coefficient 1). The terms are
  orthonormal, so the held-out mean of prediction x term d says how much of
  degree d the model has learnt (1 = all of it).
- Model: 20 pre-LN residual MLP blocks (`scaling_ablation.ResidualMLP`),
  width 64; Adam, its learning rate on one cosine decay to 0 over the run;
  fresh samples every step.
- Methods, each at 80% of the full model's block FLOPs except the first:
  - `full`: all 20 blocks for all steps (100%);
  - `full, 80% of the steps`: the equal-FLOPs full model (its cosine
    decay over its own steps);
  - `raptr`: `RandomPartStack` + `StageScheduler("12-16-20")` (first and
    last block fixed; 12, 16 then 20 blocks over equal stages);
    `raptr_expectation` the same with `scaling="expectation"`;
  - `pld`: PLD (Zhang & He, 2020): block l of L is kept with probability
    1 - (l / L)(1 - theta(t)), theta(t) = (1 - 0.5) exp(-gamma t) + 0.5, its
    branch scaled by 1 / keep; gamma is solved so that the expected kept
    blocks average 80% over training;
  - `stacking`: gradual stacking (Reddi et al., 2023): 12, 16 then 20
    blocks over equal stages; at each growth the new blocks start as copies
    of the top blocks below them (fresh Adam moments per stage).
  PLD and stacking are implemented here, for this comparison only: PLD
  computes every block and masks it, so its FLOPs are counted, not saved.

Prints a table (held-out loss at the end, as a fraction of Var(y); the
share of each degree learnt; the paper's Figure 3d loss gap between the
model and its one-block-dropped subnetworks), writes the curves to `--out`
(JSON and a PNG).

    KERAS_BACKEND=jax .venv/bin/python benchmarks/baselines.py
"""

import argparse
import json
import math
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scaling_ablation import ResidualMLP  # noqa: E402

import keras_raptr  # noqa: E402
from keras_raptr.src.callbacks.schedule import ResolvedSchedule  # noqa: E402
from keras_raptr.src.callbacks.schedule import parse_schedule  # noqa: E402
from keras_raptr.src.callbacks.schedule import stage_starts  # noqa: E402

DEGREES = 6
PLD_THETA_BAR = 0.5  # the DeepSpeed default


def hermite(degree, z):
    """Probabilists' Hermite polynomial He_degree(z), by recurrence."""
    previous, current = np.ones_like(z), z
    if degree == 0:
        return previous
    for n in range(1, degree):
        previous, current = current, z * current - n * previous
    return current


def make_data(num, dim, seed):
    """x, y and the unit-variance terms of y (num, DEGREES)."""
    rng = np.random.default_rng(1234)  # the task is fixed across seeds
    directions = rng.normal(size=(DEGREES, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    x = np.random.default_rng(seed).normal(size=(num, dim))
    z = x @ directions.T
    terms = np.stack(
        [hermite(d + 1, z[:, d]) / math.sqrt(math.factorial(d + 1))
         for d in range(DEGREES)],
        axis=1,
    )
    y = terms.sum(axis=1, keepdims=True)
    return x.astype("float32"), y.astype("float32"), terms


def stage_plan(schedule, steps):
    """`schedule`'s equal stages over `steps`, split as `StageScheduler`
    splits them (RaPTr's keep counts; stacking's depths)."""
    keeps, _ = parse_schedule(schedule)
    return ResolvedSchedule(keeps, stage_starts(keeps, None, "steps", steps))


def pld_gamma(target, steps, num_blocks, theta_bar=PLD_THETA_BAR):
    """The gamma at which PLD's expected kept fraction, averaged over
    `steps`, equals `target` (bisection; the fraction falls as gamma
    grows)."""
    t = np.arange(steps)
    factor = (num_blocks + 1) / (2 * num_blocks)  # mean of l / L over l

    def average(gamma):
        theta = (1 - theta_bar) * np.exp(-gamma * t) + theta_bar
        return float(np.mean(1 - factor * (1 - theta)))

    if not average(1e3) < target < 1:
        raise ValueError(
            f"PLD with theta_bar={theta_bar} cannot average {target:.3f} of "
            f"the blocks over {steps} steps (lowest: {average(1e3):.3f})"
        )
    low, high = 0.0, 1e3
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if average(middle) > target else (
            low, middle)
    return (low + high) / 2


class ProgressiveLayerDrop(keras.layers.Layer):
    """PLD over residual blocks (each returns x + branch): block l of L is
    kept with probability 1 - (l / L)(1 - theta(t)) and its branch scaled by
    1 / keep; every block is computed and masked. Evaluation runs all."""

    def __init__(self, blocks, gamma, theta_bar=PLD_THETA_BAR, seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        self.blocks = blocks
        self.gamma = gamma
        self.theta_bar = theta_bar
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.step = self.add_weight(
            name="step", shape=(), dtype="int32", initializer="zeros",
            trainable=False,
        )

    def build(self, shape):
        for block in self.blocks:
            block.build(shape)

    def theta(self, step):
        t = ops.cast(step, "float32")
        return (1 - self.theta_bar) * ops.exp(-self.gamma * t) + self.theta_bar

    def call(self, x, training=None):
        if not training:
            for block in self.blocks:
                x = block(x)
            return x
        theta = self.theta(self.step.value)
        self.step.assign_add(1)
        num_blocks = len(self.blocks)
        for index, block in enumerate(self.blocks, start=1):
            keep = 1 - (index / num_blocks) * (1 - theta)
            draw = keras.random.uniform((), seed=self.seed_generator)
            scale = ops.where(draw < keep, 1 / keep, 0.0)
            x = x + ops.cast(scale, x.dtype) * (block(x) - x)
        return x


class CosineFrom(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay from `peak` to 0 over `total` steps, the optimizer's
    step 0 being step `offset` of the run (stacking starts a new optimizer
    at each stage, on the one schedule of the run)."""

    def __init__(self, peak, total, offset=0):
        self.peak, self.total, self.offset = peak, total, offset

    def __call__(self, step):
        t = ops.minimum(ops.cast(step, "float32") + self.offset, self.total)
        return self.peak * 0.5 * (1 + ops.cos(math.pi * t / self.total))

    def get_config(self):
        return {"peak": self.peak, "total": self.total, "offset": self.offset}


class HeldOut(keras.callbacks.Callback):
    """Every `every` steps (and at the end): held-out loss / Var(y) and the
    share of each degree learnt, at the step count the run has reached."""

    def __init__(self, data, every, offset=0):
        super().__init__()
        self.x, self.y, self.terms = data
        self.every = every
        self.offset = offset  # steps run before this `fit` (stacking)
        self.curve = []

    def measure(self, step):
        prediction = self.model.predict(self.x, batch_size=4096, verbose=0)
        prediction = np.asarray(prediction, dtype="float64")
        loss = float(np.mean((prediction - self.y) ** 2) / np.var(self.y))
        learnt = (self.terms * prediction).mean(axis=0)
        self.curve.append({"step": step, "loss": loss,
                           "learnt": [float(v) for v in learnt]})

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0:
            self.measure(self.offset + batch + 1)

    def on_train_end(self, logs=None):
        self.measure(self.offset + self.params["steps"])


def build(args, stack_of=None, depth=None):
    """The toy model: input projection, blocks (optionally wrapped by
    `stack_of`), final LayerNorm and a linear head."""
    inputs = keras.Input((args.dim,))
    h = keras.layers.Dense(args.width, name="embed")(inputs)
    blocks = [ResidualMLP(2 * args.width, name=f"block_{i}")
              for i in range(depth or args.blocks)]
    if stack_of is None:
        for block in blocks:
            h = block(h)
    else:
        h = stack_of(blocks)(h)
    h = keras.layers.LayerNormalization(name="final_norm")(h)
    outputs = keras.layers.Dense(1, name="head")(h)
    return keras.Model(inputs, outputs), blocks


def run(method, args, seed, held_out):
    keras.utils.set_random_seed(seed)
    steps = args.steps
    if method == "full_80":
        steps = int(round(args.flops * args.steps))
    x, y, _ = make_data(args.steps * args.batch, args.dim, seed)
    callbacks = []
    if method == "stacking":
        return run_stacking(args, x, y, held_out)
    if method in ("raptr", "raptr_expectation"):
        scaling = "expectation" if method == "raptr_expectation" else "none"
        model, blocks = build(args, lambda blocks: keras_raptr.RandomPartStack(
            blocks, scaling=scaling, seed=seed))
        callbacks.append(keras_raptr.StageScheduler(args.schedule, verbose=0))
    elif method == "pld":
        gamma = pld_gamma(args.flops, steps, args.blocks)
        model, blocks = build(args, lambda blocks: ProgressiveLayerDrop(
            blocks, gamma, seed=seed))
    else:
        model, blocks = build(args)
    recorder = HeldOut(held_out, args.eval_every)
    model.compile(keras.optimizers.Adam(CosineFrom(args.lr, steps)), "mse")
    model.fit(x[: steps * args.batch], y[: steps * args.batch],
              batch_size=args.batch, epochs=1, shuffle=False, verbose=0,
              callbacks=callbacks + [recorder])
    return recorder.curve, loss_gap(model, blocks, held_out)


def run_stacking(args, x, y, held_out):
    """Gradual stacking: one `fit` per stage on a model of that depth; the
    blocks added at a growth start as copies of the top blocks below them."""
    plan = stage_plan(args.schedule, args.steps)
    curve, previous = [], None
    for stage, depth in enumerate(plan.keep_counts):
        offset, end = plan.bounds(stage)
        length = min(end, args.steps) - offset
        if previous is None:
            model, blocks = build(args, depth=depth)
        else:
            model, blocks = grow(*previous, args, depth)
        recorder = HeldOut(held_out, args.eval_every, offset=offset)
        schedule = CosineFrom(args.lr, args.steps, offset)
        model.compile(keras.optimizers.Adam(schedule), "mse")
        rows = slice(offset * args.batch, (offset + length) * args.batch)
        model.fit(x[rows], y[rows], batch_size=args.batch, epochs=1,
                  shuffle=False, verbose=0, callbacks=[recorder])
        curve += recorder.curve
        previous = (model, blocks)
    return curve, loss_gap(*previous, held_out)


def loss_gap(model, blocks, data):
    """L(F) - mean over l of L(F_-l) (the paper's Figure 3d): the trained
    model's held-out loss minus the mean loss with one block dropped, over
    every block, each as a fraction of Var(y). Negative: the full model is
    better than its one-block-dropped subnetworks."""
    x, y, _ = data

    def loss(dropped):
        h = model.get_layer("embed")(x)
        for index, block in enumerate(blocks):
            if index != dropped:
                h = block(h)
        h = model.get_layer("head")(model.get_layer("final_norm")(h))
        h = np.asarray(ops.convert_to_numpy(h), dtype="float64")
        return float(np.mean((h - y) ** 2) / np.var(y))

    return loss(None) - float(np.mean([loss(i) for i in range(len(blocks))]))


def grow(model, blocks, args, depth):
    """A model of `depth` blocks: the old weights, and each new block a copy
    of one of the top `depth - len(blocks)` old blocks, in order."""
    new_model, new_blocks = build(args, depth=depth)
    for name in ("embed", "final_norm", "head"):
        new_model.get_layer(name).set_weights(
            model.get_layer(name).get_weights())
    grown = depth - len(blocks)
    if not 0 < grown <= len(blocks):
        raise ValueError(f"Cannot grow {len(blocks)} blocks to {depth} by "
                         "copying the top ones")
    sources = blocks + blocks[len(blocks) - grown:]
    for block, source in zip(new_blocks, sources):
        block.set_weights(source.get_weights())
    return new_model, new_blocks


METHODS = {
    "full": "full model",
    "full_80": "full model, 80% of the steps",
    "raptr": "RaPTr",
    "raptr_expectation": "RaPTr, scaling='expectation'",
    "pld": "PLD",
    "stacking": "gradual stacking",
}


def block_flops(method, args):
    if method == "full":
        return 1.0
    if method in ("raptr", "raptr_expectation", "stacking"):
        plan = stage_plan(args.schedule, args.steps)
        return plan.mean_keep_count(args.steps) / args.blocks
    return args.flops  # full_80 by its steps, pld by its gamma


def plot(results, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for method, runs in results.items():
        steps = [p["step"] for p in runs[0]["curve"]]
        losses = np.mean([[p["loss"] for p in r["curve"]] for r in runs], 0)
        left.plot(steps, losses, label=METHODS[method])
    for start in stage_plan(args.schedule, args.steps).starts[1:]:
        left.axvline(start, color="0.3", linewidth=0.8, linestyle=":")
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_ylabel("held-out MSE / Var(y)")
    left.set_title("Held-out loss (dotted: stage boundaries)")
    left.legend()
    width = 0.8 / len(results)
    for i, (method, runs) in enumerate(results.items()):
        learnt = np.mean([r["curve"][-1]["learnt"] for r in runs], 0)
        right.bar(np.arange(1, DEGREES + 1) + (i - len(results) / 2) * width
                  + width / 2, learnt, width, label=METHODS[method])
    right.axhline(1.0, color="0.3", linewidth=0.8)
    right.set_xlabel("degree of the term")
    right.set_ylabel("share learnt at the end (1 = all)")
    right.set_title("Which terms each method learnt")
    figure.suptitle(
        f"{args.blocks}-block residual MLP, {args.steps} steps, "
        f"mean of {args.seeds} seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="peak learning rate (cosine decay to 0)")
    parser.add_argument("--schedule", default="12-16-20",
                        help="RaPTr keep counts and stacking depths")
    parser.add_argument("--flops", type=float, default=0.8,
                        help="block-FLOPs fraction of the PLD and "
                             "equal-FLOPs full-model runs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="runs/baselines")
    args = parser.parse_args()
    methods = args.methods.split(",")
    for method in methods:
        if method not in METHODS:
            parser.error(f"--methods: unknown {method!r}; expected some of "
                         f"{', '.join(METHODS)}")
    try:
        keeps = stage_plan(args.schedule, args.steps).keep_counts
    except ValueError as error:
        parser.error(f"--schedule: {error}")
    if not 0 < args.flops < 1:
        parser.error(f"--flops must be in (0, 1); got {args.flops}")
    if "pld" in methods:
        try:
            pld_gamma(args.flops, args.steps, args.blocks)
        except ValueError as error:
            parser.error(f"--flops: {error}")
    if keeps[-1] != args.blocks:
        parser.error(f"--schedule must end at --blocks ({args.blocks}); "
                     f"got {args.schedule}")
    held_out = make_data(16384, args.dim, seed=99_999)
    results = {}
    try:
        from tqdm import tqdm
    except ImportError:  # progress bar is optional
        def tqdm(x, **kwargs):
            return x
    jobs = [(m, s) for m in methods for s in range(args.seeds)]
    for method, seed in tqdm(jobs, desc="runs"):
        curve, gap = run(method, args, seed, held_out)
        results.setdefault(method, []).append(
            {"seed": seed, "curve": curve, "loss_gap": gap})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "backend": keras.config.backend(),
                   "results": results}, f)
    plot(results, args, os.path.join(args.out, "baselines.png"))

    print(f"\n{args.blocks} blocks, width {args.width}, {args.steps} steps x "
          f"{args.batch}, Adam lr {args.lr} cosine to 0, schedule "
          f"{args.schedule}, "
          f"{args.seeds} seeds, backend {keras.config.backend()}\n")
    header = " | ".join(f"degree {d}" for d in range(1, DEGREES + 1))
    print(f"| method | block FLOPs | held-out MSE / Var(y) (per seed) | "
          f"{header} | L(F) - mean L(F_-l) |")
    print("|---|---|---|" + "---|" * DEGREES + "---|")
    for method, runs in results.items():
        losses = [r["curve"][-1]["loss"] for r in runs]
        learnt = np.mean([r["curve"][-1]["learnt"] for r in runs], 0)
        per_seed = " / ".join(f"{v:.3f}" for v in losses)
        shares = " | ".join(f"{v:.2f}" for v in learnt)
        gap = np.mean([r["loss_gap"] for r in runs])
        print(f"| {METHODS[method]} | {block_flops(method, args):.0%} | "
              f"{np.mean(losses):.3f} ({per_seed}) | {shares} | "
              f"{gap:+.3f} |")
    print(f"\nCurves: {args.out}/results.json, {args.out}/baselines.png")


if __name__ == "__main__":
    main()
