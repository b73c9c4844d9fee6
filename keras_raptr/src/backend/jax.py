"""JAX: one `lax.cond` per non-fixed block at a run-time keep count
(`common.run_blocks_with_cond`), a retrace that defeats `jax.jit`'s cache,
and compiling the next stage's step ahead, on a background thread.
"""

import contextlib
import threading

import jax
import numpy as np

from keras_raptr.src.backend.common import HostScalars  # noqa: F401
from keras_raptr.src.backend.common import StepAhead
from keras_raptr.src.backend.common import custom_gradient  # noqa: F401
from keras_raptr.src.backend.common import dense  # noqa: F401
from keras_raptr.src.backend.common import make_bound_train_function
from keras_raptr.src.backend.common import run_blocks_with_cond as run_blocks  # noqa: F401

# Python tracing of training steps is serialized: Keras layers keep some
# Python state (e.g. collected losses) that two concurrent traces of the same
# model would share. Only tracing holds it; XLA compilation runs unlocked.
_TRACE_LOCK = threading.Lock()


class TracedStep(StepAhead):
    """The jitted training step of one stage.

    Records the abstract arguments (shapes, dtypes, shardings) of its first
    call; compiling ahead lowers and compiles the jitted step for them, which
    puts the executable in its cache, so the first real call with arguments
    like them starts without compiling.
    """

    def __init__(self, jitted):
        super().__init__()
        self.jitted = jitted

    def __call__(self, *args, **kwargs):
        if self.example_args is None:
            self.example_args = jax.tree.map(_abstract, (args, kwargs))
        return self.jitted(*args, **kwargs)

    def _prepare(self, example_args):
        args, kwargs = example_args
        self.jitted.lower(*args, **kwargs).compile()


def _abstract(value):
    if isinstance(value, (np.ndarray, np.generic)):
        # A host batch: keep its shape and dtype, not the batch itself.
        return jax.ShapeDtypeStruct(value.shape, value.dtype)
    if not isinstance(value, jax.Array):
        return value
    # An uncommitted array (plain single-device training) must be described
    # without a sharding, or the compiled step would not match the call.
    sharding = value.sharding if value.committed else None
    return jax.ShapeDtypeStruct(
        value.shape, value.dtype, sharding=sharding, weak_type=value.weak_type
    )


@contextlib.contextmanager
def _recording_jit(steps):
    """Makes Keras' JAX trainer wrap the step it jits in a `TracedStep`."""
    from keras.src.backend.jax import trainer

    original = getattr(trainer, "jit", None)
    if original is None:  # another Keras layout: no compile-ahead
        yield
        return

    def jit(*args, **kwargs):
        step = TracedStep(original(*args, **kwargs))
        steps.append(step)
        return step

    trainer.jit = jit
    try:
        yield
    finally:
        trainer.jit = original


def retrace_train_function(model, bind=None):
    """Rebuilds `model.train_function` so that the next step is traced anew.

    `make_train_function(force=True)` alone does not retrace on JAX: it jits
    the same `model.train_step` again and `jax.jit`'s cache (keyed on the
    function) returns the old trace. Jitting a new function object does.

    `bind()`, if given, returns a context entered whenever the new step is
    traced (it binds the step to its stage's keep count).

    Returns the new jitted step as a `TracedStep`, or `None` when the step
    is not jitted (`run_eagerly`, `jit_compile=False`).
    """
    steps = []
    make_bound_train_function(
        model, bind, lock=_TRACE_LOCK, around=lambda: _recording_jit(steps)
    )
    return steps[-1] if steps else None


def trace_for_keep_count():
    """Whether a step traced for a known keep count should use it (the
    straight-line gathered path): yes, compiled steps are traced here."""
    return True


def compiles_train_step(model):
    """Whether `fit` jits the training step (Keras: `jit_compile`, the
    default on JAX, and not `run_eagerly`)."""
    return bool(model.jit_compile) and not model.run_eagerly
