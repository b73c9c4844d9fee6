"""Helpers shared by the backend implementations and the layer."""

import contextlib
import threading
import time

import keras
from keras import ops

# The autocast scope a layer enters under mixed precision (private, as in
# `keras/src/layers/layer.py`).
from keras.src.backend import AutocastScope
from keras.src.backend import get_autocast_scope

# Keras keeps the mask of a tensor in this private attribute store; KerasHub
# reads it the same way (`keras_hub/src/layers/modeling/
# transformer_layer_utils.py`).
from keras.src.backend import get_keras_mask
from keras.src.backend import set_keras_mask


def stored_values(variables):
    """The variables' values as stored, not autocast.

    The stack calls its blocks inside its autocast scope (mixed precision),
    where reading a float variable casts it to the compute dtype. Weights
    read this way outside a block's run cost a cast even where the block is
    skipped, and state read this way and written back would lose precision
    (a frozen block's float32 weights are non-trainable state).
    `stateless_call` casts what the block reads, as a plain call would.
    """
    if get_autocast_scope() is None:
        # Nothing is autocast. (Entering a scope would also create Keras'
        # global `autocast_scope` attribute, on which `torch.compile`
        # guards: one more compile of the step.)
        return [v.value for v in variables]
    with AutocastScope(None):
        return [v.value for v in variables]


def stored_state(new_state, state):
    """The state to write back after `block.stateless_call(..., state)`,
    where `state` came from `stored_values`.

    A value the block assigned has its variable's dtype (`assign` converts
    to it). A value of another dtype is the autocast read of a variable the
    block did not assign, and that variable keeps its stored value.
    """
    return [
        new if _dtype(new) == _dtype(old) else old
        for new, old in zip(new_state, state)
    ]


def _dtype(value):
    return keras.backend.standardize_dtype(value.dtype)


class HostScalars:
    """Host copies of int scalar variables, for a step that runs eagerly
    and decides in Python what to compute (eager PyTorch: which blocks).

    `read(variables)` returns their values as Python ints;
    `assigned(variable, value)` tells it the value just assigned to one of
    them. This version reads the device each time; the PyTorch one reads it
    only where something else wrote the variable since.
    """

    def read(self, variables):
        return [int(ops.convert_to_numpy(v.value)) for v in variables]

    def assigned(self, variable, value):
        del variable, value


def block_call_args(block, x, call_kwargs):
    """`(x, kwargs)` to call `block` with, as a plain model would.

    - `training` is dropped for a block whose `call` does not take it
      (`Layer.__call__` does that; `stateless_call` passes its keyword
      arguments to `call` as they are).
    - `call_kwargs["mask"]`, the stack's Keras mask (e.g. padding from
      `Embedding(mask_zero=True)`), is attached to `x` unless `x` carries a
      mask already (KerasHub blocks read it from their input), and passed as
      `mask` only to a block whose `call` takes it. In a plain model Keras
      does both between layers; here outputs of conditionals and gathered
      slots carry no mask, so every block call goes through this.
    """
    keras_mask = call_kwargs.get("mask")
    drop = set()
    if keras_mask is not None:
        if get_keras_mask(x) is None:
            set_keras_mask(x, keras_mask)
    if "mask" in call_kwargs and not getattr(block, "_call_has_mask_arg", True):
        drop.add("mask")
    if "training" in call_kwargs and not getattr(
        block, "_call_has_training_arg", True
    ):
        drop.add("training")
    if drop:
        call_kwargs = {k: v for k, v in call_kwargs.items() if k not in drop}
    return x, call_kwargs


def call_block(block, x, call_kwargs):
    """`block(x, ...)` with the stack's call arguments (`block_call_args`)."""
    x, call_kwargs = block_call_args(block, x, call_kwargs)
    return block(x, **call_kwargs)


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
    # As stored: the taken branch casts what the block reads (a skipped
    # block casts nothing), and both branches return state in its own
    # dtype.
    trainable = stored_values(block.trainable_variables)
    state_variables = block.non_trainable_variables
    state = stored_values(state_variables)
    x, call_kwargs = block_call_args(block, x, call_kwargs)

    def run():
        y, new_state = block.stateless_call(trainable, state, x, **call_kwargs)
        return post(x, y), stored_state(new_state, state)

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
            x = call_block(block, x, call_kwargs)
        else:
            x = _run_free_block(mask[index], block, x, call_kwargs, post)
    return x


class StepAhead:
    """A stage's training step that can be traced (JAX: and compiled) ahead
    of its stage, on a background thread.

    Subclasses record `example_args` at their first call, so that another
    stage's step can be prepared for the same arguments before it is needed
    (`StageScheduler(compile_ahead=True)`), and define `_prepare`, which
    traces (and compiles) the step for such arguments, putting the result
    in the cache its real first call looks in.
    """

    def __init__(self):
        self.example_args = None
        # Seconds the background work took (`compile_in_background`).
        self.compile_seconds = None
        self._compiling = None  # the background thread, if any

    def _prepare(self, example_args):
        raise NotImplementedError

    @property
    def compiled_or_compiling(self):
        """Whether this step has run (so it is compiled) or is compiling."""
        return self.example_args is not None or self._compiling is not None

    def compile_in_background(self, example_args):
        """Starts `_prepare(example_args)` on a thread; `wait_for_compile`
        joins it."""

        def prepare():
            start = time.perf_counter()
            try:
                self._prepare(example_args)
            except Exception as error:  # `wait_for_compile` returns it
                thread.error = error
            else:
                self.compile_seconds = time.perf_counter() - start

        thread = threading.Thread(
            target=prepare, name="keras_raptr-compile-ahead", daemon=True
        )
        thread.error = None
        self._compiling = thread
        thread.start()

    def wait_for_compile(self):
        """Waits for a background compile, if one was started.

        Returns the exception it raised, or `None`. After a failure the step
        is traced and compiled at its first call, as it would have anyway.
        """
        thread, self._compiling = self._compiling, None
        if thread is None:
            return None
        thread.join()
        return thread.error


def make_bound_train_function(model, bind, lock=None, around=None):
    """`model.make_train_function(force=True)`, with every trace of the new
    step entering `bind()` (which binds it to its stage's keep count).

    `model.train_step` is replaced by a wrapper while the function is made;
    the trainer captures the wrapper, which runs only while the step is
    traced. `lock`, if given, is held during those traces. `around()`, if
    given, is a context entered while the function is made.
    """
    own = model.__dict__.get("train_step")
    base = own if own is not None else getattr(type(model), "train_step")

    def train_step(*args, **kwargs):
        context = bind() if bind is not None else contextlib.nullcontext()
        with lock or contextlib.nullcontext(), context:
            if own is not None:
                return own(*args, **kwargs)
            return base(model, *args, **kwargs)

    model.train_step = train_step
    try:
        with around() if around is not None else contextlib.nullcontext():
            model.make_train_function(force=True)
    finally:
        if own is None:
            del model.train_step
        else:
            model.train_step = own


def dense(gradient):
    """`gradient` as a dense tensor (as it is, except on TensorFlow)."""
    return gradient


def custom_gradient(forward):
    """`keras.ops.custom_gradient` for a function of several outputs.

    `forward(*args)` returns `(outputs, grad)`: `outputs` a tuple of
    tensors, and `grad(upstreams)` takes their upstream gradients (a list,
    one per output, in order) and returns one gradient per argument.

    Keras hands the upstream gradients of a tuple on as one tuple on JAX
    and as one argument each on TensorFlow; its torch version passes a
    single upstream gradient, so torch has its own (`backend.torch`).
    """

    @ops.custom_gradient
    def apply(*args):
        outputs, grad = forward(*args)

        def vjp(*upstreams):
            if len(upstreams) == 1 and isinstance(upstreams[0], (tuple, list)):
                (upstreams,) = upstreams
            return tuple(grad(list(upstreams)))

        return tuple(outputs), vjp

    return apply
