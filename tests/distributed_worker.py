"""Runs a small RaPTr `fit` under a multi-device distribution and prints, as
JSON, the executions per block. Started by tests/test_distributed.py in a
fresh process (device counts must be set before the backend starts).

    KERAS_BACKEND=jax python tests/distributed_worker.py
    KERAS_BACKEND=tensorflow python tests/distributed_worker.py
    KERAS_BACKEND=jax python tests/distributed_worker.py model_parallel
"""

import json
import os
import re
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
    """Returns the executions per block, the scheduler's warnings and the
    trained model."""
    keras.utils.set_random_seed(0)
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
    return counts, scheduler_warnings, model


def fit_tiny_bert():
    """A KerasHub BERT (4 blocks, dropout 0.1) wrapped by `wrap_backbone`,
    one epoch of `fit` on random tokens under `StageScheduler("2-3-4")`."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=4, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=8,
    )
    raptr = keras_raptr.wrap_backbone(backbone)
    sequence = raptr(raptr.input)["sequence_output"]
    outputs = keras.layers.Dense(1)(ops.mean(sequence, axis=1))
    model = keras.Model(raptr.input, outputs)
    model.compile(keras.optimizers.AdamW(1e-2), "mse")
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(0, 50, (32, 8)).astype("int32"),
        "segment_ids": np.zeros((32, 8), "int32"),
        "padding_mask": np.ones((32, 8), "bool"),
    }
    y = rng.normal(size=(32, 1)).astype("float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False,
              callbacks=[keras_raptr.StageScheduler("2-3-4", verbose=0)])
    return model, raptr.random_part_stack._has_straight_line_path()


def sharding_spec(model, pattern):
    (variable,) = [v for v in model.weights if re.fullmatch(pattern, v.path)]
    return str(getattr(variable.value.sharding, "spec", None))


def max_weight_difference(model_a, model_b):
    return max(
        float(np.max(np.abs(ops.convert_to_numpy(a) - ops.convert_to_numpy(b))))
        for a, b in zip(model_a.weights, model_b.weights)
    )


def model_parallel(layout_map):
    return keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name="batch"
    )


def model_parallel_against_one_device(devices):
    """JAX `ModelParallel` over a (batch 1, model 2) mesh, the blocks'
    kernels split over "model", against the same runs on one device."""
    mesh = keras.distribution.DeviceMesh((1, 2), ("batch", "model"), devices)
    counting = keras.distribution.LayoutMap(mesh)
    counting[r".*/b\d/dense_\d+/kernel"] = (None, "model")
    counting[r".*/b\d/dense_\d+/bias"] = ("model",)
    bert = keras.distribution.LayoutMap(mesh)
    bert[".*feedforward_intermediate_dense/kernel"] = (None, "model")
    bert[".*feedforward_output_dense/kernel"] = ("model", None)
    results = {}
    for scheduled in (False, True):
        runs = {}
        for name, distribution in (
            ("one_device", None),
            ("parallel", model_parallel(counting)),
        ):
            keras.distribution.set_distribution(distribution)
            runs[name] = build_and_fit(scheduled)
        results[str(scheduled)] = {
            "counts": runs["parallel"][0],
            "warnings": runs["parallel"][1],
            "max_weight_difference": max_weight_difference(
                runs["one_device"][2], runs["parallel"][2]
            ),
            "kernel_spec": sharding_spec(
                runs["parallel"][2], r".*/b1/dense_\d+/kernel"
            ),
        }
    # KerasHub BERT on the straight-line path (one trace per stage).
    keras.distribution.set_distribution(None)
    one_device, _ = fit_tiny_bert()
    keras.distribution.set_distribution(model_parallel(bert))
    parallel, straight_line = fit_tiny_bert()
    results["bert"] = {
        "straight_line_path": straight_line,
        "max_weight_difference": max_weight_difference(one_device, parallel),
        "kernel_spec": sharding_spec(
            parallel, ".*layer_1/feedforward_intermediate_dense/kernel"
        ),
    }
    return results


def main():
    results = {}
    if BACKEND == "jax":
        import jax

        devices = jax.devices()
        if sys.argv[1:] == ["model_parallel"]:
            results = model_parallel_against_one_device(devices)
            print("RESULT " + json.dumps(results), flush=True)
            return
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
        results["devices"] = len(devices)
        for scheduled in (False, True):
            results[str(scheduled)], results["warnings"], _ = build_and_fit(
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
                (results[str(scheduled)], results["warnings"],
                 _) = build_and_fit(scheduled)
        results["traced_ahead"] = len(PREPARED)
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
