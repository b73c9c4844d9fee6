"""TensorFlow: one `tf.cond` per non-fixed block at a run-time keep count
(`common.run_blocks_with_cond`), with and without XLA.

Under `tf.function` only the taken branch executes, and the gradient of the
untaken branch's weights is zero. The branch assigns no variables (the block
runs through `stateless_call`), which also keeps `tf.distribute` strategies
working: an assignment inside a `tf.cond` in replica context would need a
`merge_call`, which TF does not allow inside control flow.

`StageScheduler` traces the next stage's step ahead, on a background thread
(`TracedStep`): the Python trace is most of a stage start on TensorFlow.
"""

import tensorflow as tf

from keras_raptr.src.backend.common import HostScalars  # noqa: F401
from keras_raptr.src.backend.common import StepAhead
from keras_raptr.src.backend.common import custom_gradient  # noqa: F401
from keras_raptr.src.backend.common import make_bound_train_function
from keras_raptr.src.backend.common import run_blocks_with_cond as run_blocks  # noqa: F401


class TracedStep(StepAhead):
    """The training function of one stage, whose step can be traced ahead.

    Keras' TensorFlow trainer runs a step by calling a `tf.function` on the
    data iterator. This records the type spec of the first call's iterator
    (not the iterator, which holds the data pipeline); tracing ahead gets
    that `tf.function`'s concrete function for it, which puts the trace in
    its cache, so the stage's first call skips the Python trace and only
    builds and runs the graph.
    """

    def __init__(self, function, traced):
        super().__init__()
        self.function = function
        self._traced = traced

    def __call__(self, iterator):
        if self.example_args is None and isinstance(iterator, _ITERATORS):
            self.example_args = getattr(iterator, "_type_spec", iterator)
        return self.function(iterator)

    def _prepare(self, iterator_spec):
        self._traced.get_concrete_function(iterator_spec)


_ITERATORS = (tf.data.Iterator, tf.distribute.DistributedIterator)


def _iterator_function(function):
    """The `tf.function` that Keras' training function calls on an
    iterator, or `None` where Keras is laid out differently."""
    code = getattr(function, "__code__", None)
    if code is None or not function.__closure__:
        return None
    cells = dict(zip(code.co_freevars, function.__closure__))
    cell = cells.get("multi_step_on_iterator")
    traced = None if cell is None else cell.cell_contents
    if not hasattr(traced, "get_concrete_function"):
        return None  # `run_eagerly`: a plain Python function
    return traced


def retrace_train_function(model, bind=None):
    """Rebuilds `model.train_function`; the next step is traced anew.

    `bind()`, if given, returns a context entered whenever the new step is
    traced, on whichever thread traces it (it binds the step to its stage's
    keep count). No lock is held while tracing: under `MirroredStrategy`
    the replica threads of one trace would wait on each other's lock.

    Returns the new step as a `TracedStep` (also set as
    `model.train_function`), which `StageScheduler` traces ahead of its
    stage; `None` when the step is not a `tf.function` (`run_eagerly`).
    """
    make_bound_train_function(model, bind)
    traced = _iterator_function(model.train_function)
    if traced is None:
        return None
    step = TracedStep(model.train_function, traced)
    model.train_function = step
    return step


def trace_for_keep_count():
    """Whether a step traced for a known keep count should use it (the
    straight-line gathered path): yes, compiled steps are traced here."""
    return True


def compiles_train_step(model):
    """Whether `fit` traces the training step into a `tf.function` (with or
    without XLA): whenever it does not run eagerly."""
    return not model.run_eagerly


def dense(gradient):
    """`gradient` as a dense tensor: TensorFlow passes a gather's gradient
    on as `tf.IndexedSlices`."""
    return tf.convert_to_tensor(gradient)
