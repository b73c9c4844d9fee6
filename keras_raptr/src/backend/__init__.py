"""The one place where keras_raptr differs by backend: running a stack of
blocks of which only the ones in a mask are computed.

Every implementation has the signature

    run_blocks(x, blocks, free_index, mask, call_kwargs, post)

- `blocks`: the layers, in depth order.
- `free_index[i]`: `None` for a fixed block (always runs, output unchanged);
  otherwise the position of block `i` in `mask`.
- `mask`: boolean tensor over the non-fixed blocks, `True` = run.
- `call_kwargs`: keyword arguments passed to every block call.
- `post(x, y)`: applied to a non-fixed block's output (scaling, dtype).

A skipped block is identity, is not computed forward or backward, and its
trainable weights receive a zero gradient on every backend.

`retrace_train_function(model, bind)` rebuilds the model's training function
so the next step is traced again (used when a stage changes the traced keep
count); `bind()` gives a context entered while the step is traced. On JAX
and TensorFlow it returns the new step (a `common.StepAhead`), which
`StageScheduler` compiles (JAX) or traces (TensorFlow) ahead of its stage on
a background thread; on torch `None`.
`trace_for_keep_count()` says whether a step traced for a known keep count
should run the straight-line path for it (see RandomPartStack._run_gathered).
`HostScalars()` keeps host copies of the stack's counters for an eager step
that draws its subset on the host (PyTorch: reading them from a GPU waits
for the device, so the torch version reads only after another write).
`custom_gradient(forward)` is `keras.ops.custom_gradient` for a function of
several outputs (Keras' torch version passes a single upstream gradient).
`dense(gradient)` gives a gradient as a dense tensor (TensorFlow hands a
gather's gradient on as `IndexedSlices`).
`compiles_train_step(model)` says whether `fit` traces and compiles the
model's training step (so a new stage's step has a compile time to report).
"""

import keras

_BACKEND = keras.config.backend()

if _BACKEND == "jax":
    from keras_raptr.src.backend.jax import HostScalars  # noqa: F401
    from keras_raptr.src.backend.jax import compiles_train_step  # noqa: F401
    from keras_raptr.src.backend.jax import custom_gradient  # noqa: F401
    from keras_raptr.src.backend.jax import dense  # noqa: F401
    from keras_raptr.src.backend.jax import retrace_train_function  # noqa: F401
    from keras_raptr.src.backend.jax import run_blocks  # noqa: F401
    from keras_raptr.src.backend.jax import trace_for_keep_count  # noqa: F401
elif _BACKEND == "torch":
    from keras_raptr.src.backend.torch import HostScalars  # noqa: F401
    from keras_raptr.src.backend.torch import compiles_train_step  # noqa: F401
    from keras_raptr.src.backend.torch import custom_gradient  # noqa: F401
    from keras_raptr.src.backend.torch import dense  # noqa: F401
    from keras_raptr.src.backend.torch import retrace_train_function  # noqa: F401
    from keras_raptr.src.backend.torch import run_blocks  # noqa: F401
    from keras_raptr.src.backend.torch import trace_for_keep_count  # noqa: F401
else:
    from keras_raptr.src.backend.tensorflow import HostScalars  # noqa: F401
    from keras_raptr.src.backend.tensorflow import compiles_train_step  # noqa: F401
    from keras_raptr.src.backend.tensorflow import custom_gradient  # noqa: F401
    from keras_raptr.src.backend.tensorflow import dense  # noqa: F401
    from keras_raptr.src.backend.tensorflow import retrace_train_function  # noqa: F401
    from keras_raptr.src.backend.tensorflow import run_blocks  # noqa: F401
    from keras_raptr.src.backend.tensorflow import trace_for_keep_count  # noqa: F401
