"""The step-time benchmark's argument checks (the GPU grid runs it)."""

import sys

import pytest

from tests.common import load_script


def _refused_before_any_run(argv, monkeypatch, capsys):
    """Runs step_time.py with `argv`, which must be refused (exit code 2)
    before any configuration starts; returns the error printed."""
    step_time = load_script("benchmarks", "step_time.py")
    monkeypatch.setattr(
        step_time, "_run_config", lambda job: pytest.fail("a run started")
    )
    monkeypatch.setattr(sys, "argv", ["step_time.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        step_time.main()
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--keeps", "1,4"], "[2, 8] for --size cpu"),
        (["--keeps", "4,9"], "[2, 8] for --size cpu"),
        (["--keeps", "4,x"], "[2, 8] for --size cpu"),
        (["--size", "gpu", "--keeps", "6,13"], "[2, 12] for --size gpu"),
    ],
)
def test_keep_counts_outside_the_stack_are_refused_before_any_run(
    argv, expected, monkeypatch, capsys
):
    # Before, k < 2 was raised to 2 without a word and k > L failed in a
    # worker process minutes into the grid.
    error = _refused_before_any_run(argv, monkeypatch, capsys)
    assert "--keeps takes comma-separated keep counts in" in error
    assert expected in error


def test_a_failed_configuration_is_reported_and_the_others_kept(
    tmp_path, monkeypatch, capsys
):
    # The GPU grid runs once, under a time limit: one backend failing (or
    # running out of memory) must not take the finished rows with it.
    step_time = load_script("benchmarks", "step_time.py")

    def run_config(job):
        if job["kind"] == "dynamic":
            raise RuntimeError(f"benchmark worker failed for {job}:\nOOM")
        ms = {8: 100.0, 4: 50.0}[job["keep"]] * (
            1.02 if job["kind"] == "raptr" else 1.0
        )
        return dict(job, ms=ms, ms_min=ms, cpu_ms=ms, peak_mb=10.0,
                    retraces=0, compile_s=1.0, device="cpu")

    monkeypatch.setattr(step_time, "_run_config", run_config)
    path = tmp_path / "records.json"
    monkeypatch.setattr(sys, "argv", [
        "step_time.py", "--backends", "jax", "--keeps", "4,8",
        "--json", str(path),
    ])
    with pytest.raises(SystemExit) as exit_info:
        step_time.main()
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "FAILED benchmark worker failed" in out
    assert "| jax | jit | raptr | 4 of 8 | 51.0 | 1.020 | 0.510 |" in out
    import json

    records = json.loads(path.read_text())
    assert sorted((r["kind"], r["keep"]) for r in records) == [
        ("plain", 4), ("plain", 8), ("raptr", 4), ("raptr", 8)
    ]


def test_gpu_scripts_parse():
    # They run only on a lent GPU machine, once, under a time limit: a
    # syntax error found there costs the whole session's device time.
    import pathlib
    import subprocess

    root = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"
    for script in ("run.sh", "fetch_wheels.sh"):
        result = subprocess.run(
            ["bash", "-n", str(root / script)], capture_output=True, text=True
        )
        assert result.returncode == 0, (script, result.stderr)


@pytest.mark.parametrize("name", ["--batch", "--steps"])
def test_sizes_overridden_by_non_positive_values_are_refused(
    name, monkeypatch, capsys
):
    error = _refused_before_any_run([name, "0"], monkeypatch, capsys)
    assert f"{name} takes a positive int; got 0" in error


def test_the_stacked_prototype_trains_the_subsets_the_stack_draws():
    # `stacked` rows measure a layout for RaPTr, so the prototype must do
    # RaPTr's work: each step, plain SGD moves exactly the stacked rows of
    # the middle blocks RandomPartStack would keep at that step (the same
    # hash), and no other row.
    import keras
    import numpy as np
    from keras import ops

    from keras_raptr.src.layers import sampling

    sys.path.insert(0, "benchmarks")
    try:
        from stacked_layout import StackedMiddle
    finally:
        sys.path.remove("benchmarks")
    num_middle, keep = 5, 2
    template = keras.layers.Dense(4, name="template")
    middle = StackedMiddle(template, num_middle, keep)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(middle(inputs)))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    assert not template.trainable_weights  # the template's are not trained
    for step in range(4):
        before = ops.convert_to_numpy(middle.stacked[0].value).copy()
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        after = ops.convert_to_numpy(middle.stacked[0].value)
        moved = np.any(after != before, axis=(1, 2))
        expected = sampling.numpy_keep_mask(
            0, step, num_middle, keep, "exact", None
        )
        np.testing.assert_array_equal(moved, expected)


def test_the_idle_row_holds_blocks_that_compute_nothing_but_train():
    # `idle k` is the limit for RaPTr under its gradient semantics: k blocks
    # run; the other L - k compute nothing, yet AdamW updates them (zero
    # gradient, weight decay) as it updates a skipped block.
    import keras
    import numpy as np
    from keras import ops

    step_time = load_script("benchmarks", "step_time.py")
    s = dict(layers=4, dim=8, heads=2, ff=16, seq=8, batch=2, vocab=50,
             steps=1, jit_compile=False)
    model, data, labels = step_time.build_model(s, "idle", 2)
    idle = [b for b in model.layers if type(b).__name__ == "IdleBlocks"][0]
    assert len(idle.blocks) == 2
    before = model.predict(data, verbose=0)
    for block in idle.blocks:  # what they hold does not change the output
        for variable in block.trainable_weights:
            variable.assign(np.full(variable.shape, 3.0, "float32"))
    np.testing.assert_allclose(model.predict(data, verbose=0), before,
                               rtol=1e-6, atol=1e-6)
    weight = idle.blocks[0].trainable_weights[0]
    held = ops.convert_to_numpy(weight.value).copy()
    model.optimizer = keras.optimizers.AdamW(1e-2, weight_decay=0.5)
    model.compile(model.optimizer, model.loss)
    model.fit(data, labels, batch_size=2, epochs=1, verbose=0)
    assert not np.array_equal(ops.convert_to_numpy(weight.value), held)


def test_unknown_models_are_refused_before_any_run(monkeypatch, capsys):
    error = _refused_before_any_run(["--models", "raptr,x"], monkeypatch,
                                    capsys)
    assert "--models takes a comma-separated subset of" in error
    assert "'raptr,x'" in error


def test_an_ab_runs_the_chosen_models_in_rounds_and_prints_their_means(
    monkeypatch, capsys
):
    # A 2-core machine's processes of one configuration differ by more than
    # the 3% target, so an A/B runs one round of every model, then the next,
    # and reads the means: the fastest process alone picks out the outlier.
    step_time = load_script("benchmarks", "step_time.py")
    order = []
    base = {("plain", 8): 400.0, ("plain", 2): 100.0, ("raptr", 2): 104.0,
            ("idle", 2): 102.0}

    def run_config(job):
        order.append((job["kind"], job["keep"]))
        ms = base[job["kind"], job["keep"]] * (1.0 + 0.2 * (len(order) > 4))
        return dict(job, ms=ms, ms_min=ms, cpu_ms=2 * ms, peak_mb=10.0,
                    retraces=0, compile_s=1.0, device="cpu")

    monkeypatch.setattr(step_time, "_run_config", run_config)
    monkeypatch.setattr(sys, "argv", [
        "step_time.py", "--backends", "torch", "--keeps", "2",
        "--models", "raptr,plain", "--idle", "--processes", "2",
    ])
    step_time.main()
    one_round = [("plain", 8), ("plain", 2), ("raptr", 2), ("idle", 2)]
    assert order == one_round * 2  # no `dynamic`: not asked for
    out = capsys.readouterr().out
    # Means 114.4 (raptr) and 110.0 (plain 2): 1.040 in wall and CPU time.
    assert ("| torch | eager | raptr | 2 of 8 | 2 | 114.4 | 229 | "
            "1.040 / 1.040 | 1.020 / 1.020 | 0.260 / 0.260 |") in out
