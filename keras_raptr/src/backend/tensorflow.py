"""TensorFlow: one `tf.cond` per non-fixed block at a run-time keep count
(`common.run_blocks_with_cond`), with and without XLA.

Under `tf.function` only the taken branch executes, and the gradient of the
untaken branch's weights is zero. The branch assigns no variables (the block
runs through `stateless_call`), which also keeps `tf.distribute` strategies
working: an assignment inside a `tf.cond` in replica context would need a
`merge_call`, which TF does not allow inside control flow.
"""

from keras_raptr.src.backend.common import run_blocks_with_cond as run_blocks  # noqa: F401


def retrace_train_function(model, bind=None):
    """Rebuilds `model.train_function`; the next step is traced anew.

    Traced on the training thread, where the stacks' `_compiled_keep_count`
    says which stage it is for, so `bind` is not needed. Returns `None`: no
    step is compiled ahead on this backend.
    """
    del bind
    model.make_train_function(force=True)


def trace_for_keep_count():
    """Whether a step traced for a known keep count should use it (the
    straight-line gathered path): yes, compiled steps are traced here."""
    return True


def compiles_train_step(model):
    """Whether `fit` traces the training step into a `tf.function` (with or
    without XLA): whenever it does not run eagerly."""
    return not model.run_eagerly
