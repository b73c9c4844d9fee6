import csv
import importlib
import os
import threading
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_raptr
from tests.common import CountingBlock
from tests.common import counts
from tests.common import data
from tests.common import reference_counts
from tests.resume_helpers import InterruptAt
from tests.resume_helpers import Interrupted
from tests.resume_helpers import StepLosses
from tests.resume_helpers import equal_stages
from tests.resume_helpers import fresh_model
from tests.resume_helpers import keep_of
from tests.resume_helpers import keep_per_step
from tests.resume_helpers import repeated_batches
from tests.resume_helpers import step_of

FIXED = (0, 5)


def _fit(model, x, y, callbacks, epochs, **kwargs):
    return model.fit(
        x,
        y,
        batch_size=8,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
        **kwargs,
    )


def _assert_counts(blocks, keep):
    np.testing.assert_array_equal(
        counts(blocks), reference_counts(6, FIXED, keep)
    )


# -- schedules -----------------------------------------------------------


def test_string_schedule_with_total_steps():
    # 10 steps over 3 stages: starts 0, 3, 6 (rounded down); the last
    # stage runs on past total_steps.
    model, stack, blocks = fresh_model()
    x, y = data(96)  # 12 steps per epoch
    scheduler = keras_raptr.StageScheduler(
        "2-4-6", total_steps=10, verbose=0
    )
    _fit(model, x, y, [scheduler], epochs=1)
    _assert_counts(blocks, [2] * 3 + [4] * 3 + [6] * 6)
    assert keep_of(stack) == 6
    assert scheduler.current_keep_count == 6


def test_string_schedule_total_steps_from_fit():
    # 3 epochs of 4 steps: stages start at steps 0, 4 and 8.
    model, stack, blocks = fresh_model()
    x, y = data(32)
    scheduler = keras_raptr.StageScheduler("2-4-6", verbose=0)
    history = _fit(model, x, y, [scheduler], epochs=3)
    _assert_counts(blocks, [2] * 4 + [4] * 4 + [6] * 4)
    assert history.history["keep_count"] == [2, 4, 6]


def test_explicit_stages_in_steps():
    model, stack, blocks = fresh_model()
    x, y = data(64)
    # Changes at steps 1, 3 and 10 (in the second epoch).
    scheduler = keras_raptr.StageScheduler(
        [(2, 1), (3, 2), (4, 7), (6, None)], verbose=0
    )
    _fit(model, x, y, [scheduler], epochs=2)  # 16 steps
    _assert_counts(blocks, [2] + [3] * 2 + [4] * 7 + [6] * 6)


def test_fraction_unit():
    model, stack, blocks = fresh_model()
    x, y = data(40)  # 5 steps per epoch, 20 in all
    scheduler = keras_raptr.StageScheduler(
        [(2, 0.25), (4, 0.5), (6, 0.25)], unit="fraction", verbose=0
    )
    _fit(model, x, y, [scheduler], epochs=4)
    _assert_counts(blocks, [2] * 5 + [4] * 10 + [6] * 5)


def test_fraction_unit_with_total_steps_and_open_last_stage():
    model, stack, blocks = fresh_model()
    x, y = data(80)  # 10 steps
    scheduler = keras_raptr.StageScheduler(
        [(2, 0.3), (6, None)], unit="fraction", total_steps=10, verbose=0
    )
    _fit(model, x, y, [scheduler], epochs=1)
    _assert_counts(blocks, [2] * 3 + [6] * 7)


def test_epochs_unit_string_and_explicit():
    model, stack, blocks = fresh_model()
    x, y = data(24)  # 3 steps per epoch
    scheduler = keras_raptr.StageScheduler("2-4-6", unit="epochs", verbose=0)
    history = _fit(model, x, y, [scheduler], epochs=3)
    _assert_counts(blocks, [2] * 3 + [4] * 3 + [6] * 3)
    assert history.history["keep_count"] == [2, 4, 6]

    keras.utils.clear_session()
    model, stack, blocks = fresh_model()
    scheduler = keras_raptr.StageScheduler(
        [(2, 1), (4, 2), (6, None)], unit="epochs", verbose=0
    )
    _fit(model, x, y, [scheduler], epochs=4)
    _assert_counts(blocks, [2] * 3 + [4] * 6 + [6] * 3)


def test_layer_name_drives_only_that_stack():
    blocks_a = [CountingBlock(name=f"a{i}") for i in range(4)]
    blocks_b = [CountingBlock(name=f"b{i}") for i in range(6)]
    inputs = keras.Input((4,))
    stack_a = keras_raptr.RandomPartStack(blocks_a, keep_count=3, name="sa")
    stack_b = keras_raptr.RandomPartStack(blocks_b, keep_count=2, name="sb")
    outputs = keras.layers.Dense(1)(stack_b(stack_a(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse")
    x, y = data(32)
    scheduler = keras_raptr.StageScheduler(
        [(2, 2), (6, None)], layer_name="sb", verbose=0
    )
    _fit(model, x, y, [scheduler], epochs=1)
    assert keep_of(stack_a) == 3
    assert keep_of(stack_b) == 6
    np.testing.assert_array_equal(
        counts(blocks_b), reference_counts(6, FIXED, [2, 2, 6, 6])
    )
    np.testing.assert_array_equal(
        counts(blocks_a), reference_counts(4, (0, 3), [3] * 4)
    )


def test_every_stack_is_driven_by_default():
    stacks = []
    inputs = keras.Input((4,))
    h = inputs
    for name in "pq":
        blocks = [CountingBlock(name=f"{name}{i}") for i in range(4)]
        stack = keras_raptr.RandomPartStack(blocks, keep_count=2, name=name)
        stacks.append(stack)
        h = stack(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile("sgd", "mse")
    x, y = data(32)
    _fit(model, x, y, [keras_raptr.StageScheduler("2-4", verbose=0)], 2)
    assert [keep_of(stack) for stack in stacks] == [4, 4]


# -- validation ----------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, kwargs, match",
    [
        ("6-8-x", {}, r"`schedule`.*'6-8-10-12'"),
        ("", {}, "`schedule`.*joined by '-'"),
        ("6--8", {}, "`schedule`.*joined by '-'"),
        ("6,8,12", {}, "`schedule`.*joined by '-'"),
        ("-6-8", {}, "`schedule`.*joined by '-'"),
        ("0-6", {}, "`schedule`.*int >= 1"),
        ([(0, 5), (6, None)], {}, "`schedule`.*int >= 1"),
        ([(-2, 5), (6, None)], {}, "`schedule`.*int >= 1"),
        ([(2.5, 5), (6, None)], {}, "`schedule`.*int >= 1"),
        ("8-6", {}, "`schedule`.*decrease.*allow_decreasing"),
        ([(4, 2), (2, 2), (6, None)], {}, "`schedule`.*decrease"),
        ([], {}, "`schedule`.*non-empty list"),
        (42, {}, "`schedule`.*'6-8-10-12'"),
        ([(2, 3, 4)], {}, "`schedule`.*pairs"),
        ([(2, 0), (6, None)], {}, "`schedule`.*length.*int >= 1"),
        ([(2, -1), (6, None)], {}, "`schedule`.*length.*int >= 1"),
        ([(2, 1.5), (6, None)], {}, "`schedule`.*length.*int >= 1"),
        ([(2, None), (6, 3)], {}, "`schedule`.*only the last may be None"),
        ([(2, 0.5), (6, 0.6)], {"unit": "fraction"}, "`schedule`.*add up"),
        ([(2, 0.5), (6, 0.4)], {"unit": "fraction"}, "`schedule`.*add up"),
        ([(2, 0), (6, None)], {"unit": "fraction"}, r"float in \(0, 1\]"),
        ([(2, 2), (6, None)], {"unit": "fraction"}, r"float in \(0, 1\]"),
        ("2-6", {"unit": "batches"}, "`unit`.*'steps', 'epochs'"),
        ("2-6", {"total_steps": 0}, "`total_steps`.*int >= 1"),
        ("2-6", {"total_steps": -5}, "`total_steps`.*int >= 1"),
        ("2-6", {"total_steps": 10.0}, "`total_steps`.*int >= 1"),
        ("2-6", {"total_steps": "10"}, "`total_steps`.*int >= 1"),
        ("2-4-6", {"total_steps": 2}, "`total_steps`.*3 stages.*3 steps"),
        (
            "2-6",
            {"unit": "epochs", "total_steps": 10},
            "`total_steps`.*unit='epochs'",
        ),
        (
            [(2, 0.5), (4, 0.01), (6, None)],
            {"unit": "fraction", "total_steps": 10},
            "`schedule`.*two stages start",
        ),
        ("2-6", {"compile_ahead": 1}, "`compile_ahead`.*bool"),
        ("2-6", {"compile_ahead": "yes"}, "`compile_ahead`.*bool"),
    ],
)
def test_bad_schedule_arguments(schedule, kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_raptr.StageScheduler(schedule, verbose=0, **kwargs)


def test_total_steps_accepts_numpy_integers():
    # e.g. total_steps = len(dataset) * epochs computed with numpy.
    scheduler = keras_raptr.StageScheduler(
        "2-4-6", total_steps=np.int64(12), verbose=0
    )
    assert scheduler.total_steps == 12 and type(scheduler.total_steps) is int
    with pytest.raises(ValueError, match="`total_steps`"):
        keras_raptr.StageScheduler("2-6", total_steps=np.int64(0))


def test_decreasing_allowed_on_purpose():
    model, stack, blocks = fresh_model()
    x, y = data(32)
    scheduler = keras_raptr.StageScheduler(
        [(4, 2), (2, 1), (6, None)], allow_decreasing=True, verbose=0
    )
    _fit(model, x, y, [scheduler], epochs=1)
    _assert_counts(blocks, [4, 4, 2, 6])


def _fit_expecting(error, match, schedule, epochs=1, model=None, **kwargs):
    if model is None:
        model, _, _ = fresh_model()
    x, y = data(16)
    scheduler = keras_raptr.StageScheduler(schedule, verbose=0, **kwargs)
    with pytest.raises(error, match=match):
        _fit(model, x, y, [scheduler], epochs=epochs)


@pytest.mark.parametrize(
    "schedule, kwargs, match",
    [
        ("2-4-7", {}, r"`schedule`.*\[2, 6\].*at most all 6 blocks"),
        ([(2, 3), (9, None)], {}, r"`schedule`.*\[2, 6\]"),
        ("1-6", {}, r"`schedule`.*\[2, 6\].*2 fixed"),
        ("2-4", {}, "`schedule`.*last stage must run all 6.*allow_partial"),
        # 2 epochs of 2 steps: 4 steps for 5 stages.
        ("2-3-4-5-6", {}, "`total_steps`.*5 stages.*at least 5 steps"),
        ("2-3-6", {"unit": "epochs"}, "`total_steps`.*3 stages.*3 epochs"),
    ],
)
def test_bad_schedule_for_the_model(schedule, kwargs, match):
    _fit_expecting(ValueError, match, schedule, epochs=2, **kwargs)


def test_partial_final_allowed_on_purpose():
    model, stack, blocks = fresh_model()
    x, y = data(32)
    scheduler = keras_raptr.StageScheduler(
        "2-4", allow_partial_final=True, verbose=0
    )
    _fit(model, x, y, [scheduler], epochs=2)
    _assert_counts(blocks, [2] * 4 + [4] * 4)
    assert keep_of(stack) == 4


def test_model_without_a_stack():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile("sgd", "mse")
    _fit_expecting(
        ValueError, "needs a model that contains a.*RandomPartStack", "2-6",
        model=model,
    )


def test_unknown_layer_name():
    model, _, _ = fresh_model()
    _fit_expecting(
        ValueError,
        "`layer_name`.*no RandomPartStack named 'nope'",
        "2-6",
        model=model,
        layer_name="nope",
    )


def test_stacks_of_different_depths():
    inputs = keras.Input((4,))
    h = keras_raptr.RandomPartStack(
        [CountingBlock(name=f"a{i}") for i in range(4)], name="a"
    )(inputs)
    h = keras_raptr.RandomPartStack(
        [CountingBlock(name=f"b{i}") for i in range(6)], name="b"
    )(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile("sgd", "mse")
    _fit_expecting(
        ValueError, r"different numbers of blocks \(\[4, 6\]\).*layer_name",
        "2-6", model=model,
    )


# -- logs and announcements ----------------------------------------------


def _expected_flops_saved(keep, num_blocks=6):
    return 1.0 - np.mean(keep) / num_blocks


def test_history_and_csv_logger(tmp_path):
    model, stack, blocks = fresh_model()
    x, y = data(32)  # 4 steps per epoch
    path = os.path.join(tmp_path, "log.csv")
    stages = [(2, 3), (4, 3), (6, None)]
    history = _fit(
        model,
        x,
        y,
        [
            keras_raptr.StageScheduler(stages, verbose=0),
            keras.callbacks.CSVLogger(path),
        ],
        epochs=3,
    )
    keep = keep_per_step(stages, 12)
    expected_keep = [keep[3], keep[7], keep[11]]
    expected_saved = [
        _expected_flops_saved(keep[: 4 * (e + 1)]) for e in range(3)
    ]
    assert history.history["keep_count"] == expected_keep
    np.testing.assert_allclose(
        history.history["block_flops_saved"], expected_saved, rtol=1e-6
    )
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["keep_count"])) for r in rows] == expected_keep
    np.testing.assert_allclose(
        [float(r["block_flops_saved"]) for r in rows],
        expected_saved,
        rtol=1e-6,
    )


def test_epoch_unit_flops_saved():
    model, stack, blocks = fresh_model()
    x, y = data(16)
    history = _fit(
        model,
        x,
        y,
        [keras_raptr.StageScheduler("2-4-6", unit="epochs", verbose=0)],
        epochs=3,
    )
    np.testing.assert_allclose(
        history.history["block_flops_saved"],
        [1 - 2 / 6, 1 - 3 / 6, 1 - 4 / 6],
        rtol=1e-6,
    )


def test_verbose_announces_each_stage_once(capsys):
    model, stack, blocks = fresh_model()
    x, y = data(32)
    _fit(
        model,
        x,
        y,
        [keras_raptr.StageScheduler([(2, 3), (4, 3), (6, None)])],
        epochs=3,
    )
    lines = [
        line
        for line in capsys.readouterr().out.splitlines()
        if "StageScheduler" in line and "keep_count=" in line
    ]
    assert lines == [
        "StageScheduler: stage 1/3 at step 0: keep_count=2 of 6 blocks",
        "StageScheduler: stage 2/3 at step 3: keep_count=4 of 6 blocks",
        "StageScheduler: stage 3/3 at step 6: keep_count=6 of 6 blocks",
    ]


@pytest.mark.parametrize("compile_ahead", [True, False])
def test_compile_time_is_reported_once_per_compiled_stage(
    capsys, compile_ahead
):
    """Every stage whose step `fit` compiles reports how long that took,
    once; a later `fit` that reuses the compiled steps reports nothing, and
    torch eager (nothing compiled) never reports."""
    model, stack, blocks = fresh_model()
    x, y = data(32)  # 4 steps per epoch
    scheduler = keras_raptr.StageScheduler(
        [(2, 3), (4, 3), (6, None)], compile_ahead=compile_ahead
    )
    _fit(model, x, y, [scheduler], epochs=3)
    out = capsys.readouterr().out
    reports = [
        line for line in out.splitlines() if ": training step " in line
    ]
    compiled = keras.config.backend() != "torch"
    if not compiled:
        assert scheduler.compile_seconds == {}
        assert reports == []
        return
    seconds = scheduler.compile_seconds
    assert sorted(seconds) == [1, 2, 3]
    assert all(0 < value < 600 for value in seconds.values())
    for stage, line in zip((1, 2, 3), reports, strict=True):
        assert line.startswith(
            f"StageScheduler: stage {stage}/3: training step traced and "
            f"compiled in {seconds[stage]:.2f} s"
        )
        # Stages 2 and 3 were prepared while the stage before trained.
        ahead = compile_ahead and stage > 1
        assert ("ahead, on a background thread" in line) == ahead, line

    again = keras_raptr.StageScheduler(
        [(2, 3), (4, 3), (6, None)], verbose=0
    )
    _fit(model, x, y, [again], epochs=3)
    assert again.compile_seconds == {}


def test_verbose_epoch_unit_and_silence(capsys):
    model, stack, blocks = fresh_model()
    x, y = data(16)
    _fit(
        model, x, y, [keras_raptr.StageScheduler("2-6", unit="epochs")], 2
    )
    out = capsys.readouterr().out
    assert "stage 1/2 at epoch 0: keep_count=2" in out
    assert "stage 2/2 at epoch 1: keep_count=6" in out
    _fit(
        model, x, y, [keras_raptr.StageScheduler("2-6", verbose=0)], 2
    )
    assert "StageScheduler" not in capsys.readouterr().out


# -- resume --------------------------------------------------------------
#
# Each test runs the same model uninterrupted (the reference) and
# interrupted + restored, and checks that after the restore (a) training
# runs in the right stage with the right keep count, (b) the per-step
# losses equal the reference's at the same global steps and (c) the blocks
# ran exactly the subsets the numpy reference sampler draws for those steps
# (CountingBlock's counters are weights, restored with the checkpoint, so
# the final counts cover every step that was not lost).

# Restores happen at global step 8. "boundary": a stage starts at step 8;
# "mid_stage": step 8 lies inside a stage.
RESUME_STAGES = {
    "boundary": [(2, 4), (4, 4), (6, None)],
    "mid_stage": [(2, 3), (4, 7), (6, None)],
}


def _reference(initial_weights, x, y, schedule, epochs, **kwargs):
    model, stack, blocks = fresh_model(initial_weights)
    scheduler = keras_raptr.StageScheduler(schedule, verbose=0, **kwargs)
    recorder = StepLosses(stack)
    _fit(model, x, y, [scheduler, recorder], epochs=epochs)
    return recorder, counts(blocks)


def _check_resumed(recorder, reference, start, stop, blocks, keep):
    assert min(recorder.losses) == start
    assert max(recorder.losses) == stop - 1
    np.testing.assert_allclose(
        recorder.series(start, stop),
        reference.series(start, stop),
        rtol=1e-5,
        atol=1e-6,
    )
    _assert_counts(blocks, keep[:stop])


@pytest.mark.parametrize("where", ["boundary", "mid_stage"])
def test_resume_with_backup_and_restore_mid_epoch(tmp_path, where):
    stages = RESUME_STAGES[where]
    x, y = repeated_batches(5)  # 5 steps per epoch, all the same batch
    init = fresh_model()[0].get_weights()
    reference, _ = _reference(init, x, y, stages, epochs=4)  # steps 0-19

    model, stack, blocks = fresh_model(init)
    scheduler = keras_raptr.StageScheduler(stages, verbose=0)
    backup_dir = os.path.join(tmp_path, "backup")

    def backup():
        return keras.callbacks.BackupAndRestore(backup_dir, save_freq=4)

    # Saved after steps 3 and 7 (step counter 4, 8); step 8 and 9 run and
    # are lost; the crash comes before step 10, in the middle of epoch 2.
    with pytest.raises(Interrupted):
        _fit(model, x, y, [scheduler, backup(), InterruptAt(10)], epochs=3)
    assert step_of(stack) >= 9 or keras.config.backend() == "jax"

    # Fit again, same objects: Keras restores step 8 and replays epoch 1
    # (steps 5-9) from its first batch, so global steps 8-17 run.
    recorder = StepLosses(stack, scheduler)
    _fit(model, x, y, [scheduler, backup(), recorder], epochs=3)
    keep = keep_per_step(stages, 20)
    assert recorder.first_keep_count == keep[8]
    _check_resumed(recorder, reference, 8, 18, blocks, keep)
    assert step_of(stack) == 18
    assert keep_of(stack) == 6


def _checkpoint_then_resume(tmp_path, stages, load, **scheduler_kwargs):
    """Trains 4 epochs of 4 steps with ModelCheckpoint, crashes in epoch 3,
    then `load(path)` restores the checkpoint of epoch 2 (global step 8)
    and fit resumes with `initial_epoch=2`."""
    x, y = data(32)  # 4 different batches per epoch
    init = fresh_model()[0].get_weights()
    reference, _ = _reference(
        init, x, y, stages, epochs=4, **scheduler_kwargs
    )

    model, stack, blocks = fresh_model(init)
    suffix = ".weights.h5" if load == "weights" else ".keras"
    pattern = os.path.join(tmp_path, "ckpt_{epoch}" + suffix)
    checkpoint = keras.callbacks.ModelCheckpoint(
        pattern, save_weights_only=load == "weights"
    )
    scheduler = keras_raptr.StageScheduler(
        stages, verbose=0, **scheduler_kwargs
    )
    with pytest.raises(Interrupted):
        _fit(model, x, y, [scheduler, checkpoint, InterruptAt(10)], epochs=4)
    path = pattern.format(epoch=2)
    keras.utils.clear_session()

    if load == "weights":
        # A new process would build a new model (other initial weights).
        model, stack, blocks = fresh_model()
        # As BackupAndRestore does: build the optimizer first, or Keras
        # skips loading its state (Adam's moments) with a warning.
        model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
    else:
        model = keras.saving.load_model(path)
        stack = model.get_layer("stack")
        blocks = stack.blocks
    assert step_of(stack) == 8
    scheduler = keras_raptr.StageScheduler(
        stages, verbose=0, **scheduler_kwargs
    )
    recorder = StepLosses(stack, scheduler)
    _fit(model, x, y, [scheduler, recorder], epochs=4, initial_epoch=2)
    return recorder, reference, stack, blocks


@pytest.mark.parametrize(
    "where, unit",
    [("mid_stage", "steps"), ("boundary", "epochs")],
)
def test_resume_from_keras_file(tmp_path, where, unit):
    if unit == "steps":
        stages = RESUME_STAGES[where]
        keep = keep_per_step(stages, 16)
    else:  # stages start at epochs 0, 2 (step 8, the restore) and 3
        stages = [(2, 2), (4, 1), (6, None)]
        keep = [2] * 8 + [4] * 4 + [6] * 4
    recorder, reference, stack, blocks = _checkpoint_then_resume(
        tmp_path, stages, "keras", unit=unit
    )
    assert recorder.first_keep_count == keep[8]
    _check_resumed(recorder, reference, 8, 16, blocks, keep)
    assert keep_of(stack) == 6


@pytest.mark.parametrize(
    "schedule, where", [("2-4-6-6", "boundary"), ("2-4-6", "mid_stage")]
)
def test_resume_from_weights_checkpoint_with_initial_epoch(
    tmp_path, schedule, where
):
    # total_steps comes from fit: 4 epochs x 4 steps, also when resuming
    # with initial_epoch=2. "2-4-6-6" starts stages at 0, 4, 8, 12 (the
    # restore at step 8 is a boundary); "2-4-6" at 0, 5, 10.
    recorder, reference, stack, blocks = _checkpoint_then_resume(
        tmp_path, schedule, "weights"
    )
    keep_counts = [int(k) for k in schedule.split("-")]
    keep = keep_per_step(equal_stages(keep_counts, 16), 16)
    assert recorder.first_keep_count == keep[8]
    _check_resumed(recorder, reference, 8, 16, blocks, keep)
    assert keep_of(stack) == 6


class ThreadRecordingBlock(CountingBlock):
    """A `CountingBlock` that logs the thread of every Python-level call."""

    log = []

    def call(self, x, training=None, offset=None):
        self.log.append(threading.current_thread().name)
        return super().call(x, training=training, offset=offset)


@pytest.mark.parametrize("compile_ahead", [True, False])
def test_compile_ahead_traces_the_next_stage_off_the_training_thread(
    compile_ahead,
):
    """On JAX and TensorFlow the next stage's step is traced (JAX: and
    compiled) on a background thread during the current stage, so no stage
    after the first traces on the training thread; on every backend the run
    is unchanged by it."""
    log = ThreadRecordingBlock.log
    log.clear()
    results = {}
    for ahead in (compile_ahead, not compile_ahead):
        keras.utils.set_random_seed(0)
        blocks = [
            ThreadRecordingBlock(dropout=0.1, name=f"block_{i}")
            for i in range(6)
        ]
        inputs = keras.Input((4,))
        stack = keras_raptr.RandomPartStack(blocks, name="stack")
        model = keras.Model(inputs, keras.layers.Dense(1)(stack(inputs)))
        model.compile("adamw", "mse")
        x, y = data(96)
        traced_in_step = []

        class MainThreadTraces(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                self.start = len(log)

            def on_train_batch_end(self, batch, logs=None):
                traced_in_step.append(
                    log[self.start :].count(threading.main_thread().name)
                )

        log.clear()
        history = _fit(
            model,
            x,
            y,
            [
                keras_raptr.StageScheduler(
                    "3-4-5-6", verbose=0, compile_ahead=ahead
                ),
                MainThreadTraces(),
            ],
            epochs=2,
            validation_data=(x[:16], y[:16]),
        )
        results[ahead] = (
            history.history["loss"],
            [ops.convert_to_numpy(w) for w in model.weights],
        )
        ahead_traces = log.count("keras_raptr-compile-ahead")
        if ahead and keras.config.backend() != "torch":
            # Stages 2-4 were traced ahead; only stage 1 on the main thread.
            assert ahead_traces > 0
            assert traced_in_step[0] > 0
            assert sum(traced_in_step[1:]) == 0, traced_in_step
        else:
            assert ahead_traces == 0
    np.testing.assert_allclose(results[True][0], results[False][0])
    for got, want in zip(results[True][1], results[False][1]):
        np.testing.assert_array_equal(got, want)


def test_only_the_first_evaluation_waits_for_a_background_compile():
    """The first evaluation inside `fit` traces Keras' test step, so it
    waits for a running background trace; later ones run the traced step
    while the next stage compiles. Either way the run is the same as
    without compiling ahead."""
    runs = {}
    for ahead in (True, False):
        keras.utils.set_random_seed(0)
        model, stack, blocks = fresh_model()
        x, y = data(32)  # 4 steps per epoch; stages of 6 steps
        scheduler = keras_raptr.StageScheduler(
            "3-4-5-6", total_steps=24, verbose=0, compile_ahead=ahead
        )
        waits = []
        wait = scheduler._wait_for_every_compile

        def counting_wait():
            waits.append(1)
            wait()

        scheduler._wait_for_every_compile = counting_wait
        history = _fit(
            model, x, y, [scheduler], epochs=6,
            validation_data=(x[:16], y[:16]),
        )
        runs[ahead] = (
            history.history["loss"],
            history.history["val_loss"],
            [ops.convert_to_numpy(w) for w in model.weights],
            counts(blocks),
        )
        # Six evaluations: only the first waits; the end of `fit` too.
        assert len(history.history["val_loss"]) == 6
        assert len(waits) == 2, waits
    np.testing.assert_allclose(runs[True][0], runs[False][0])
    np.testing.assert_allclose(runs[True][1], runs[False][1])
    for got, want in zip(runs[True][2], runs[False][2]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(runs[True][3], runs[False][3])


@pytest.mark.skipif(
    keras.config.backend() == "torch", reason="torch prepares nothing ahead"
)
def test_failed_compile_ahead_warns_and_the_stage_compiles_itself(
    monkeypatch,
):
    from keras_raptr.src import backend

    def fail(self, example_args):
        raise RuntimeError("could not prepare the step")

    runs = {}
    for broken in (True, False):
        if broken:
            steps = importlib.import_module(backend.__name__ + "." + (
                keras.config.backend()
            ))
            monkeypatch.setattr(steps.TracedStep, "_prepare", fail)
        else:
            monkeypatch.undo()
        keras.utils.set_random_seed(0)
        model, stack, blocks = fresh_model()
        x, y = data(48)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = _fit(
                model, x, y,
                [keras_raptr.StageScheduler("2-4-6", verbose=0)], epochs=1,
            )
        failures = [
            str(w.message) for w in caught
            if "ahead of its stage failed" in str(w.message)
        ]
        runs[broken] = history.history["loss"], counts(blocks)
        if broken:
            # Stages 2 and 3 were to be compiled ahead; both failed, loudly.
            assert len(failures) == 2, failures
            assert "keep_count=4" in failures[0]
            assert "keep_count=6" in failures[1]
        else:
            assert failures == []
    # Each stage then compiled when it started: the same run.
    np.testing.assert_allclose(runs[True][0], runs[False][0])
    np.testing.assert_array_equal(runs[True][1], runs[False][1])
    _assert_counts(blocks, [2] * 2 + [4] * 2 + [6] * 2)



@pytest.mark.parametrize("keep_count", [4, 6])
def test_compiling_again_retraces_the_stage_steps(keep_count):
    # The traced steps kept on the model for later `fit` calls belong to
    # one `compile`: after compiling again with the same optimizer but a
    # new loss, training must use the new loss (stale steps trained with
    # the old one on JAX, and reported a loss of 0 on TensorFlow).
    x, y = data(16)

    def fit(model):
        scheduler = keras_raptr.StageScheduler(
            [(keep_count, None)], allow_partial_final=True, verbose=0
        )
        return model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                         callbacks=[scheduler]).history["loss"][0]

    keras.utils.set_random_seed(0)
    model, stack, _ = fresh_model(keep_count=keep_count)
    optimizer = keras.optimizers.SGD(0.0)  # the weights stay as they are
    model.compile(optimizer, "mse")
    fit(model)
    model.compile(optimizer, "mae")
    step = int(ops.convert_to_numpy(stack.step.value))
    loss = fit(model)
    # The same step (same weights, same subset) in a model compiled only
    # with the new loss.
    reference, reference_stack, _ = fresh_model(
        initial_weights=model.get_weights(), keep_count=keep_count
    )
    reference_stack.step.assign(step)
    reference.compile(keras.optimizers.SGD(0.0), "mae")
    np.testing.assert_allclose(loss, fit(reference), rtol=1e-6)


@pytest.mark.parametrize("batch_size", [8, 32])  # 4 steps an epoch, or 1
def test_a_stack_called_twice_per_step_is_refused(batch_size):
    # One encoder applied to two inputs advances the stack's step counter
    # twice per training step; the stages would start early (2-4-6 over 3
    # epochs skipped the middle stage). The scheduler says so instead.
    blocks = [CountingBlock(name=f"b{i}") for i in range(6)]
    stack = keras_raptr.RandomPartStack(blocks)
    a, b = keras.Input((4,)), keras.Input((4,))
    joined = keras.layers.Concatenate()([stack(a), stack(b)])
    model = keras.Model([a, b], keras.layers.Dense(1)(joined))
    model.compile("sgd", "mse")
    x, y = data(32)
    scheduler = keras_raptr.StageScheduler("2-4-6", verbose=0)
    with pytest.raises(
        ValueError, match="ran 2 times in the first (at most )?1 training"
    ):
        model.fit([x, x], y, batch_size=batch_size, epochs=3, verbose=0,
                  callbacks=[scheduler])
