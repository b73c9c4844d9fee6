"""Soak run: thousands of RaPTr steps over 4 stages on a tiny model.

Checks that host memory (RSS) and, where the backend can report it, device
memory do not grow across steps and stages, and that nothing is traced or
compiled again after the first step: stage changes only write the
`keep_count` variable.

    KERAS_BACKEND=jax python benchmarks/soak.py --steps 4000

Prints a table per stage and exits with status 1 if a check fails.
Measured numbers: docs/reliability.md.
"""

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_raptr  # noqa: E402

BACKEND = keras.config.backend()
MIB = 1024 * 1024


def host_rss():
    """Resident set size of this process, in bytes (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return float("nan")


class Block(keras.layers.Layer):
    """Pre-LN residual MLP block; counts how often `call` is traced/run."""

    def __init__(self, hidden, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.calls = 0

    def build(self, input_shape):
        self.norm = keras.layers.LayerNormalization()
        self.norm.build(input_shape)
        self.up = keras.layers.Dense(self.hidden, activation="gelu")
        self.up.build(input_shape)
        self.down = keras.layers.Dense(input_shape[-1])
        self.down.build(tuple(input_shape[:-1]) + (self.hidden,))
        self.drop = keras.layers.Dropout(0.1)

    def call(self, x, training=None):
        self.calls += 1
        h = self.down(self.up(self.norm(x)))
        return x + self.drop(h, training=training)


class CompileCounter:
    """Counts compilations: JAX backend compiles (jax.monitoring), TF
    traces of the train step, torch.compile graphs (0 when eager)."""

    def __init__(self, model):
        self.model = model
        self.jax_compiles = 0
        self.tf_traces = 0
        if BACKEND == "tensorflow":
            # `train_step` runs in Python only while tf.function traces it.
            train_step = model.train_step

            def counting_train_step(*args, **kwargs):
                self.tf_traces += 1
                return train_step(*args, **kwargs)

            model.train_step = counting_train_step
        if BACKEND == "jax":
            import jax

            def listener(event, duration, **kwargs):
                if event == "/jax/core/compile/backend_compile_duration":
                    self.jax_compiles += 1

            jax.monitoring.register_event_duration_secs_listener(listener)

    def count(self):
        if BACKEND == "jax":
            return self.jax_compiles
        if BACKEND == "tensorflow":
            return self.tf_traces
        if BACKEND == "torch":
            from torch._dynamo.utils import counters

            return counters["stats"]["unique_graphs"]
        return -1


def device_memory():
    """Bytes the backend holds on its device; None where not measurable."""
    if BACKEND == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()
        if stats and "bytes_in_use" in stats:
            return stats["bytes_in_use"]
        # CPU: total bytes of live jax arrays (catches leaked buffers).
        return sum(a.nbytes for a in jax.live_arrays())
    if BACKEND == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["current"]
        return None
    if BACKEND == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.memory_allocated()
        return None
    return None


def device_name():
    if BACKEND == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if BACKEND == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return "GPU:0"
    return "cpu"


class Monitor(keras.callbacks.Callback):
    def __init__(self, stack, blocks, counter, every):
        super().__init__()
        self.stack = stack
        self.blocks = blocks
        self.counter = counter
        self.every = every
        self.samples = []  # (step, keep, time, rss, device, traces, compiles)
        self.step = 0
        self.keep = None
        self.after_first_epoch = None  # (traces, compiles)

    def on_epoch_end(self, epoch, logs=None):
        # Everything fit compiles once (train step, metric results, epoch
        # end) has run by the end of the first epoch.
        if self.after_first_epoch is None:
            self.after_first_epoch = (
                sum(block.calls for block in self.blocks),
                self.counter.count(),
            )

    def on_train_batch_begin(self, batch, logs=None):
        # Runs after the StageScheduler: its stage is the step's stage.
        self.keep = self.scheduler.current_keep_count

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0 or self.step == 1:
            self.samples.append(
                (
                    self.step,
                    self.keep,
                    time.perf_counter(),
                    host_rss(),
                    device_memory(),
                    sum(block.calls for block in self.blocks),
                    self.counter.count(),
                )
            )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--schedule", default="2-4-6-8")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--jit_compile", default="auto")
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=None,
        help="torch.set_num_threads (on a busy 2-core machine, 1 avoids "
        "thread oversubscription)",
    )
    parser.add_argument(
        "--rss_steady_mib",
        type=float,
        default=4.0,
        help="allowed RSS growth over the second half of any stage",
    )
    parser.add_argument(
        "--rss_stage_mib",
        type=float,
        default=32.0,
        help="allowed RSS growth per stage change (a new compiled step)",
    )
    parser.add_argument(
        "--compiles_per_stage",
        type=int,
        default=2,
        help="allowed compiles (JAX) / traces (TF) / graphs (torch.compile) "
        "at a stage change",
    )
    args = parser.parse_args(argv)
    num_stages = len(args.schedule.split("-"))
    if args.epochs < 2 * num_stages:
        parser.error(
            "--epochs must be at least twice the number of stages (stage 1 "
            "must hold the end of epoch 1, where fit compiles once)"
        )
    steps_per_epoch = args.steps // args.epochs
    total = steps_per_epoch * args.epochs
    jit = {"auto": "auto", "true": True, "false": False}[
        args.jit_compile.lower()
    ]

    if BACKEND == "torch" and args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    keras.utils.set_random_seed(0)
    blocks = [Block(4 * args.dim, name=f"b{i}") for i in range(args.blocks)]
    inputs = keras.Input((args.dim,))
    stack = keras_raptr.RandomPartStack(blocks, keep_count=2, name="stack")
    h = keras.layers.LayerNormalization()(stack(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.AdamW(1e-3), "mse", jit_compile=jit)
    counter = CompileCounter(model)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps_per_epoch * args.batch, args.dim))
    y = np.sin(x.sum(axis=1, keepdims=True))
    scheduler = keras_raptr.StageScheduler(args.schedule, verbose=0)
    monitor = Monitor(stack, blocks, counter, args.every)
    monitor.scheduler = scheduler
    start = time.perf_counter()
    history = model.fit(
        x.astype("float32"),
        y.astype("float32"),
        batch_size=args.batch,
        epochs=args.epochs,
        verbose=0,
        callbacks=[scheduler, monitor],
    )
    wall = time.perf_counter() - start
    return report(args, monitor, history, total, wall, stack)


def report(args, monitor, history, total, wall, stack):
    samples = monitor.samples
    keep_counts = [int(k) for k in args.schedule.split("-")]
    print(
        f"soak: backend={BACKEND} keras={keras.__version__} "
        f"device={device_name()} python={platform.python_version()} "
        f"machine={platform.machine()} cpus={os.cpu_count()}"
    )
    print(
        f"steps={total} epochs={args.epochs} schedule={args.schedule} "
        f"blocks={args.blocks} dim={args.dim} batch={args.batch} "
        f"wall={wall:.1f}s"
    )
    header = (
        "stage keep   steps  ms/step  rss_start  rss_end  dev_start"
        "  dev_end  block_traces  compiles"
    )
    print(header)
    rows = []
    for stage, keep in enumerate(keep_counts):
        # Samples taken while this stage ran (the first sample of the run,
        # before anything is warm, is excluded from timings).
        mine = [s for s in samples if s[1] == keep and s[0] > 1]
        if stage and keep == keep_counts[stage - 1]:
            continue
        if len(mine) < 2:
            print(f"{stage + 1:5d} {keep:4d}  (too few samples)")
            continue
        steps = mine[-1][0] - mine[0][0]
        ms = 1000 * (mine[-1][2] - mine[0][2]) / max(steps, 1)
        dev = [s[4] for s in mine]
        dev_start = "n/a" if dev[0] is None else f"{dev[0] / MIB:.2f}"
        dev_end = "n/a" if dev[-1] is None else f"{dev[-1] / MIB:.2f}"
        rows.append((stage, keep, mine))
        print(
            f"{stage + 1:5d} {keep:4d} {steps:7d} {ms:8.2f} "
            f"{mine[0][3] / MIB:9.1f} {mine[-1][3] / MIB:8.1f} "
            f"{dev_start:>10} {dev_end:>8} {mine[-1][5]:13d} "
            f"{mine[-1][6]:9d}"
        )

    failures = []
    step = int(ops.convert_to_numpy(stack.step))
    if step != total:
        failures.append(f"stack.step={step}, expected {total}")
    if int(ops.convert_to_numpy(stack.keep_count)) != keep_counts[-1]:
        failures.append("did not end in the last stage")
    losses = history.history["loss"]
    if not np.all(np.isfinite(losses)):
        failures.append(f"non-finite loss: {losses}")
    if len(rows) >= 2:
        failures += check_rows(args, monitor, rows)
    else:
        failures.append("too few samples; raise --steps or lower --every")
    for failure in failures:
        print("FAIL:", failure)
    print("soak: OK" if not failures else "soak: FAILED")
    return 1 if failures else 0


def check_rows(args, monitor, rows):
    """Memory and compile checks over the per-stage samples.

    - Within a stage nothing grows: RSS over the second half of each stage
      stays within `--rss_steady_mib`, device memory within 1 MiB, and the
      trace / compile counts are constant.
    - Across stages: a stage change may compile the step again (the
      expected count is the same at every change, `--compiles_per_stage`
      at most), and RSS may grow by at most `--rss_stage_mib` per change
      (room for one more compiled program).
    """
    failures = []
    eager = BACKEND == "torch" and args.jit_compile.lower() != "true"
    traced_first, compiles_first = monitor.after_first_epoch
    for stage, keep, mine in rows:
        half = mine[len(mine) // 2 :]
        rss = (half[-1][3] - half[0][3]) / MIB
        if rss > args.rss_steady_mib:
            failures.append(f"stage {stage + 1}: RSS grew {rss:.1f} MiB")
        if half[0][4] is not None and half[-1][4] is not None:
            dev = (half[-1][4] - half[0][4]) / MIB
            if dev > 1.0:
                failures.append(
                    f"stage {stage + 1}: device memory grew {dev:.2f} MiB"
                )
        if stage and mine[-1][6] != mine[0][6]:
            failures.append(
                f"stage {stage + 1}: compiled during the stage "
                f"({mine[0][6]} -> {mine[-1][6]})"
            )
        if stage and not eager and mine[-1][5] != mine[0][5]:
            failures.append(f"stage {stage + 1}: blocks traced again")
    # Stage 1 holds the end of epoch 1, where fit compiles its epoch-end
    # functions once; after it, nothing may compile within the stage.
    if rows[0][2][-1][6] != compiles_first:
        failures.append(
            f"stage 1: compiled after epoch 1 ({compiles_first} -> "
            f"{rows[0][2][-1][6]})"
        )
    changes = [
        rows[i + 1][2][0][6] - rows[i][2][-1][6] for i in range(len(rows) - 1)
    ]
    print(
        f"compiles after epoch 1: {compiles_first}; at each stage change: "
        f"{changes}; block traces after epoch 1: {traced_first}, at the "
        f"end: {rows[-1][2][-1][5]}"
    )
    if any(c > args.compiles_per_stage for c in changes):
        failures.append(
            f"more than {args.compiles_per_stage} compile(s) at a stage "
            f"change: {changes}"
        )
    rss_changes = [
        (rows[i + 1][2][-1][3] - rows[i][2][-1][3]) / MIB
        for i in range(len(rows) - 1)
    ]
    growth = (rows[-1][2][-1][3] - rows[0][2][-1][3]) / MIB
    print(
        "rss change from stage end to stage end (MiB): "
        + ", ".join(f"{c:+.1f}" for c in rss_changes)
        + f"; total {growth:+.1f}"
    )
    if growth > args.rss_stage_mib * len(rss_changes):
        failures.append(f"host RSS grew {growth:.1f} MiB across stages")
    first_dev, last_dev = rows[0][2][-1][4], rows[-1][2][-1][4]
    if first_dev is not None and last_dev is not None:
        print(f"device memory change: {(last_dev - first_dev) / MIB:+.2f} MiB")
    return failures


if __name__ == "__main__":
    sys.exit(main())
