import contextlib
import threading

import keras
import numpy as np
from keras import ops

from keras_raptr.src import backend
from keras_raptr.src.api_export import raptr_export
from keras_raptr.src.backend.common import block_call_args
from keras_raptr.src.backend.common import call_block
from keras_raptr.src.backend.common import get_keras_mask
from keras_raptr.src.backend.common import stored_state
from keras_raptr.src.backend.common import stored_values
from keras_raptr.src.layers import sampling as sampler
from keras_raptr.src.utils import is_int

SAMPLING_MODES = ("exact", "bernoulli")
SCALING_MODES = ("none", "expectation")

_TRACING = threading.local()


@contextlib.contextmanager
def tracing_keep_count(stacks, keep_count):
    """Within this context, on this thread, the given stacks trace their
    training step for `keep_count` (overriding `_compiled_keep_count`).

    `StageScheduler` binds each traced step to its stage this way, so that a
    step traced on a background thread (JAX compiles the next stage ahead)
    neither sees nor changes what the training thread traces.
    """
    previous = getattr(_TRACING, "keep_counts", None) or {}
    _TRACING.keep_counts = {
        **previous,
        **{id(stack): keep_count for stack in stacks},
    }
    try:
        yield
    finally:
        _TRACING.keep_counts = previous


def normalize_fixed(fixed, num_blocks):
    """Resolves `fixed` to a sorted tuple of non-negative block indices."""
    if fixed is None:
        return tuple(sorted({0, num_blocks - 1}))
    if is_int(fixed) or isinstance(fixed, str):
        raise ValueError(
            "Invalid value for `fixed`. Expected a list of block indices "
            "(ints in [-num_blocks, num_blocks)), e.g. `[0, -1]` or `[]`. "
            f"Received: fixed={fixed!r}"
        )
    resolved = []
    for index in fixed:
        if not is_int(index) or not -num_blocks <= index < num_blocks:
            raise ValueError(
                "Invalid value for `fixed`. Every entry must be an int in "
                f"[{-num_blocks}, {num_blocks}) for a stack of {num_blocks} "
                f"blocks. Received: fixed={list(fixed)!r}"
            )
        resolved.append(int(index) % num_blocks)
    if len(set(resolved)) != len(resolved):
        raise ValueError(
            "Invalid value for `fixed`. Each block may be listed once "
            f"(negative indices count from the end). Received: "
            f"fixed={list(fixed)!r}, which names blocks {resolved}"
        )
    return tuple(sorted(resolved))


def validate_keep_count(keep_count, num_blocks, num_fixed, name="keep_count"):
    if not is_int(keep_count):
        raise ValueError(
            f"Invalid value for `{name}`. Expected an int in "
            f"[{num_fixed}, {num_blocks}] (number of fixed blocks to number "
            f"of blocks). Received: {name}={keep_count!r}"
        )
    if not num_fixed <= keep_count <= num_blocks:
        raise ValueError(
            f"Invalid value for `{name}`. Expected an int in "
            f"[{num_fixed}, {num_blocks}]: at least the {num_fixed} fixed "
            f"block(s) and at most all {num_blocks} blocks. "
            f"Received: {name}={keep_count}"
        )
    return int(keep_count)


@raptr_export("keras_raptr.layers.RandomPartStack")
class RandomPartStack(keras.layers.Layer):
    """Runs residual blocks in order, training only a random subset per step.

    RaPTr (Random Part Training) trains, at each step, the fixed blocks plus
    a random subset of the other blocks; skipped blocks act as identity and
    are not computed, forward or backward. `keep_count` (a tracked,
    non-trainable int32 variable) sets how many blocks run per training step;
    `keras_raptr.StageScheduler` raises it stage by stage during `fit`. In
    evaluation and inference (`training=False`) every block runs, unscaled.

    Each block must map its input to an output of the same shape and contain
    its own residual connection (e.g. `keras_hub.layers.TransformerEncoder`),
    so that skipping it means "output = input".

    The subset is a pure function of `(seed, step)`, where `step` is a
    tracked counter of training calls saved with the weights: a run restored
    from a checkpoint draws the same subsets as an uninterrupted one, and all
    replicas of a distributed run draw the same subset. One subset is drawn
    per step for the whole batch.

    A skipped block's trainable weights get a zero gradient on every
    backend (the JAX/TensorFlow semantics of a branch not taken): plain SGD
    leaves them unchanged, while optimizers with momentum or decoupled weight
    decay still move them, as for any weight whose gradient is zero.

    Args:
        blocks: list of Keras layers, each mapping `x` to a tensor of the
            same shape. Extra keyword arguments of the stack's call (e.g.
            `padding_mask`) are passed to every block. A layer may appear
            more than once (weights shared across depth); it then runs once
            per kept position.
        keep_count: int. Blocks run per training step (`sampling="exact"`),
            or the expected number (`sampling="bernoulli"`). Must lie in
            `[len(fixed), len(blocks)]`. Defaults to `None`: all blocks.
            Set by hand, without `StageScheduler`, it is read when the step
            runs: one conditional per block on JAX and TensorFlow, which
            costs more than the step `StageScheduler` traces for its keep
            count (`docs/benchmarks.md`). For a constant keep count on the
            fast path use
            `StageScheduler([(6, None)], allow_partial_final=True)`.
        fixed: list of int. Indices of blocks that always run; negative
            indices count from the end. Defaults to `None`: the first and the
            last block, as in the paper. `[]` fixes none.
        sampling: `"exact"` runs exactly `keep_count` blocks (the fixed ones
            plus a uniformly random subset of the others); `"bernoulli"`
            runs each non-fixed block independently with probability
            `p = (keep_count - len(fixed)) / (len(blocks) - len(fixed))`
            (the paper's definition). Defaults to `"exact"`.
        scaling: `"none"` leaves kept blocks unchanged; `"expectation"`
            scales the residual branch of each kept non-fixed block,
            `block(x) - x`, by `1 / p` during training (stochastic-depth
            style). Defaults to `"none"`, the better of the two in
            `benchmarks/scaling_ablation.py` (see `docs/design.md`).
        seed: int. Seed of the subset sequence. Defaults to `0`.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: tensor of the shape the blocks take.
        training: bool. `True` runs the sampled subset; otherwise all blocks.
        **kwargs: passed to every block.

    Returns:
        Tensor of the same shape as `inputs`.

    Example:

    ```python
    blocks = [keras_hub.layers.TransformerEncoder(256, 4) for _ in range(12)]
    stack = keras_raptr.RandomPartStack(blocks, keep_count=6)
    y = stack(x, padding_mask=mask, training=True)  # runs 6 of 12 blocks
    ```

    References:
        - [Panigrahi et al., 2025](https://arxiv.org/abs/2402.05913)
    """

    def __init__(
        self,
        blocks,
        keep_count=None,
        fixed=None,
        sampling="exact",
        scaling="none",
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Blocks keep their input's shape, so the input's Keras mask (e.g.
        # padding) holds for the output too; every block sees it.
        self.supports_masking = True
        if isinstance(blocks, keras.layers.Layer) or not blocks:
            raise ValueError(
                "Invalid value for `blocks`. Expected a non-empty list of "
                f"Keras layers. Received: blocks={blocks!r}"
            )
        blocks = list(blocks)
        for index, block in enumerate(blocks):
            if not isinstance(block, keras.layers.Layer):
                raise ValueError(
                    "Invalid value for `blocks`. Every entry must be a Keras "
                    f"layer. Received: blocks[{index}]={block!r}"
                )
        num_blocks = len(blocks)
        fixed = normalize_fixed(fixed, num_blocks)
        if keep_count is None:
            keep_count = num_blocks
        keep_count = validate_keep_count(keep_count, num_blocks, len(fixed))
        if sampling not in SAMPLING_MODES:
            raise ValueError(
                f"Invalid value for `sampling`. Expected one of "
                f"{SAMPLING_MODES}. Received: sampling={sampling!r}"
            )
        if scaling not in SCALING_MODES:
            raise ValueError(
                f"Invalid value for `scaling`. Expected one of "
                f"{SCALING_MODES}. Received: scaling={scaling!r}"
            )
        if not is_int(seed):
            raise ValueError(
                "Invalid value for `seed`. Expected an int. "
                f"Received: seed={seed!r}"
            )
        self.blocks = blocks
        self.initial_keep_count = keep_count
        self.fixed = fixed
        self.sampling = sampling
        self.scaling = scaling
        self.seed = int(seed)
        self._free = tuple(i for i in range(num_blocks) if i not in fixed)
        self._free_index = [
            self._free.index(i) if i in self._free else None
            for i in range(num_blocks)
        ]
        # For the straight-line path: fixed blocks at the start (`head`) and
        # end (`tail`) always hold the same slot and run as themselves; the
        # blocks between them (the middle) run on gathered weights.
        head = 0
        while head in fixed:
            head += 1
        tail = 0
        while tail < num_blocks - head and num_blocks - 1 - tail in fixed:
            tail += 1
        self._head, self._tail = head, tail
        # Constants of the traced step are tuples of Python ints, never
        # NumPy arrays: `torch.compile` cannot trace their conversion.
        self._middle_free = tuple(i - head for i in self._free)
        self._middle_fixed = tuple(
            i - head for i in fixed if head <= i < num_blocks - tail
        )
        # Set by StageScheduler while it drives `fit` (it rebuilds the train
        # function whenever it changes this): the keep count the training
        # step is traced for. `None`: the step reads `keep_count` at run time.
        self._compiled_keep_count = None
        self._homogeneous = None  # decided at the first training call
        self._shared = None  # likewise
        self._seed_int32 = sampler.seed_hash(self.seed)
        self._host_scalars = None  # made at the first eager training step
        self._offsets = tuple(sampler.index_offsets(len(self._free)).tolist())
        self.keep_count = self.add_weight(
            name="keep_count",
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(keep_count),
            trainable=False,
            aggregation="only_first_replica",
        )
        self.step = self.add_weight(
            name="step",
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )

    @property
    def num_blocks(self):
        return len(self.blocks)

    def set_keep_count(self, keep_count):
        """Checks `keep_count` and assigns it to the `keep_count` variable.

        Raises a `ValueError` for a value outside `[len(fixed), num_blocks]`
        or not an int. (A bare `keep_count.assign(...)` is not checked.)
        """
        keep_count = validate_keep_count(
            keep_count, self.num_blocks, len(self.fixed)
        )
        self.keep_count.assign(keep_count)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for index, block in enumerate(self.blocks):
            spec = keras.KerasTensor(shape, dtype=self.compute_dtype)
            try:
                out_shape = tuple(block(spec).shape)
            except Exception as error:
                if block.built:
                    # The block needs call arguments that only the real call
                    # has (e.g. DeBERTa's `rel_embeddings`); it is built, so
                    # its shape is checked when it is called.
                    continue
                raise ValueError(
                    f"Could not build blocks[{index}] ({block.name}) from an "
                    f"input of shape {shape} alone: {error}. Build the blocks "
                    "first (e.g. call each once with its arguments)."
                ) from error
            if out_shape != shape:
                raise ValueError(
                    "Invalid value for `blocks`. Every block must return a "
                    "tensor of the shape it takes (a residual block). "
                    f"Received: blocks[{index}] ({block.name}) maps input "
                    f"shape {shape} to {out_shape}"
                )

    def call(self, inputs, training=None, mask=None, **kwargs):
        call_kwargs = dict(kwargs)
        if training is not None:
            call_kwargs["training"] = training
        if mask is None:  # Keras fills `mask` in only for a lone tensor
            mask = get_keras_mask(inputs)
        if mask is not None:
            call_kwargs["mask"] = mask
        if not training or not self._free:
            return self._run_every_block(inputs, call_kwargs)

        if not backend.trace_for_keep_count():
            if self._traced_keep_count() == self.num_blocks:
                # The last stage under StageScheduler: the plain full model,
                # as on the other paths (no draw, no read of the counters).
                self.step.assign_add(1)
                return self._run_every_block(inputs, call_kwargs)
            # Eager (PyTorch): the subset is drawn on the host.
            return self._run_sampled_on_host(inputs, call_kwargs)
        num_fixed = len(self.fixed)
        num_free_kept = ops.subtract(self.keep_count.value, num_fixed)
        keep_probability = ops.divide(
            ops.cast(num_free_kept, "float32"), float(len(self._free))
        )
        # Hash the step before advancing it: on TF and torch `value` can alias
        # the variable's storage, so a later read would see the new count.
        hashes = sampler.block_hashes(
            self._seed_int32, self.step.value, self._offsets
        )
        self.step.assign_add(1)
        post = self._make_post(keep_probability)
        compiled = self._traced_keep_count()
        if compiled is not None and compiled == self.num_blocks:
            # The last stage: the plain full model.
            return self._run_every_block(inputs, call_kwargs)
        if compiled is not None and self._has_straight_line_path():
            return self._run_gathered(
                inputs, hashes, compiled, call_kwargs, post
            )
        mask = sampler.keep_mask(
            hashes, num_free_kept, self.sampling, keep_probability
        )
        return backend.run_blocks(
            inputs, self.blocks, self._free_index, mask, call_kwargs, post
        )

    def _run_every_block(self, x, call_kwargs):
        for block in self.blocks:
            x = call_block(block, x, call_kwargs)
        return x

    def _run_sampled_on_host(self, inputs, call_kwargs):
        """An eager step (PyTorch): the subset is drawn on the host by the
        same hash, bit for bit, as the device path. The step counter and
        keep count come from host copies (`backend.HostScalars`): the
        device is read only after something other than this step wrote
        them, so a step of a stage waits for the device not at all."""
        if self._host_scalars is None:
            self._host_scalars = backend.HostScalars()
        step, keep_count = self._host_scalars.read(
            [self.step, self.keep_count]
        )
        self.step.assign_add(1)
        # What the int32 addition gives, past 2**31 - 1 too.
        next_step = (step + 1 + 2**31) % 2**32 - 2**31
        self._host_scalars.assigned(self.step, next_step)
        num_free_kept = keep_count - len(self.fixed)
        # The float32 division the device path does.
        keep_probability = np.float32(num_free_kept) / np.float32(
            len(self._free)
        )
        mask = sampler.host_keep_mask(
            self._seed_int32,
            step,
            self._offsets,
            num_free_kept,
            self.sampling,
            keep_probability,
        )
        post = self._make_post(keep_probability)
        return backend.run_blocks(
            inputs, self.blocks, self._free_index, mask, call_kwargs, post
        )

    def _traced_keep_count(self):
        bound = getattr(_TRACING, "keep_counts", None)
        if bound and id(self) in bound:
            return bound[id(self)]
        return self._compiled_keep_count

    def _trace_key(self, keep_count):
        """The keep count a training step for `keep_count` is traced for.

        `keep_count` itself where the trace is specialised to it: the plain
        full model at `num_blocks`, and the straight-line path below it.
        `None` where the straight-line path does not apply
        (`sampling="bernoulli"`, middle blocks of different structure): the
        step reads `keep_count` at run time, and one trace serves every such
        stage instead of a trace per stage that would run the same code.
        """
        if keep_count >= self.num_blocks or not self.built:
            return keep_count
        return keep_count if self._has_straight_line_path() else None

    def _has_straight_line_path(self):
        """Whether a step traced for a known keep count can run exactly
        that many blocks as straight-line code (`_run_gathered`)."""
        return (
            self.sampling == "exact"
            and self._is_homogeneous()
            and not self._shares_variables()
        )

    def _shares_variables(self):
        """Whether a variable belongs to more than one position of the
        stack (one layer listed twice, or blocks sharing weights, as in
        ALBERT). Such a stack runs on the run-time path: the straight-line
        path reads each slot's state before the step and writes it back
        after, which holds only if every position has its own."""
        if self._shared is None or not self.built:
            seen, shared = set(), False
            for block in self.blocks:
                ids = {id(v) for v in block.variables}
                shared = shared or not seen.isdisjoint(ids)
                seen |= ids
            self._shared = shared
        return self._shared

    def _middle_blocks(self):
        return self.blocks[self._head : self.num_blocks - self._tail]

    def _is_homogeneous(self):
        # Decided lazily: a stack may be marked built without `build` (e.g.
        # by `wrap_backbone`, whose blocks are built already). Only the
        # middle blocks (those without a static slot) need one structure.
        # Decided again when any of their weights is frozen or unfrozen
        # (then `compile` traces the step again): a block whose weights are
        # split differently into trainable and not cannot lend its
        # computation to the others.
        middle = self._middle_blocks()
        trainability = tuple(_trainability(block) for block in middle)
        if self._homogeneous is None or self._homogeneous[0] != trainability:
            self._homogeneous = (trainability, _same_structure(middle))
        return self._homogeneous[1]

    def _run_gathered(self, x, hashes, keep_count, call_kwargs, post):
        """Runs exactly `keep_count` blocks as straight-line code.

        Fixed blocks at the ends of the stack (the default first and last)
        run as themselves. Each of the other `keep_count - head - tail` slots
        runs the first middle block's computation on the weights of the
        kept block it stands for, gathered from the blocks' own variables
        (which stay where they are, e.g. shared with a KerasHub backbone).
        No conditional is traced, so the compiled step holds exactly
        `keep_count` blocks of work; skipped blocks' weights get a zero
        gradient (`gather_slots`). `keep_count` is static: one
        trace per stage.
        """
        for block in self.blocks[: self._head]:
            x = call_block(block, x, call_kwargs)
        num_slots = keep_count - self._head - self._tail
        if num_slots:
            x = self._run_gathered_middle(
                x, hashes, num_slots, call_kwargs, post
            )
        else:
            x = _with_zero_gradient_to(x, self._middle_blocks())
        for block in self.blocks[self.num_blocks - self._tail :]:
            x = call_block(block, x, call_kwargs)
        return x

    def _run_gathered_middle(self, x, hashes, num_slots, call_kwargs, post):
        middle = self._middle_blocks()
        has_fixed = len(self._middle_fixed) > 0
        num_free_kept = num_slots - len(self._middle_fixed)
        free_kept = sampler.keep_mask(hashes, num_free_kept, "exact", None)
        # The kept blocks as a mask over the middle (every free block is in
        # it), then their positions in order: one per slot.
        free_to_middle = ops.convert_to_tensor(
            [[m == i for m in range(len(middle))] for i in self._middle_free],
            "bool",
        )
        fixed_flags = ops.convert_to_tensor(
            [m in self._middle_fixed for m in range(len(middle))], "bool"
        )
        in_middle = ops.any(
            ops.logical_and(ops.expand_dims(free_kept, 1), free_to_middle),
            axis=0,
        )
        in_middle = ops.logical_or(in_middle, fixed_flags)
        kept = sampler.kept_positions(in_middle, num_slots)
        if has_fixed:
            is_fixed = ops.take(fixed_flags, kept)

        # Weights as the blocks read them (autocast under mixed precision),
        # selected for the kept blocks (`gather_slots`, once per weight).
        slot_of = sampler.slots_of(in_middle, num_slots)
        weights = [[v.value for v in b.trainable_variables] for b in middle]
        weights_of_slot = list(zip(*[
            gather_slots(list(values), kept, slot_of, in_middle)
            for values in zip(*weights)
        ]))
        # State as stored, so that what a block does not assign is written
        # back unchanged (a frozen block's weights are state).
        state = [
            ops.stack(list(column))
            for column in zip(*[
                stored_values(b.non_trainable_variables) for b in middle
            ])
        ]
        template = middle[0]
        new_states = []
        for slot in range(num_slots):
            index = kept[slot]
            x, slot_kwargs = block_call_args(template, x, call_kwargs)
            slot_state = [ops.take(v, index, axis=0) for v in state]
            y, new_state = template.stateless_call(
                list(weights_of_slot[slot]) if weights_of_slot else [],
                slot_state,
                x,
                **slot_kwargs,
            )
            new_state = stored_state(new_state, slot_state)
            if has_fixed:
                x = ops.where(is_fixed[slot], ops.cast(y, x.dtype), post(x, y))
            else:
                x = post(x, y)
            new_states.append(new_state)
        # A block runs at most once per step, so each slot reads its state
        # from the blocks' variables and all new states go back at once (a
        # chain of updates through the slots made XLA-on-CPU steps slower).
        for column, values in enumerate(state):
            updates = ops.stack([new[column] for new in new_states])
            values = ops.scatter_update(
                values,
                ops.expand_dims(kept, 1),
                ops.cast(updates, values.dtype),
            )
            for position, block in enumerate(middle):
                block.non_trainable_variables[column].assign(values[position])
        return x

    def _make_post(self, keep_probability):
        if self.scaling == "none":

            def post(x, y):
                return ops.cast(y, x.dtype)

            return post

        # Kept non-fixed blocks exist only when p > 0; the floor keeps the
        # unused value finite where a path computes it anyway (the gathered
        # path selects with `where`, whose gradient would be 0 * inf = NaN).
        inverse = ops.divide(1.0, ops.maximum(keep_probability, 1e-6))

        def post(x, y):
            y = ops.cast(y, x.dtype)
            scale = ops.cast(inverse, x.dtype)
            return ops.add(x, ops.multiply(ops.subtract(y, x), scale))

        return post

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "blocks": [
                    keras.saving.serialize_keras_object(block)
                    for block in self.blocks
                ],
                "keep_count": self.initial_keep_count,
                "fixed": list(self.fixed),
                "sampling": self.sampling,
                "scaling": self.scaling,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["blocks"] = [
            keras.saving.deserialize_keras_object(block)
            for block in config["blocks"]
        ]
        return cls(**config)


def gather_slots(values, kept, slot_of, is_kept):
    """`values[kept[s]]` for each slot s: the kept blocks' copies of one
    weight, a tuple in slot order.

    `values` holds that weight of every middle block (same shape and
    dtype); `kept` the kept blocks' positions, ascending; `slot_of[m]` the
    slot of block m where `is_kept[m]`.

    Slot s selects among the only blocks it can hold: ascending positions
    put `kept[s]` between s and s + (number of blocks - number of slots).
    A gather would first copy every block's weight into one stacked
    buffer; on the CPU-compiled BERT-Base step (float32, k = 6 of 12)
    selecting cost 108 MB less of XLA's temporary memory and 10% fewer
    bytes moved. Each slot's weight is its own output, not a slice of the
    slots stacked: that held another copy of the kept weights, 121 MB
    there (`docs/benchmarks.md`, "Peak memory of the gathered path").

    The gradient goes to each block directly: the upstream gradient of its
    slot where it was kept, zeros where it was skipped. Differentiating a
    gather would scatter the slots into zeros of every block's weight
    stacked, and then slice that apart again (164-254 MB more there). Each
    block reads its slot's gradient at a run-time index (`slot_of`): at
    constant indices XLA fused every slot's gradient into each block's
    optimizer update, which then read all slots (1.8 x the bytes moved).
    """
    num_slots = kept.shape[0]
    spare = len(values) - num_slots

    def forward(*values):
        def select(s):
            value = values[s]
            for m in range(s + 1, s + spare + 1):
                value = ops.where(ops.equal(kept[s], m), values[m], value)
            return value

        def grad(upstreams):
            upstream = ops.stack([backend.dense(u) for u in upstreams])
            zero = ops.zeros_like(upstream[0])
            return [
                ops.where(
                    is_kept[m], ops.take(upstream, slot_of[m], axis=0), zero
                )
                for m in range(len(values))
            ]

        return tuple(select(s) for s in range(num_slots)), grad

    return backend.custom_gradient(forward)(*values)


def _with_zero_gradient_to(x, blocks):
    """`x` unchanged, with a zero gradient for the blocks' trainable weights.

    A stage that runs only the fixed blocks leaves the others out of the
    step entirely, and TensorFlow and PyTorch would then give them no
    gradient at all: Keras warns on every step and leaves them (and their
    optimizer slots) untouched, unlike every other stage and backend. Adding
    the sum of an empty slice of each weight (exactly 0) ties them to the
    output for the cost of one addition; its gradient is zeros of the
    weight's shape.
    """
    weights = [v.value for b in blocks for v in b.trainable_variables]
    if not weights:
        return x
    zero = ops.sum(
        ops.stack(
            [ops.sum(ops.reshape(w, (-1,))[:0]) for w in weights]
        )
    )
    return ops.add(x, ops.cast(zero, x.dtype))


def _canonical(config):
    """`config` with every name replaced by its order of first appearance.

    Two blocks that differ only in their own and their sublayers' names
    (e.g. functional models built by the same function, whose configs
    refer to layers by name) get equal canonical configs.
    """
    names = {}

    def collect(node):
        if isinstance(node, dict):
            name = node.get("name")
            if isinstance(name, str) and name not in names:
                names[name] = f"#{len(names)}"
            for value in node.values():
                collect(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                collect(value)

    def rename(node):
        if isinstance(node, dict):
            return {key: rename(value) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            return [rename(value) for value in node]
        if isinstance(node, str):
            return names.get(node, node)
        return node

    collect(config)
    return rename(config)


def _trainability(block):
    """Which of the block's variables (in their fixed order) it trains."""
    return (block.trainable, *(v.trainable for v in block.variables))


def _same_structure(blocks):
    """Whether every block computes the same function of its own weights."""

    def signature(block):
        try:
            config = _canonical(block.get_config())
        except NotImplementedError:
            return None
        return (
            type(block),
            config,
            [(tuple(v.shape), v.dtype) for v in block.variables],
            _trainability(block),
        )

    first = signature(blocks[0])
    return first is not None and all(
        signature(block) == first for block in blocks[1:]
    )
