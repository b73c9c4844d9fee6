"""keras_raptr.wrap_backbone on KerasHub backbones (tiny configs, random
weights, no network)."""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

keras_hub = pytest.importorskip("keras_hub")

import keras_raptr  # noqa: E402
import keras_raptr.hub  # noqa: E402
from keras_raptr.src.layers import sampling  # noqa: E402
from tests.common import load_script  # noqa: E402

SEQ = 12
VOCAB = 97


def bert(num_layers=4, dropout=0.0):
    return keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        dropout=dropout,
        max_sequence_length=SEQ,
    )


def bert_inputs(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, SEQ), "int32")
    mask[0, SEQ - 3 :] = 0  # one padded example
    return {
        "token_ids": rng.integers(1, VOCAB, (batch, SEQ)).astype("int32"),
        "segment_ids": np.zeros((batch, SEQ), "int32"),
        "padding_mask": mask,
    }


def mlm_inputs(batch=3, seed=0):
    rng = np.random.default_rng(seed + 1)
    positions = np.stack(
        [rng.choice(SEQ - 3, 3, replace=False) for _ in range(batch)]
    )
    return {**bert_inputs(batch, seed), "mask_positions": positions.astype(
        "int32"
    )}


def numpy_tree(outputs):
    return keras.tree.map_structure(ops.convert_to_numpy, outputs)


def assert_same(a, b, atol=0.0):
    for x, y in zip(keras.tree.flatten(a), keras.tree.flatten(b)):
        np.testing.assert_allclose(
            ops.convert_to_numpy(x), ops.convert_to_numpy(y), atol=atol,
            rtol=0,
        )


def block_weights(blocks):
    return [
        [ops.convert_to_numpy(w).copy() for w in block.trainable_weights]
        for block in blocks
    ]


def changed_blocks(before, after):
    return np.array(
        [
            any(not np.array_equal(b, a) for b, a in zip(bw, aw))
            for bw, aw in zip(before, after)
        ]
    )


def expected_run(step, num_blocks, keep, fixed=(0, -1), seed=0):
    fixed = sorted(i % num_blocks for i in fixed)
    free = [i for i in range(num_blocks) if i not in fixed]
    p = (keep - len(fixed)) / len(free)
    mask = sampling.numpy_keep_mask(
        seed, step, len(free), keep - len(fixed), "exact", p
    )
    run = np.zeros(num_blocks, bool)
    run[fixed] = True
    run[np.array(free)[mask]] = True
    return run


# -- structure and equality ----------------------------------------------


def test_shares_weights_and_equals_original_at_keep_all():
    backbone = bert(dropout=0.0)
    raptr = keras_raptr.wrap_backbone(backbone)
    assert isinstance(raptr, keras_raptr.hub.RaptrBackbone)
    assert isinstance(raptr, keras_hub.models.Backbone)
    original_ids = {id(w) for w in backbone.weights}
    # Every original weight is reused (no copies); the stack adds only its
    # two int32 counters.
    assert original_ids <= {id(w) for w in raptr.weights}
    assert raptr.count_params() == backbone.count_params() + 2
    assert raptr.transformer_layers == backbone.transformer_layers
    assert raptr.token_embedding is backbone.token_embedding
    assert raptr.vocabulary_size == VOCAB and raptr.num_layers == 4
    x = bert_inputs()
    expected = numpy_tree(backbone(x, training=False))
    assert_same(raptr(x), expected)
    # keep = all blocks: the training path runs every block too.
    # (up to float rounding: on JAX the blocks run under `lax.cond`).
    assert_same(
        raptr(x, training=True), backbone(x, training=True), atol=1e-6
    )


def test_inference_runs_all_blocks_whatever_keep_count():
    backbone = bert()
    raptr = keras_raptr.wrap_backbone(backbone, keep_count=2)
    x = bert_inputs()
    assert_same(raptr(x), backbone(x))
    assert_same(raptr.predict(x, verbose=0), backbone.predict(x, verbose=0))


@pytest.mark.parametrize("keep", [2, 3])
def test_exactly_keep_count_blocks_train_per_step(keep):
    # Plain SGD leaves a skipped block's weights untouched (zero gradient),
    # so the blocks whose weights move are the blocks that ran.
    backbone = bert(num_layers=5, dropout=0.1)
    raptr = keras_raptr.wrap_backbone(backbone, keep_count=keep, seed=3)
    masked_lm = keras_hub.models.BertMaskedLM(backbone=raptr)
    masked_lm.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = mlm_inputs(batch=4)
    y = np.random.default_rng(2).integers(1, VOCAB, (4, 3)).astype("int32")
    blocks = backbone.transformer_layers
    for step in range(4):
        before = block_weights(blocks)
        masked_lm.train_on_batch(x, y)
        run = changed_blocks(before, block_weights(blocks))
        assert run.sum() == keep, (step, run)
        np.testing.assert_array_equal(
            run, expected_run(step, 5, keep, seed=3)
        )
    assert int(ops.convert_to_numpy(raptr.random_part_stack.step)) == 4


def test_stage_scheduler_drives_a_wrapped_masked_lm():
    backbone = bert(num_layers=4)
    raptr = keras_raptr.wrap_backbone(backbone, keep_count=2)
    masked_lm = keras_hub.models.BertMaskedLM(backbone=raptr)
    masked_lm.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = mlm_inputs(batch=8)
    y = np.random.default_rng(3).integers(1, VOCAB, (8, 3)).astype("int32")
    scheduler = keras_raptr.StageScheduler("2-3-4", total_steps=6, verbose=0)
    history = masked_lm.fit(
        x, y, batch_size=4, epochs=3, verbose=0, callbacks=[scheduler]
    )
    assert scheduler.current_keep_count == 4
    keep = int(ops.convert_to_numpy(raptr.random_part_stack.keep_count))
    assert keep == 4
    np.testing.assert_allclose(
        history.history["block_flops_saved"][-1], 1 - 3 / 4
    )


def test_text_classifier_accepts_wrapped_backbone():
    raptr = keras_raptr.wrap_backbone(bert(num_layers=3), keep_count=2)
    classifier = keras_hub.models.BertTextClassifier(
        backbone=raptr, num_classes=2, preprocessor=None
    )
    classifier.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = bert_inputs(batch=4)
    classifier.fit(x, np.array([0, 1, 0, 1]), batch_size=2, verbose=0)
    assert classifier.predict(x, verbose=0).shape == (4, 2)


# -- saving and export ---------------------------------------------------


def test_backbone_preset_round_trip(tmp_path):
    raptr = keras_raptr.wrap_backbone(
        bert(), keep_count=3, fixed=[0], sampling="bernoulli", seed=7
    )
    raptr.random_part_stack.keep_count.assign(2)
    x = bert_inputs()
    expected = numpy_tree(raptr(x))
    raptr.save_to_preset(str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["registered_name"] == "keras_raptr>RaptrBackbone"
    restored = keras_hub.models.Backbone.from_preset(str(tmp_path))
    assert isinstance(restored, keras_raptr.hub.RaptrBackbone)
    assert_same(restored(x), expected)
    stack = restored.random_part_stack
    assert (stack.fixed, stack.sampling, stack.seed) == ((0,), "bernoulli", 7)
    assert int(ops.convert_to_numpy(stack.keep_count)) == 2  # saved state
    config = restored.get_config()
    assert config["keep_count"] == 3
    again = keras_raptr.hub.RaptrBackbone.from_config(config)
    assert isinstance(again.unwrap(), keras_hub.models.BertBackbone)


def test_wrap_from_local_preset_directory(tmp_path):
    backbone = bert()
    backbone.save_to_preset(str(tmp_path))
    raptr = keras_raptr.wrap_backbone(str(tmp_path), keep_count=2)
    x = bert_inputs()
    assert_same(raptr(x), backbone(x))


def test_task_preset_round_trip(tmp_path):
    raptr = keras_raptr.wrap_backbone(bert(), keep_count=2)
    masked_lm = keras_hub.models.BertMaskedLM(backbone=raptr)
    x = mlm_inputs()
    expected = ops.convert_to_numpy(masked_lm(x))
    masked_lm.save_to_preset(str(tmp_path))
    restored = keras_raptr.hub.load_task_preset(str(tmp_path))
    assert isinstance(restored, keras_hub.models.BertMaskedLM)
    assert isinstance(restored.backbone, keras_raptr.hub.RaptrBackbone)
    assert_same(restored(x), expected)


def test_export_to_plain_bert_backbone(tmp_path):
    raptr = keras_raptr.wrap_backbone(bert(), keep_count=2)
    masked_lm = keras_hub.models.BertMaskedLM(backbone=raptr)
    masked_lm.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = mlm_inputs(batch=4)
    y = np.ones((4, 3), "int32")
    masked_lm.fit(x, y, batch_size=2, verbose=0)  # move the weights
    backbone_in = {k: v for k, v in x.items() if k != "mask_positions"}
    expected = numpy_tree(raptr(backbone_in))

    plain = raptr.unwrap()
    assert type(plain) is keras_hub.models.BertBackbone
    plain.save_to_preset(str(tmp_path / "plain"))
    with open(tmp_path / "plain" / "config.json") as f:
        assert json.load(f)["registered_name"] == "keras_hub>BertBackbone"
    # Standard weight names: a fresh BertBackbone loads the file.
    fresh = keras_hub.models.BertBackbone.from_preset(str(tmp_path / "plain"))
    assert_same(fresh(backbone_in), expected)
    classifier = keras_hub.models.BertTextClassifier.from_preset(
        str(tmp_path / "plain"), num_classes=2, preprocessor=None
    )
    assert classifier.predict(backbone_in, verbose=0).shape == (4, 2)

    plain_task = keras_raptr.hub.unwrap(masked_lm)
    assert type(plain_task.backbone) is keras_hub.models.BertBackbone
    assert_same(plain_task(x), masked_lm(x))


# -- beyond BERT ---------------------------------------------------------

NON_BERT = {
    "GPT2Backbone": dict(
        vocabulary_size=VOCAB, num_layers=3, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=SEQ,
    ),
    "LlamaBackbone": dict(
        vocabulary_size=VOCAB, num_layers=3, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=32, intermediate_dim=64,
    ),
    "DebertaV3Backbone": dict(  # blocks take a `rel_embeddings` kwarg
        vocabulary_size=VOCAB, num_layers=3, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=SEQ,
    ),
}


@pytest.mark.parametrize(
    "name", ["GPT2Backbone", "LlamaBackbone", "DebertaV3Backbone"]
)
def test_non_bert_backbones(name):
    backbone = getattr(keras_hub.models, name)(**NON_BERT[name])
    raptr = keras_raptr.wrap_backbone(backbone, keep_count=2)
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(1, VOCAB, (2, SEQ)).astype("int32"),
        "padding_mask": np.ones((2, SEQ), "int32"),
    }
    assert sorted(raptr.input) == sorted(x)
    assert_same(raptr(x), backbone(x), atol=1e-6)
    # One training step of the stack runs exactly 2 of the 3 blocks.
    loss_model = keras.Model(raptr.input, keras.tree.flatten(raptr.output)[0])
    loss_model.compile(keras.optimizers.SGD(1.0), "mse")
    target = np.ones((2, SEQ, 32), "float32")
    before = block_weights(backbone.transformer_layers)
    loss_model.train_on_batch(x, target)
    run = changed_blocks(before, block_weights(backbone.transformer_layers))
    np.testing.assert_array_equal(run, expected_run(0, 3, 2))


def test_gpt2_causal_lm_accepts_wrapped_backbone():
    backbone = keras_hub.models.GPT2Backbone(**NON_BERT["GPT2Backbone"])
    raptr = keras_raptr.wrap_backbone(backbone, keep_count=2)
    causal_lm = keras_hub.models.GPT2CausalLM(backbone=raptr)
    x = {
        "token_ids": np.ones((2, SEQ), "int32"),
        "padding_mask": np.ones((2, SEQ), "int32"),
    }
    # The LM head is the tied token embedding: no weights of its own.
    plain_lm = keras_hub.models.GPT2CausalLM(backbone=backbone)
    assert_same(causal_lm(x), plain_lm(x), atol=1e-6)
    assert tuple(causal_lm(x).shape) == (2, SEQ, VOCAB)


# -- bad input -----------------------------------------------------------


def test_rejects_what_it_cannot_wrap():
    with pytest.raises(ValueError, match="Received: backbone="):
        keras_raptr.wrap_backbone(keras.layers.Dense(3))
    raptr = keras_raptr.wrap_backbone(bert(num_layers=2))
    with pytest.raises(ValueError, match="already a RaptrBackbone"):
        keras_raptr.wrap_backbone(raptr)
    with pytest.raises(ValueError, match="Received: keep"):
        keras_raptr.wrap_backbone(bert(num_layers=2), keep=1)
    with pytest.raises(ValueError, match="Received: keep_count=5"):
        keras_raptr.wrap_backbone(bert(num_layers=2), keep_count=5)
    with pytest.raises(ValueError, match="Received: preset=3"):
        keras_raptr.hub.load_backbone(3)


def test_rejects_blocks_that_are_not_a_chain():
    inputs = keras.Input((4,))
    first = keras.layers.Dense(4, name="first")
    second = keras.layers.Dense(4, name="second")
    # Both blocks read the input: not a chain.
    outputs = keras.layers.Add()([first(inputs), second(inputs)])
    model = keras.Model(inputs, outputs)
    model.transformer_layers = [first, second]
    with pytest.raises(ValueError, match="does not take the output"):
        keras_raptr.wrap_backbone(model)


def test_local_directory_without_config_fails(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        keras_raptr.wrap_backbone(str(tmp_path))
    with pytest.raises(ValueError, match="task.json"):
        keras_raptr.hub.load_task_preset(str(tmp_path))


def test_preset_name_offline_fails_fast_and_clearly(monkeypatch):
    import requests

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError(
            "Failed to resolve 'api.kaggle.com'"
        )

    monkeypatch.setattr(
        keras_hub.models.Backbone, "from_preset", classmethod(offline)
    )
    with pytest.raises(ValueError, match="model hub is unreachable") as info:
        keras_raptr.wrap_backbone("bert_tiny_en_uncased")
    assert "save_to_preset" in str(info.value)
    assert "Received: preset='bert_tiny_en_uncased'" in str(info.value)


def test_import_keras_raptr_does_not_import_keras_hub():
    import subprocess
    import sys

    code = (
        "import sys, keras_raptr; "
        "assert 'keras_hub' not in sys.modules; "
        "assert callable(keras_raptr.wrap_backbone)"
    )
    env = dict(os.environ)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- the demo --------------------------------------------------------------


def test_demo_smoke(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "KERAS_BACKEND": keras.config.backend(),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, os.path.join(root, "examples", "demo.py"),
         "--smoke", "--no-progress", "--out", str(out),
         "--cache", str(tmp_path / "cache")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out loss" in result.stdout
    with open(out / "results.json") as f:
        report = json.load(f)
    methods = {r["method"]: r for r in report["results"]}
    assert set(methods) == {"raptr", "baseline"}
    assert report["versions"]["keras"] == keras.__version__
    # Smoke schedule 2-3 over 4 steps: keeps 2, 2, 3, 3 of 3 blocks.
    assert methods["raptr"]["keep_counts"] == [2, 2, 3, 3]
    np.testing.assert_allclose(
        methods["raptr"]["block_flops_fraction"], 10 / 12
    )
    assert methods["baseline"]["block_flops_fraction"] == 1.0
    for r in methods.values():
        assert r["steps"] == 4 and np.isfinite(r["final_loss"])
        assert len(r["held_out_curve"]) == 3  # step 0 and 2 evaluations
        # Training time at each evaluation: from 0, growing, to the total.
        seconds = [p["train_seconds"] for p in r["held_out_curve"]]
        assert seconds[0] == 0.0 and seconds[1] > 0.0
        assert seconds[2] >= seconds[1]
        np.testing.assert_allclose(seconds[2], r["train_seconds"])
    equal_time = report["equal_time"]
    assert equal_time["raptr_train_seconds"] == (
        methods["raptr"]["train_seconds"])
    assert np.isfinite(equal_time["baseline_loss_at_that_time"])
    assert equal_time["baseline_train_seconds"] == (
        methods["baseline"]["train_seconds"])
    assert "At equal training time" in result.stdout
    with open(out / "loss_curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_wrapped_bert_blocks_take_the_straight_line_path():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB, num_layers=3, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=SEQ,
    )
    raptr = keras_raptr.wrap_backbone(backbone, keep_count=2)
    assert raptr.random_part_stack._is_homogeneous()


def test_demo_equal_time_comparison_says_when_the_baseline_finished_first():
    demo = load_script("examples", "demo.py")

    def run(method, seconds, losses):
        curve = [{"train_seconds": t, "loss": loss}
                 for t, loss in zip(seconds, losses)]
        return {"method": method, "train_seconds": seconds[-1],
                "final_loss": losses[-1], "held_out_curve": curve}

    baseline = run("baseline", [0.0, 10.0, 20.0], [8.0, 7.0, 6.0])
    faster = demo.equal_time_comparison(
        [run("raptr", [0.0, 15.0], [8.0, 6.5]), baseline]
    )
    assert faster["baseline_loss_at_that_time"] == 6.5  # interpolated
    slower = demo.equal_time_comparison(
        [run("raptr", [0.0, 25.0], [8.0, 5.9]), baseline]
    )
    assert slower["baseline_loss_at_that_time"] == 6.0  # its final loss
    assert slower["baseline_train_seconds"] == 20.0
    assert demo.equal_time_comparison([baseline]) is None
