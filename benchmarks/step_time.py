"""Training step time of RandomPartStack against plain models, per backend.

For a stack of L transformer blocks (keras_hub.layers.TransformerEncoder,
dropout 0.1) this measures, in one run:

- `plain L`: a plain model running all L blocks (the full model);
- `plain k`: a plain model holding only k blocks (the limit for RaPTr at k);
- `raptr k`: a RandomPartStack of L blocks running k per step (first and last
  fixed), driven by a one-stage StageScheduler as in real use (the step is
  traced for k: straight-line work over gathered weights on JAX/TF), for
  several k including k = L;
- `dynamic k`: the same stack with `keep_count` set and no scheduler (the
  step reads the keep count at run time: one conditional per block on
  JAX/TF), at every k < L;
- with `--stacked`, `stacked k`: a prototype layout that holds the middle
  blocks' weights stacked between steps (`stacked_layout.py`);
- with `--idle`, `idle k`: a plain k-block model that holds the other
  L - k blocks idle, with the zero gradient and optimizer update a skipped
  block gets (the limit for RaPTr under that semantics), at every k < L.

The model is BERT-pretraining shaped: embedding, the blocks, and an MLM head
on the 15% masked positions.

Each configuration runs in its own process (clean peak memory and compile
counts) and reports the median over repetitions of the time per training
step of `model.fit`, the peak memory above the process's state after import,
the number of traces of the training step after warm-up (0 = no retrace),
and the compile + first-steps time. The table gives ratios to the limit and to
the full model.

    .venv/bin/python benchmarks/step_time.py   # all backends, CPU sizes
    .venv/bin/python benchmarks/step_time.py --backends jax --size gpu
    # An A/B of RaPTr at k = 2 against its two limits, three rounds:
    .venv/bin/python benchmarks/step_time.py --backends torch --keeps 2 \
        --models raptr,idle,plain --processes 3

Prints a Markdown table; `--json PATH` also writes the raw records.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

SIZES = {
    # CPU: small enough for a 2-core machine, large enough that a block is
    # real work (about 1.9 GFLOP forward per block and step).
    "cpu": dict(layers=8, dim=128, heads=4, ff=512, seq=128, batch=32,
                vocab=8000, steps=8, reps=5, warmup=3),
    # GPU: BERT-Base shaped.
    # 40 steps per timed `fit` call (not 10), so that its fixed cost
    # (building the data adapter and callbacks) is spread over more steps of
    # tens of ms each.
    "gpu": dict(layers=12, dim=768, heads=12, ff=3072, seq=128, batch=128,
                vocab=30522, steps=40, reps=3, warmup=3),
}


MODELS = ("plain", "raptr", "dynamic", "stacked", "idle")
STACKED_HELP = (
    "also `stacked k`: the prototype layout that holds the middle blocks' "
    "weights stacked between steps (benchmarks/stacked_layout.py), at "
    "every k"
)
IDLE_HELP = (
    "also `idle k`: a plain k-block model that holds the other L - k blocks "
    "idle, with the zero gradient and optimizer update a skipped block gets "
    "(the limit for RaPTr under that semantics), at every k < L"
)


def _idle_blocks_class():
    import keras

    from keras_raptr.src.layers import random_part_stack

    class IdleBlocks(keras.layers.Layer):
        """Holds blocks that never run but get what a skipped block gets:
        a zero gradient, so the optimizer updates them (AdamW: moments and
        weight decay) at every step. Returns its input."""

        def __init__(self, blocks, **kwargs):
            super().__init__(**kwargs)
            self.blocks = blocks

        def build(self, input_shape):
            for block in self.blocks:
                block.build(input_shape)

        def call(self, x):
            return random_part_stack._with_zero_gradient_to(x, self.blocks)

        def compute_output_shape(self, input_shape):
            return input_shape

    return IdleBlocks


def build_model(s, kind, keep, block_class=None):
    """Embedding -> L (or k) TransformerEncoders -> MLM head on the masked
    positions (15%), as in BERT pretraining. Returns (model, data, labels)."""
    import keras
    import keras_hub
    import numpy as np

    import keras_raptr

    block_class = block_class or keras_hub.layers.TransformerEncoder
    IdleBlocks = _idle_blocks_class()
    num_blocks = keep if kind == "plain" else s["layers"]
    blocks = [
        block_class(s["ff"], s["heads"], dropout=0.1, activation="gelu",
                    name=f"block_{i}")
        for i in range(num_blocks)
    ]
    masked = max(1, s["seq"] * 15 // 100)
    tokens = keras.Input((s["seq"],), dtype="int32")
    positions = keras.Input((masked,), dtype="int32")
    x = keras.layers.Embedding(s["vocab"], s["dim"])(tokens)
    x = keras.layers.LayerNormalization()(x)
    if kind == "plain":
        for block in blocks:
            x = block(x)
    elif kind == "idle":  # k blocks run, the other L - k only held
        for block in blocks[:keep]:
            x = block(x)
        x = IdleBlocks(blocks[keep:])(x)
    elif kind == "stacked":  # a prototype layout (`stacked_layout.py`)
        from stacked_layout import StackedMiddle

        x = blocks[0](x)
        x = StackedMiddle(blocks[1], num_blocks - 2, keep - 2)(x)
        x = blocks[-1](x)
    else:
        x = keras_raptr.RandomPartStack(blocks, keep_count=keep)(x)
    x = keras.ops.take_along_axis(x, keras.ops.expand_dims(positions, -1), 1)
    logits = keras.layers.Dense(s["vocab"], dtype="float32")(x)
    model = keras.Model([tokens, positions], logits)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=s["jit_compile"],
    )
    rng = np.random.default_rng(0)
    n = s["batch"] * s["steps"]
    data = [
        rng.integers(0, s["vocab"], (n, s["seq"]), dtype="int32"),
        np.sort(rng.permuted(np.tile(np.arange(s["seq"]), (n, 1)), axis=1)
                [:, :masked], axis=1).astype("int32"),
    ]
    labels = rng.integers(0, s["vocab"], (n, masked), dtype="int32")
    return model, data, labels


def _worker(config):
    os.environ["KERAS_BACKEND"] = config["backend"]
    import resource

    import keras
    import keras_hub
    import numpy as np

    import keras_raptr

    backend = keras.config.backend()
    if config.get("mixed_precision"):
        keras.mixed_precision.set_global_policy(config["mixed_precision"])

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    base_rss = rss_mb()
    traces = [0]

    class Traced(keras_hub.layers.TransformerEncoder):
        def call(self, inputs, training=None, **kwargs):
            traces[0] += 1
            return super().call(inputs, training=training, **kwargs)

    s = config
    kind, keep = s["kind"], s["keep"]
    dynamo = backend == "torch" and s["jit_compile"]
    if dynamo:
        # A Python counter in the step makes Dynamo guard on its value and
        # compile again at every step; count Dynamo's graphs instead.
        import torch

        graphs = torch._dynamo.utils.counters["stats"]
        model, data, labels = build_model(s, kind, keep)
    else:
        model, data, labels = build_model(s, kind, keep, Traced)

    def trace_count():
        return graphs["unique_graphs"] if dynamo else traces[0]
    callbacks = []
    if kind == "raptr":
        callbacks = [keras_raptr.StageScheduler(
            [(keep, None)], allow_partial_final=True, verbose=0)]

    def fit(steps):
        model.fit([d[: s["batch"] * steps] for d in data],
                  labels[: s["batch"] * steps],
                  batch_size=s["batch"], epochs=1, verbose=0, shuffle=False,
                  callbacks=callbacks)

    start = time.perf_counter()
    fit(s["warmup"])
    compile_s = time.perf_counter() - start
    traces_after_warmup = trace_count()
    times, cpu_times = [], []
    for _ in range(s["reps"]):
        start, cpu_start = time.perf_counter(), time.process_time()
        fit(s["steps"])
        times.append((time.perf_counter() - start) / s["steps"])
        cpu_times.append((time.process_time() - cpu_start) / s["steps"])
    peak_mb = None
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            peak_mb = stats["peak_bytes_in_use"] / 2**20
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            peak_mb = torch.cuda.max_memory_allocated() / 2**20
    if peak_mb is None:
        maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_mb = maxrss_mb - base_rss
    return dict(
        ms=1000 * float(np.median(times)),
        ms_min=1000 * float(np.min(times)),
        cpu_ms=1000 * float(np.median(cpu_times)),
        peak_mb=peak_mb,
        retraces=trace_count() - traces_after_warmup,
        compile_s=compile_s,
        device=_device_name(backend),
    )


def _device_name(backend):
    try:
        if backend == "jax":
            import jax

            return str(jax.devices()[0].device_kind)
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
    except Exception:  # device naming is informational only
        pass
    return platform.processor() or platform.machine()


def _variants(backend):
    if backend == "tensorflow":
        return [("tf.function", False), ("XLA", True)]
    if backend == "torch":
        return [("eager", False)]
    return [("jit", True)]


def _run_config(config):
    """Runs one configuration in a worker process. Its `PROGRESS` lines are
    printed as they come (a run stopped at a time limit keeps them); its
    `RESULT` line is returned."""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(config)],
            stdout=subprocess.PIPE, stderr=errors, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        result = None
        for line in process.stdout:
            if line.startswith("PROGRESS "):
                print(line[len("PROGRESS "):].rstrip(), flush=True)
            elif line.startswith("RESULT "):
                result = {**config, **json.loads(line[len("RESULT "):])}
        process.wait()
        if result is not None:
            return result
        errors.seek(0)
        raise RuntimeError(
            f"benchmark worker failed for {config}:\n{errors.read()[-3000:]}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--keeps", default=None,
                        help="comma-separated k values (default L/4, L/2, L)")
    parser.add_argument("--mixed-precision", default=None)
    parser.add_argument("--torch-compile", action="store_true",
                        help="also measure torch with jit_compile=True")
    parser.add_argument("--modes", default=None,
                        help="comma-separated subset of the modes to measure: "
                        "jit (JAX), tf.function, XLA (TF), eager, compile "
                        "(torch); default all")
    parser.add_argument("--models", default="plain,raptr,dynamic",
                        help="comma-separated subset of the models to "
                        f"measure: {', '.join(MODELS)} (default plain,raptr,"
                        "dynamic; --stacked and --idle add theirs). `plain` "
                        "measures plain k and the full model plain L")
    parser.add_argument("--processes", type=int, default=1,
                        help="run each configuration in this many processes, "
                        "interleaved (an A/B: one round of every model, then "
                        "the next), and report the fastest process's median "
                        "and, from 2 processes, the means over them (TF on a "
                        "2-core CPU settles per process into one of two "
                        "speeds, about 275 or 325 ms for the same model)")
    parser.add_argument("--stacked", action="store_true",
                        help=STACKED_HELP)
    parser.add_argument("--idle", action="store_true", help=IDLE_HELP)
    parser.add_argument("--batch", type=int, default=None,
                        help="batch size (default: the size's)")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timed `fit` call (default: the "
                        "size's)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--table-from", default=None, metavar="JSON",
                        help="print the table of an earlier run's --json "
                        "records and exit")
    parser.add_argument("--end-to-end", action="store_true",
                        help="train the full model and RaPTr (--schedule) for "
                        "--e2e-steps steps each; report wall time per stage")
    parser.add_argument("--schedule", default=None,
                        help="end-to-end schedule (default: L/2 .. L in 4 "
                        "equal stages, e.g. 6-8-10-12 for L=12)")
    parser.add_argument("--e2e-steps", type=int, default=None)
    parser.add_argument("--compile-ahead", choices=["on", "off", "both"],
                        default="on",
                        help="end-to-end: StageScheduler(compile_ahead=...) "
                        "for the RaPTr run; 'both' runs RaPTr twice (it "
                        "matters on JAX only)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        config = json.loads(args.worker)
        run = _e2e_worker if config.get("mode") == "e2e" else _worker
        print("RESULT " + json.dumps(run(config)), flush=True)
        return
    known_modes = ("jit", "tf.function", "XLA", "eager", "compile")
    if args.modes and set(args.modes.split(",")) - set(known_modes):
        parser.error(f"--modes takes a comma-separated subset of "
                     f"{known_modes}, got {args.modes!r}")
    models = set(args.models.split(","))
    if models - set(MODELS):
        parser.error(f"--models takes a comma-separated subset of {MODELS}, "
                     f"got {args.models!r}")
    if args.stacked:
        models.add("stacked")
    if args.idle:
        models.add("idle")
    if args.end_to_end:
        return end_to_end(args)
    if args.table_from:
        with open(args.table_from) as f:
            records = json.load(f)
        return print_table(records, dict(SIZES[args.size]))

    size = dict(SIZES[args.size])
    for name in ("batch", "steps"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name} takes a positive int; got {value}")
            size[name] = value
    layers = size["layers"]
    if args.keeps:
        try:
            keeps = [int(k) for k in args.keeps.split(",")]
        except ValueError:
            keeps = None
        if keeps is None or not all(2 <= k <= layers for k in keeps):
            parser.error(
                f"--keeps takes comma-separated keep counts in [2, {layers}] "
                f"for --size {args.size} (L = {layers}; the first and last "
                f"block are fixed), got {args.keeps!r}")
    else:
        keeps = [max(layers // 4, 2), layers // 2, layers]
    keeps = sorted(set(keeps))
    try:
        from tqdm import tqdm
    except ImportError:  # progress bar is optional
        def tqdm(x, **kwargs):
            return x
    jobs = []
    for backend in args.backends.split(","):
        variants = _variants(backend)
        if backend == "torch" and args.torch_compile:
            variants.append(("compile", True))
        if args.modes:
            variants = [v for v in variants if v[0] in args.modes.split(",")]
        for variant, jit in variants:
            for kind, keep in (
                [("plain", layers)]
                + [("plain", k) for k in keeps if k < layers]
                + [("raptr", k) for k in keeps]
                + [("dynamic", k) for k in keeps if k < layers]
                + [("stacked", k) for k in keeps]
                + [("idle", k) for k in keeps if k < layers]
            ):
                if kind not in models:
                    continue
                jobs.append(dict(size, backend=backend, variant=variant,
                                 jit_compile=jit, kind=kind, keep=keep,
                                 mixed_precision=args.mixed_precision))
    if args.processes < 1:
        parser.error(f"--processes must be >= 1, got {args.processes}")
    runs = [[] for _ in jobs]
    rounds = [(i, job) for _ in range(args.processes)
              for i, job in enumerate(jobs)]
    failed = []
    for i, job in tqdm(rounds, desc="configs x processes"):
        # One failed configuration (a backend missing, out of memory) is
        # reported and skipped: the others still make the table. Each result
        # is printed and saved as it comes, so a run stopped at a time limit
        # keeps what it finished.
        try:
            record = _run_config(job)
        except RuntimeError as error:
            failed.append(str(error).splitlines()[0])
            print(f"FAILED {error}", flush=True)
            continue
        runs[i].append(record)
        print(f"done: {job['backend']} {job['variant']} {job['kind']} "
              f"k={job['keep']}: {record['ms']:.1f} ms/step, "
              f"peak {record['peak_mb']:.0f} MB, "
              f"compile+warm-up {record['compile_s']:.1f} s", flush=True)
        if args.json:
            _save_json(args.json, runs)
    records = _best_of_processes(runs)
    if records:
        print_table(records, size)
    for message in failed:
        print(message)
    if args.json:
        _save_json(args.json, runs)
    if failed:
        sys.exit(1)


def _best_of_processes(runs):
    records = []
    for group in runs:
        if group:
            best = min(group, key=lambda r: r["ms"])
            records.append(dict(
                best, ms_processes=[r["ms"] for r in group],
                cpu_ms_processes=[r["cpu_ms"] for r in group]))
    return records


def _save_json(path, runs):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_best_of_processes(runs), f, indent=1)


def _e2e_worker(config):
    os.environ["KERAS_BACKEND"] = config["backend"]
    import keras
    from keras import ops

    import keras_raptr
    from keras_raptr.src.callbacks.schedule import parse_schedule
    from keras_raptr.src.callbacks.schedule import stage_starts

    if config.get("mixed_precision"):
        keras.mixed_precision.set_global_policy(config["mixed_precision"])
    s = dict(config, steps=config["e2e_steps"])
    kind = "raptr" if config["method"].startswith("raptr") else "plain"
    model, data, labels = build_model(s, kind, s["layers"])
    keeps, lengths = parse_schedule(config["schedule"])
    starts = stage_starts(keeps, lengths, "steps", s["steps"])
    marks, first_steps = [], []

    def report():  # the stage that just ended, as a PROGRESS line
        (begin, t0), (end, t1) = marks[-2], marks[-1]
        keep = keeps[len(marks) - 2] if kind == "raptr" else s["layers"]
        print(f"PROGRESS   {config['method']}: stage {len(marks) - 1} "
              f"({keep} of {s['layers']}): {end - begin} steps in "
              f"{t1 - t0:.1f} s, first step {first_steps[-1] - t0:.1f} s",
              flush=True)

    class StageClock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch in starts:  # block until the previous steps finished
                ops.convert_to_numpy(self.model.optimizer.iterations)
                marks.append((batch, time.perf_counter()))
                if len(marks) > 1:
                    report()

        def on_train_batch_end(self, batch, logs=None):
            if batch in starts:  # the stage's first step holds its compile
                ops.convert_to_numpy(self.model.optimizer.iterations)
                first_steps.append(time.perf_counter())

        def on_train_end(self, logs=None):
            ops.convert_to_numpy(self.model.optimizer.iterations)
            marks.append((s["steps"], time.perf_counter()))
            report()

    callbacks = [StageClock()]
    scheduler = None
    if kind == "raptr":
        scheduler = keras_raptr.StageScheduler(
            config["schedule"], total_steps=s["steps"], verbose=0,
            compile_ahead=config.get("compile_ahead", True))
        # After the clock: a stage's wait for its compile (a compile ahead
        # still running) then counts in its own first step, not the stage
        # before.
        callbacks.append(scheduler)
    start = time.perf_counter()
    history = model.fit(data, labels, batch_size=s["batch"], epochs=1,
                        verbose=0, shuffle=False, callbacks=callbacks)
    total = time.perf_counter() - start
    stages = []
    tokens = s["batch"] * s["seq"]
    compile_seconds = scheduler.compile_seconds if scheduler else {}
    for number, ((begin, t0), (end, t1), first, keep) in enumerate(zip(
            marks, marks[1:], first_steps, keeps), start=1):
        stages.append(dict(keep=keep if kind == "raptr" else s["layers"],
                           compile_s=compile_seconds.get(number),
                           steps=end - begin, seconds=t1 - t0,
                           first_step_s=first - t0,
                           tokens_per_s=(end - begin) * tokens / (t1 - t0),
                           steady_tokens_per_s=(end - begin - 1) * tokens
                           / (t1 - first)))
    # The training window: the first step's start to the end of training.
    # `fit` itself can return much later: on TensorFlow, destroying the
    # `tf.data` iterator of NumPy input at the end of `fit` sometimes waits
    # 35-45 s for a tf.data worker thread (seen with py-spy), at random,
    # whatever the model. That is not training time.
    return dict(total_s=marks[-1][1] - marks[0][1], fit_s=total, stages=stages,
                loss=float(history.history["loss"][-1]),
                device=_device_name(keras.config.backend()))


def end_to_end(args):
    size = dict(SIZES[args.size])
    layers = size["layers"]
    schedule = args.schedule or "-".join(
        str(layers // 2 + round(i * (layers - layers // 2) / 3))
        for i in range(4))
    steps = args.e2e_steps or 8 * size["steps"]
    print(f"End to end: L={layers}, schedule {schedule} over {steps} steps, "
          f"batch {size['batch']} x seq {size['seq']}\n")
    print("| backend | method | stage (k of L) | steps | wall s | first step "
          "s (incl. compile) | step compile s (StageScheduler) | tokens/s | "
          "tokens/s after the first step |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary, tails = [], []
    for backend in args.backends.split(","):
        # Keras' default: XLA for JAX, tf.function for TF on CPU, eager torch.
        variants = _variants(backend)
        if args.modes:
            variants = [v for v in variants if v[0] in args.modes.split(",")]
        if not variants:
            continue
        variant, jit = variants[0]
        totals, steady = {}, {}
        methods = {"baseline": True}
        if args.compile_ahead in ("on", "both"):
            methods["raptr"] = True
        if args.compile_ahead in ("off", "both"):
            methods["raptr, no compile ahead"] = False
        for method, ahead in methods.items():
            r = _run_config(dict(size, backend=backend, variant=variant,
                                 jit_compile=jit, mode="e2e", method=method,
                                 schedule=schedule, e2e_steps=steps,
                                 compile_ahead=ahead,
                                 mixed_precision=args.mixed_precision))
            totals[method] = r["total_s"]
            steady[method] = sum(
                st["seconds"] - st["first_step_s"] for st in r["stages"])
            for stage in r["stages"]:
                compiled = stage["compile_s"]
                compiled = "-" if compiled is None else f"{compiled:.1f}"
                print(f"| {backend} ({variant}) | {method} | {stage['keep']} "
                      f"of {layers} | {stage['steps']} | "
                      f"{stage['seconds']:.1f} | {stage['first_step_s']:.1f} | "
                      f"{compiled} | {stage['tokens_per_s']:.0f} | "
                      f"{stage['steady_tokens_per_s']:.0f} |")
            if r["fit_s"] - r["total_s"] > 1.0:
                tails.append(f"{backend} {method}: `fit` took "
                             f"{r['fit_s']:.1f} s, "
                             f"{r['fit_s'] - r['total_s']:.1f} s of it "
                             "outside the training window (not counted)")
            first = sum(st["first_step_s"] for st in r["stages"])
            compiled = [st["compile_s"] for st in r["stages"]]
            compiled = ("-" if None in compiled
                        else f"{sum(compiled):.1f}")
            print(f"| {backend} ({variant}) | {method} | total | {steps} | "
                  f"{r['total_s']:.1f} | {first:.1f} | {compiled} | "
                  f"{steps * size['batch'] * size['seq'] / r['total_s']:.0f} "
                  f"| - |")
        for method in methods:
            if method != "baseline":
                summary.append((backend, method,
                                totals[method] / totals["baseline"],
                                steady[method] / steady["baseline"]))
    print()
    for tail in tails:
        print(tail)
    for backend, method, ratio, steady_ratio in summary:
        print(f"{backend}: {method} wall time / baseline wall time = "
              f"{ratio:.3f} (all steps); {steady_ratio:.3f} (without each "
              "stage's first step, which holds its compile)")


def _record_like(records, r, kind, keep):
    """The record of `kind` at `keep` measured on r's backend and mode, or
    None."""
    return next((q for q in records if q["backend"] == r["backend"]
                 and q["variant"] == r["variant"] and q["kind"] == kind
                 and q["keep"] == keep), None)


def print_table(records, size):
    print(
        f"\nL={size['layers']} blocks (TransformerEncoder dim={size['dim']}, "
        f"heads={size['heads']}, ff={size['ff']}, dropout 0.1), "
        f"seq={size['seq']}, batch={size['batch']}, AdamW; median of "
        f"{size['reps']} x {size['steps']} steps, fastest of "
        f"{max(len(r['ms_processes']) for r in records)} process(es).\n"
    )
    print("| backend | mode | model | k of L | ms/step | vs limit (plain k) "
          "| vs full (plain L) | CPU ms/step | CPU vs limit | ms/step per "
          "process | peak MB | retraces | compile+warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        full = _record_like(records, r, "plain", size["layers"])
        limit = _record_like(records, r, "plain", r["keep"])
        vs_limit = f"{r['ms'] / limit['ms']:.3f}" if limit else "-"
        vs_full = f"{r['ms'] / full['ms']:.3f}" if full else "-"
        cpu_vs_limit = (
            f"{r['cpu_ms'] / limit['cpu_ms']:.3f}" if limit else "-"
        )
        retraces = "eager" if r["variant"] == "eager" else str(r["retraces"])
        print(
            f"| {r['backend']} | {r['variant']} | {r['kind']} | "
            f"{r['keep']} of {size['layers']} | {r['ms']:.1f} | {vs_limit} | "
            f"{vs_full} | {r['cpu_ms']:.0f} | "
            f"{cpu_vs_limit} | "
            f"{' / '.join(f'{ms:.1f}' for ms in r['ms_processes'])} | "
            f"{r['peak_mb']:.0f} | {retraces} | "
            f"{r['compile_s']:.1f} |"
        )
    if max(len(r["ms_processes"]) for r in records) > 1:
        print_means(records, size)


def print_means(records, size):
    """The means over processes, against plain k, idle k and plain L: the
    read for an A/B where one machine's processes differ more than the
    target (wall / CPU time; CPU is '-' in records saved before it was
    kept per process)."""

    def means(r):
        cpu = r.get("cpu_ms_processes")
        return (sum(r["ms_processes"]) / len(r["ms_processes"]),
                sum(cpu) / len(cpu) if cpu else None)

    def ratio(r, kind, keep):
        other = _record_like(records, r, kind, keep)
        if other is None:
            return "-"
        (ms, cpu), (other_ms, other_cpu) = means(r), means(other)
        cpu_ratio = f"{cpu / other_cpu:.3f}" if cpu and other_cpu else "-"
        return f"{ms / other_ms:.3f} / {cpu_ratio}"

    print("\nMeans over the processes (wall / CPU):\n")
    print("| backend | mode | model | k of L | processes | mean ms/step | "
          "mean CPU ms/step | vs plain k | vs idle k | vs plain L |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        ms, cpu = means(r)
        print(
            f"| {r['backend']} | {r['variant']} | {r['kind']} | "
            f"{r['keep']} of {size['layers']} | {len(r['ms_processes'])} | "
            f"{ms:.1f} | {f'{cpu:.0f}' if cpu else '-'} | "
            f"{ratio(r, 'plain', r['keep'])} | "
            f"{ratio(r, 'idle', r['keep'])} | "
            f"{ratio(r, 'plain', size['layers'])} |"
        )


if __name__ == "__main__":
    main()
