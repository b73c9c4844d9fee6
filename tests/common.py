"""Small blocks and models shared by the tests."""

import importlib.util
import os

import keras
import numpy as np
from keras import ops

from keras_raptr.src.layers import sampling


@keras.saving.register_keras_serializable("keras_raptr_tests")
class CountingBlock(keras.layers.Layer):
    """`x + dropout(dense(x))`; counts its executions in a variable.

    It keeps no Python-side state: under `torch.compile`, Dynamo guards on
    a Python attribute the step changes and would compile again at every
    step (then give up and run eagerly at its recompile limit).
    """

    def __init__(self, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.dropout = dropout

    def build(self, input_shape):
        self.dense = keras.layers.Dense(input_shape[-1], name="dense")
        self.dense.build(input_shape)
        self.drop = keras.layers.Dropout(self.dropout)
        self.count = self.add_weight(
            name="count",
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
        )

    def call(self, x, training=None, offset=None):
        self.count.assign_add(1)
        y = self.drop(self.dense(x), training=training)
        if offset is not None:
            y = y + offset
        return x + ops.cast(y, x.dtype)

    def get_config(self):
        return {**super().get_config(), "dropout": self.dropout}


def counts(blocks):
    return np.array([int(ops.convert_to_numpy(b.count)) for b in blocks])


def reference_counts(num_blocks, fixed, keep_per_step, seed=0, first_step=0,
                     sampling_mode="exact"):
    """Executions per block that the layer must produce, from the numpy
    reference sampler, for `keep_per_step[i]` at step `first_step + i`."""
    free = [i for i in range(num_blocks) if i not in fixed]
    total = np.zeros(num_blocks, dtype=int)
    for offset, keep in enumerate(keep_per_step):
        total[list(fixed)] += 1
        p = (keep - len(fixed)) / len(free)
        mask = sampling.numpy_keep_mask(
            seed, first_step + offset, len(free), keep - len(fixed),
            sampling_mode, p,
        )
        total[np.array(free)[mask]] += 1
    return total


def make_model(num_blocks=6, dim=4, dropout=0.0, **stack_kwargs):
    import keras_raptr

    blocks = [
        CountingBlock(dropout=dropout, name=f"block_{i}")
        for i in range(num_blocks)
    ]
    inputs = keras.Input((dim,))
    stack = keras_raptr.RandomPartStack(blocks, name="stack", **stack_kwargs)
    outputs = keras.layers.Dense(1, name="head")(stack(inputs))
    model = keras.Model(inputs, outputs)
    return model, stack, blocks


def data(num=64, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, dim)).astype("float32")
    y = rng.normal(size=(num, 1)).astype("float32")
    return x, y


def load_script(*path):
    """Imports a script of the repository (e.g. `"examples", "demo.py"`) as
    a module, to test its functions."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        os.path.splitext(path[-1])[0], os.path.join(root, *path)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
