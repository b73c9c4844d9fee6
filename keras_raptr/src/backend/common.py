"""Helpers shared by the backend implementations and the layer."""

import contextlib
import threading

from keras import ops

# Python tracing of training steps bound to a stage is serialized: Keras
# layers keep some Python state (e.g. collected losses) that two concurrent
# traces of the same model would share. Only tracing holds it; compiling and
# running steps do not.
TRACE_LOCK = threading.Lock()


def run_in_background(target, name="keras_raptr-compile-ahead"):
    """Runs `target()` on a daemon thread and returns the thread; an
    exception is kept as `thread.error` for the caller to report."""

    def run():
        try:
            target()
        except Exception as error:  # the caller reports it
            thread.error = error

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.error = None
    thread.start()
    return thread


@contextlib.contextmanager
def train_step_bound_to(model, bind):
    """Within this context `model.train_step` is a new function object that,
    whenever it runs (while a compiled step is traced), holds `TRACE_LOCK`
    and enters `bind()`. A training function built inside keeps it."""
    own = model.__dict__.get("train_step")
    base = own if own is not None else getattr(type(model), "train_step")

    def train_step(*args, **kwargs):
        with TRACE_LOCK, bind():
            if own is not None:
                return own(*args, **kwargs)
            return base(model, *args, **kwargs)

    model.train_step = train_step
    try:
        yield
    finally:
        if own is None:
            del model.train_step
        else:
            model.train_step = own


def stateless_call_kwargs(block, call_kwargs):
    """The keyword arguments to give `block.stateless_call`.

    `Layer.__call__` drops `training` for a layer whose `call` does not take
    it, but `stateless_call` passes its keyword arguments to `call` as they
    are, so drop it here the same way.
    """
    if "training" in call_kwargs and not getattr(
        block, "_call_has_training_arg", True
    ):
        return {k: v for k, v in call_kwargs.items() if k != "training"}
    return call_kwargs


def _run_free_block(keep, block, x, call_kwargs, post):
    """Runs `block` on `x` where `keep` holds, with its state threaded.

    A block that changes its non-trainable state while it runs (Dropout
    advances its seed generator) must not assign variables inside the
    conditional: on JAX the new value would be a tracer leaking out of the
    branch (keras-team/keras#20724), and under `tf.distribute` an assignment
    in replica context inside `tf.cond` is not allowed. So the branch runs
    `block.stateless_call` and returns the new non-trainable values; both
    branches return a state of the same structure, assigned after the cond
    (where the enclosing trainer scope records it).
    """
    trainable = [v.value for v in block.trainable_variables]
    state_variables = block.non_trainable_variables
    state = [v.value for v in state_variables]
    call_kwargs = stateless_call_kwargs(block, call_kwargs)

    def run():
        y, new_state = block.stateless_call(trainable, state, x, **call_kwargs)
        return post(x, y), list(new_state)

    def skip():
        return x, state

    x, new_state = ops.cond(keep, run, skip)
    for variable, value in zip(state_variables, new_state):
        variable.assign(value)
    return x


def run_blocks_with_cond(x, blocks, free_index, mask, call_kwargs, post):
    """One conditional per non-fixed block (JAX `lax.cond`, TF `tf.cond`)."""
    for block, index in zip(blocks, free_index):
        if index is None:
            x = block(x, **call_kwargs)
        else:
            x = _run_free_block(mask[index], block, x, call_kwargs, post)
    return x
