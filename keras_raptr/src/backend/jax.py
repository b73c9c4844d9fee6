"""JAX: one `lax.cond` per non-fixed block at a run-time keep count
(`common.run_blocks_with_cond`), and a retrace that defeats `jax.jit`'s cache.
"""

from keras_raptr.src.backend.common import run_blocks_with_cond as run_blocks  # noqa: F401


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
