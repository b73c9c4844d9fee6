"""Finite stage transitions, mixed_float16 loss scaling, interruption."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from keras import ops

import keras_raptr
from tests.common import counts
from tests.common import data
from tests.common import make_model
from tests.common import reference_counts
from tests.resume_helpers import WORKER_STEPS_PER_EPOCH
from tests.resume_helpers import StepLosses
from tests.resume_helpers import check_checkpoints_readable
from tests.resume_helpers import keep_per_step
from tests.resume_helpers import make_prenorm_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _all_finite(model):
    return all(
        np.all(np.isfinite(ops.convert_to_numpy(v)))
        for v in model.weights
        if "float" in str(v.dtype)
    )


@pytest.mark.parametrize("scaling", ["none", "expectation"])
def test_stage_transitions_stay_finite(scaling):
    # 8 pre-LN blocks, 4 stages, Adam with a large learning rate: the jump
    # from 2 to 8 running blocks must not blow the loss up.
    model, stack, blocks = make_prenorm_model(
        num_blocks=8, dim=8, keep_count=2, scaling=scaling
    )
    model.compile(keras.optimizers.Adam(0.01), "mse")
    x, y = data(64, dim=8)
    stages = [(2, 6), (4, 6), (6, 6), (8, None)]
    recorder = StepLosses(stack)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=4,
        verbose=0,
        callbacks=[keras_raptr.StageScheduler(stages, verbose=0), recorder],
    )
    losses = recorder.series(0, 32)
    assert np.all(np.isfinite(losses)), losses
    assert _all_finite(model)
    # No spike at a transition: each step's loss stays within a factor of
    # the largest loss seen in the first stage.
    assert losses.max() <= 3 * losses[:6].max(), losses
    np.testing.assert_array_equal(
        counts(blocks),
        reference_counts(8, (0, 7), keep_per_step(stages, 32)),
    )


def test_mixed_float16_loss_scaling_through_skipped_blocks():
    keras.config.set_dtype_policy("mixed_float16")
    model, stack, blocks = make_prenorm_model(num_blocks=6, dim=4, keep_count=2)
    # Start from a loss scale that overflows float16: the first steps are
    # skipped by the LossScaleOptimizer, which halves the scale each time.
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.05), initial_scale=2.0**40
    )
    model.compile(optimizer, "mse")
    x, y = data(64)
    loss_before = model.evaluate(x, y, verbose=0)
    evaluated = counts(blocks)  # evaluation runs every block
    kernels = [ops.convert_to_numpy(b.dense2.kernel) for b in blocks]
    stages = [(2, 24), (4, 8), (6, None)]
    recorder = StepLosses(stack)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=5,
        verbose=0,
        callbacks=[keras_raptr.StageScheduler(stages, verbose=0), recorder],
    )
    losses = recorder.series(0, 40)
    assert np.all(np.isfinite(losses))
    assert _all_finite(model)
    scale = float(ops.convert_to_numpy(optimizer.dynamic_scale))
    assert scale < 2.0**30  # overflows were detected and the scale dropped
    iterations = int(ops.convert_to_numpy(optimizer.iterations))
    # The stack's step (which drives the stages) counts every step; the
    # optimizer's iterations skip the overflowed ones.
    assert int(ops.convert_to_numpy(stack.step)) == 40
    assert 0 < iterations < 40
    np.testing.assert_array_equal(
        counts(blocks) - evaluated,
        reference_counts(6, (0, 5), keep_per_step(stages, 40)),
    )
    # Training learned something despite the skipped steps (on all the
    # data: the losses of single batches of 8, first against last, had
    # failed this for 1 of 12 initial weights).
    assert model.evaluate(x, y, verbose=0) < loss_before
    for block, old in zip(blocks, kernels):
        assert block.dense2.kernel.dtype == "float32"
        assert not np.array_equal(
            ops.convert_to_numpy(block.dense2.kernel), old
        )


def test_mixed_float16_gradients_of_never_run_blocks_are_zero():
    keras.config.set_dtype_policy("mixed_float16")
    # keep_count = fixed count: the free blocks never run, so with SGD
    # (after loss scaling and unscaling) their weights stay exactly put.
    model, stack, blocks = make_model(num_blocks=5, keep_count=2)
    # A loss scale that does not overflow this toy model's float16
    # gradients, so that every step updates the weights.
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.01), initial_scale=64.0
    )
    model.compile(optimizer, "mse")
    x, y = data(32)
    before = [ops.convert_to_numpy(b.dense.kernel) for b in blocks]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(ops.convert_to_numpy(optimizer.iterations)) == 4
    np.testing.assert_array_equal(counts(blocks), [4, 0, 0, 0, 4])
    for index, (block, old) in enumerate(zip(blocks, before)):
        new = ops.convert_to_numpy(block.dense.kernel)
        assert np.all(np.isfinite(new))
        assert np.array_equal(new, old) == (index in (1, 2, 3))


# -- interruption (a real process, killed with SIGKILL) ------------------


def _worker(workdir, log):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.resume_helpers", workdir],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _progress(workdir):
    path = os.path.join(workdir, "progress.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


@pytest.mark.large
def test_sigkill_mid_epoch_then_restart(tmp_path):
    workdir = str(tmp_path)
    with open(os.path.join(workdir, "worker.log"), "wb") as log:
        process = _worker(workdir, log)
        # Kill once step 13 has finished: the backup (every 4 steps) holds
        # step 12, so at most 4 steps since it may be lost.
        deadline = time.time() + 240
        while time.time() < deadline:
            done = [e["step"] for e in _progress(workdir) if "step" in e]
            if done and max(done) >= 13:
                break
            assert process.poll() is None, open(log.name).read()
            time.sleep(0.05)
        else:
            process.kill()
            pytest.fail("worker made no progress")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        killed_after = max(e["step"] for e in _progress(workdir) if "step" in e)

        # Every checkpoint left on disk can be read.
        readable = check_checkpoints_readable(workdir)
        assert readable["backup_step"] is not None
        assert killed_after + 1 - readable["backup_step"] <= 4
        per_epoch = WORKER_STEPS_PER_EPOCH
        assert (killed_after + 1) % per_epoch != 0  # killed mid-epoch
        assert readable["keras_steps"] == {
            f"ckpt_{e}.keras": e * per_epoch
            for e in range(1, killed_after // per_epoch + 1)
        }

        process = _worker(workdir, log)
        assert process.wait(timeout=300) == 0, open(log.name).read()
    events = _progress(workdir)
    starts = [e["start"] for e in events if "start" in e]
    assert starts[0] == 0
    restored = starts[1]
    assert restored == readable["backup_step"]
    assert killed_after + 1 - restored <= 4  # steps lost
    print("killed after step", killed_after, "restored", restored, readable)
    final = events[-1]["final"]
    # Training completed in the last stage, and the blocks ran the
    # reference subsets of every global step that was kept.
    assert final["keep_count"] == 6
    keep = keep_per_step(final["stages"], final["step"])
    assert final["counts"] == reference_counts(6, (0, 5), keep).tolist()


@pytest.mark.large
def test_soak_briefly():
    # benchmarks/soak.py, short: 400 steps over 4 stages.
    steps = "200" if keras.config.backend() == "torch" else "400"
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "soak.py"),
            "--steps", steps,
            "--every", "5",
            "--epochs", "8",
            "--torch_threads", "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "soak: OK" in result.stdout
