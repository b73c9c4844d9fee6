"""PyTorch: the subset is drawn on the host (eagerly) or read there once
per step (under `torch.compile`); Python skips blocks.

A skipped block is not called at all, so autograd would leave its gradients
at `None` (and Keras would warn about missing gradients on every step). To
give skipped weights the same zero gradient as on JAX and TensorFlow, the
skipped position is an identity whose backward returns zeros for the block's
weights; it computes nothing in the forward pass.

Under `torch.compile` (`jit_compile=True`) the dispatch runs outside the
compiled graph (`torch.compiler.disable`): branching on the mask inside the
graph would recompile for every new subset.
"""

import torch

from keras_raptr.src.backend import common
from keras_raptr.src.backend.common import call_block
from keras_raptr.src.backend.common import dense  # noqa: F401
from keras_raptr.src.backend.common import stored_values


class _IdentityWithZeroGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, *weights):
        ctx.shapes = [(w.shape, w.dtype, w.device) for w in weights]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        zeros = [
            torch.zeros(shape, dtype=dtype, device=device)
            for shape, dtype, device in ctx.shapes
        ]
        return (grad, *zeros)


class _CustomGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, forward, *args):
        outputs, ctx.grad = forward(*args)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *upstreams):
        return (None, *ctx.grad(list(upstreams)))


def custom_gradient(forward):
    """`keras.ops.custom_gradient` for a function of several outputs (see
    `common.custom_gradient`). Keras' torch version passes its backward
    pass one upstream gradient, whatever the outputs."""

    def apply(*args):
        return _CustomGradient.apply(forward, *args)

    return apply


def _skip(block, x):
    if not torch.is_grad_enabled():
        return x
    # As stored: an autocast read would copy every weight of a block that
    # does not run, and the cast's backward its zero gradient.
    weights = stored_values(block.trainable_variables)
    weights = [w for w in weights if w.requires_grad]
    if not weights:
        return x
    return _IdentityWithZeroGrad.apply(x, *weights)


def _version(tensor):
    try:
        return tensor._version  # counts the in-place writes to `tensor`
    except RuntimeError:  # an inference tensor has no version counter
        return None


class HostScalars(common.HostScalars):
    """Host copies of int scalar variables that cost no device read while
    nothing else writes them.

    Reading a CUDA tensor on the host waits for the device to finish all
    queued work: in an eager step on a GPU that is a stall of the pipeline
    at every step. Keras assigns a torch variable in place (`copy_`), which
    advances the tensor's version counter, so a copy is still valid while
    the variable holds the same tensor at the version it was read or
    assigned at. Anything else that writes it (`StageScheduler` setting the
    keep count, `load_weights`, a bare `assign`) makes the next `read` go to
    the device, once.
    """

    def __init__(self):
        # id(variable) -> (its tensor, that tensor's version, the value).
        self._seen = {}

    def read(self, variables):
        values = []
        for variable in variables:
            tensor = variable.value
            seen = self._seen.get(id(variable))
            version = _version(tensor)
            if (
                seen is None
                or seen[0] is not tensor
                or version is None
                or seen[1] != version
            ):
                seen = (tensor, version, int(tensor.item()))
                self._seen[id(variable)] = seen
            values.append(seen[2])
        return values

    def assigned(self, variable, value):
        tensor = variable.value
        self._seen[id(variable)] = (tensor, _version(tensor), int(value))


@torch.compiler.disable
def run_blocks(x, blocks, free_index, mask, call_kwargs, post):
    keep = mask.tolist()  # a host mask, or the step's one synchronisation
    for block, index in zip(blocks, free_index):
        if index is None:
            x = call_block(block, x, call_kwargs)
        elif keep[index]:
            x = post(x, call_block(block, x, call_kwargs))
        else:
            x = _skip(block, x)
    return x


def retrace_train_function(model, bind=None):
    """Rebuilds `model.train_function`; the next step is traced anew.

    Traced on the training thread, where the stacks' `_compiled_keep_count`
    says which stage it is for, so `bind` is not needed. Returns `None`: no
    step is compiled ahead on this backend.
    """
    del bind
    model.make_train_function(force=True)


def trace_for_keep_count():
    """Whether a step traced for a known keep count should use it.

    Eagerly, Python already runs exactly the kept blocks (no weight
    gathering needed), and the stack draws the subset on the host
    (`RandomPartStack._run_sampled_on_host`): drawing it with device
    operations took about 45 small ones and several host-to-device copies,
    host time in every step, where Keras' eager torch step on a GPU is bound
    by the host (RaPTr's step took 1.26 x the plain model's on an H200 with
    that draw; `docs/benchmarks.md`). Under `torch.compile` the
    straight-line path keeps the graph free of data-dependent branches, and
    the draw stays in the graph.
    """
    return torch.compiler.is_compiling()


def compiles_train_step(model):
    """Whether `fit` compiles the training step (`torch.compile`, with
    `jit_compile=True`); eager steps compile nothing."""
    return bool(model.jit_compile) and not model.run_eagerly
