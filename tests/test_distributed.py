"""Multi-device data parallelism on CPU: JAX `keras.distribution.DataParallel`
over 2 host devices and TF `MirroredStrategy` over 2 logical CPUs. Every
replica must run the same subset, and the counts must equal the single-device
reference."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.common import reference_counts

BACKEND = keras.config.backend()


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="torch has no keras.distribution in Keras 3.15; DDP is not "
    "covered by this test",
)
def test_data_parallel_two_devices_match_reference():
    worker = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
    out = subprocess.run(
        [sys.executable, worker],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KERAS_BACKEND": BACKEND},
    )
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["devices"] == 2
    np.testing.assert_array_equal(
        result["False"], reference_counts(6, (0, 5), [4] * 10)
    )
    np.testing.assert_array_equal(
        result["True"], reference_counts(6, (0, 5), [2] * 4 + [4] * 3 + [6] * 3)
    )
