"""Helpers shared by the backend implementations and the layer."""

from keras import ops


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
