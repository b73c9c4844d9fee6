"""TensorFlow: one `tf.cond` per non-fixed block at a run-time keep count
(`common.run_blocks_with_cond`), with and without XLA.

Under `tf.function` only the taken branch executes, and the gradient of the
untaken branch's weights is zero. The branch assigns no variables (the block
runs through `stateless_call`), which also keeps `tf.distribute` strategies
working: an assignment inside a `tf.cond` in replica context would need a
`merge_call`, which TF does not allow inside control flow.
"""

import weakref

from keras_raptr.src.backend.common import run_blocks_with_cond as run_blocks  # noqa: F401
from keras_raptr.src.backend.common import run_in_background
from keras_raptr.src.backend.common import train_step_bound_to


class TracedStep:
    """Keras' TF training function of one stage, with its `tf.function`.

    Records the data iterator of its first call, so that another stage's
    step can be traced for the same iterator before it is needed
    (`compile_ahead`).
    """

    def __init__(self, function, traced):
        self.function = function
        self.traced = traced  # the `tf.function` taking the iterator
        self.example_args = None

    def __call__(self, iterator):
        if self.example_args is None:
            self.example_args = _reference(iterator)
        return self.function(iterator)

    def compile_in_background(self, example_args):
        """Traces this step for the recorded iterator on a thread.

        Only the Python trace moves off the training thread: TensorFlow
        still optimizes the graph at the step's first call. Returns the
        thread; an exception is kept as `thread.error` (the step then
        traces on its first call, as it would have anyway).
        """
        iterator = example_args()
        if iterator is None:  # the iterator is gone; trace at first call
            return None
        return run_in_background(
            lambda: self.traced.get_concrete_function(iterator)
        )


def _reference(iterator):
    try:
        return weakref.ref(iterator)
    except TypeError:
        return lambda: iterator


def _iterator_function(function):
    """The `tf.function` over the iterator inside Keras' training function,
    or `None` where Keras builds it differently."""
    for name, cell in zip(
        function.__code__.co_freevars, function.__closure__ or ()
    ):
        value = cell.cell_contents
        if name == "multi_step_on_iterator" and hasattr(
            value, "get_concrete_function"
        ):
            return value
    return None


def retrace_train_function(model, bind=None):
    """Rebuilds `model.train_function`; the next step is traced anew.

    With `bind` (a context entered whenever the step is traced) and the
    default strategy, the new function is a `TracedStep`, returned so that
    it can be traced ahead of its stage. Under a `tf.distribute` strategy
    the replica steps are traced on TensorFlow's replica threads, which do
    not see the thread-local `bind`: there the stacks' `_compiled_keep_count`
    says which stage a step is for, it is traced on the training thread,
    and `None` is returned.
    """
    if bind is None or model.run_eagerly or _distributed(model):
        model.make_train_function(force=True)
        return None
    with train_step_bound_to(model, bind):
        model.make_train_function(force=True)
    traced = _iterator_function(model.train_function)
    if traced is None:
        return None
    step = TracedStep(model.train_function, traced)
    model.train_function = step
    return step


def _distributed(model):
    strategy = model.distribute_strategy
    return strategy is not None and type(strategy).__name__ != (
        "_DefaultDistributionStrategy"
    )


def trace_for_keep_count():
    """Whether a step traced for a known keep count should use it (the
    straight-line gathered path): yes, compiled steps are traced here."""
    return True
