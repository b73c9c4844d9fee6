"""JAX: one `lax.cond` per non-fixed block, with the block's state threaded.

A block that changes its non-trainable state while it runs (Dropout advances
its seed generator) cannot assign variables inside `lax.cond`: the new value
would be a tracer that leaks out of the branch (keras-team/keras#20724). So the
branch runs `block.stateless_call` and returns the new non-trainable values;
both branches return a state of the same structure and the values are
assigned after the cond, where the enclosing trainer scope records them.
"""

import jax

from keras_raptr.src.backend.common import stateless_call_kwargs


def _run_free_block(keep, block, x, call_kwargs, post):
    trainable = [v.value for v in block.trainable_variables]
    non_trainable_vars = block.non_trainable_variables
    non_trainable = [v.value for v in non_trainable_vars]
    call_kwargs = stateless_call_kwargs(block, call_kwargs)

    def run():
        y, new_state = block.stateless_call(
            trainable, non_trainable, x, **call_kwargs
        )
        return post(x, y), list(new_state)

    def skip():
        return x, non_trainable

    x, new_state = jax.lax.cond(keep, run, skip)
    for variable, value in zip(non_trainable_vars, new_state):
        variable.assign(value)
    return x


def run_blocks(x, blocks, free_index, mask, call_kwargs, post):
    for block, index in zip(blocks, free_index):
        if index is None:
            x = block(x, **call_kwargs)
        else:
            x = _run_free_block(mask[index], block, x, call_kwargs, post)
    return x


def retrace_train_function(model):
    """Rebuilds `model.train_function` so that the next step is traced anew.

    `make_train_function(force=True)` alone does not retrace on JAX: it jits
    the same `model.train_step` again and `jax.jit`'s cache (keyed on the
    function) returns the old trace. Jitting a new function object does.
    """
    own = model.__dict__.get("train_step")
    base = own if own is not None else getattr(type(model), "train_step")

    if own is not None:

        def train_step(*args, **kwargs):
            return own(*args, **kwargs)

    else:

        def train_step(*args, **kwargs):
            return base(model, *args, **kwargs)

    model.train_step = train_step
    try:
        model.make_train_function(force=True)
    finally:
        if own is None:
            del model.train_step
        else:
            model.train_step = own


def trace_for_keep_count():
    """Whether a step traced for a known keep count should use it (the
    straight-line gathered path): yes, compiled steps are traced here."""
    return True
