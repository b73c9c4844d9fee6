"""Runs a small RaPTr `fit` under a multi-device distribution and prints, as
JSON, the executions per block. Started by tests/test_distributed.py in a
fresh process (device counts must be set before the backend starts).

    KERAS_BACKEND=jax python tests/distributed_worker.py
    KERAS_BACKEND=tensorflow python tests/distributed_worker.py
"""

import json
import os
import sys
import threading
import warnings

BACKEND = os.environ["KERAS_BACKEND"]
if BACKEND == "jax":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import keras_raptr  # noqa: E402

TRACE_THREADS = []  # the thread of every trace of a block
PREPARED = []  # TF: background traces of whole training steps


class ReplicaCountingBlock(keras.layers.Layer):
    """`x + dense(x)`; counts executions (once per step on any replica)."""

    def build(self, input_shape):
        self.dense = keras.layers.Dense(input_shape[-1])
        self.dense.build(input_shape)
        self.count = self.add_weight(
            name="count", shape=(), dtype="int32", initializer="zeros",
            trainable=False, aggregation="only_first_replica",
        )

    def call(self, x):
        TRACE_THREADS.append(threading.current_thread().name)
        self.count.assign_add(1)
        return x + self.dense(x)


def build_and_fit(scheduled):
    blocks = [ReplicaCountingBlock(name=f"b{i}") for i in range(6)]
    inputs = keras.Input((4,))
    keep_count = 2 if scheduled else 4
    stack = keras_raptr.RandomPartStack(blocks, keep_count=keep_count)
    model = keras.Model(inputs, keras.layers.Dense(1)(stack(inputs)))
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4)).astype("float32")
    y = rng.normal(size=(80, 1)).astype("float32")
    callbacks = []
    if scheduled:
        callbacks = [keras_raptr.StageScheduler([(2, 4), (4, 3), (6, None)],
                                                verbose=0)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=callbacks)
    scheduler_warnings = [str(w.message) for w in caught
                          if "StageScheduler" in str(w.message)]
    counts = [int(ops.convert_to_numpy(b.count)) for b in blocks]
    return counts, scheduler_warnings


def main():
    results = {}
    if BACKEND == "jax":
        import jax

        devices = jax.devices()
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
        results["devices"] = len(devices)
        for scheduled in (False, True):
            results[str(scheduled)], results["warnings"] = build_and_fit(
                scheduled
            )
        # Stages 2 and 3 of the scheduled run were compiled ahead, on the
        # sharded arguments of the distributed step.
        results["traced_ahead"] = TRACE_THREADS.count(
            "keras_raptr-compile-ahead"
        )
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
        # Replica threads trace the blocks, so count the background traces
        # of whole steps instead of thread names.
        from keras_raptr.src.backend import tensorflow as tf_steps

        prepare = tf_steps.TracedStep._prepare

        def counting_prepare(self, iterator):
            prepare(self, iterator)
            PREPARED.append(threading.current_thread().name)

        tf_steps.TracedStep._prepare = counting_prepare
        results["devices"] = strategy.num_replicas_in_sync
        for scheduled in (False, True):
            with strategy.scope():
                results[str(scheduled)], results["warnings"] = build_and_fit(
                    scheduled
                )
        results["traced_ahead"] = len(PREPARED)
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
