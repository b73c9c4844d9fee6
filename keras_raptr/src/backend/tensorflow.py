"""TensorFlow: one `tf.cond` per non-fixed block.

Under `tf.function` (with or without XLA) only the taken branch executes, and
the gradient of the untaken branch's weights is zero. Variable assignments
inside the branch (Dropout's seed state) are handled by TF's cond.
"""

from keras import ops


def run_blocks(x, blocks, free_index, mask, call_kwargs, post):
    for block, index in zip(blocks, free_index):
        if index is None:
            x = block(x, **call_kwargs)
            continue

        def run(block=block, x=x):
            return post(x, block(x, **call_kwargs))

        def skip(x=x):
            return x

        x = ops.cond(mask[index], run, skip)
    return x


def retrace_train_function(model):
    """Rebuilds `model.train_function`; the next step is traced anew."""
    model.make_train_function(force=True)


def trace_for_keep_count():
    """Whether a step traced for a known keep count should use it (the
    straight-line gathered path): yes, compiled steps are traced here."""
    return True
