"""A measurement prototype: the middle blocks' weights held stacked.

`RandomPartStack`'s straight-line path (the one `StageScheduler` traces)
keeps every block's weights in the block, where KerasHub and checkpoints
expect them, and stacks the middle blocks' weights at every step to gather
the kept ones. Issue 4's first suggestion is a
layout that keeps homogeneous blocks' weights stacked, `(L, ...)`, between
steps. Converting KerasHub backbones, checkpoints and distribution layouts
to and from it is a large change to the library, so this prototype measures
what the layout would gain before anyone makes it (on the CPU-compiled
BERT-Base step: few bytes, many kernels; `docs/benchmarks.md`, "A stacked
layout and the semantic limit"):

`StackedMiddle(template, num_blocks, keep)` holds `num_blocks` copies of
`template`'s trainable weights as stacked variables (one per weight, leading
axis `num_blocks`) and runs, per training step, `keep` of them in depth
order: the same subsets as `RandomPartStack` draws for its middle blocks
(same hash). Each kept slot runs `template`'s computation on the weights it
takes from the stacked variables; `template`'s own weights are frozen and
unused. Skipped blocks get a zero gradient (the gradient of the gather), as
in the library. `keep` is static: one model per keep count.

`benchmarks/step_time.py --stacked` and `benchmarks/step_ops.py --stacked`
add it as the `stacked` rows (first and last block fixed, as `raptr`).
It is not library code: no config, no checkpoint conversion, no
distribution.
"""

import keras
import numpy as np
from keras import ops

from keras_raptr.src.layers import sampling


class StackedMiddle(keras.layers.Layer):
    def __init__(self, template, num_blocks, keep, seed=0, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= keep <= num_blocks:
            raise ValueError(
                f"`keep` must be in [0, num_blocks={num_blocks}]; "
                f"got keep={keep}"
            )
        self.template = template
        self.num_blocks = num_blocks
        self.keep = keep
        self._seed_int32 = sampling.seed_hash(seed)
        self._offsets = tuple(sampling.index_offsets(num_blocks).tolist())
        self._host_step = 0  # eager torch: the draw stays on the host

    def build(self, input_shape):
        if not self.template.built:
            self.template.build(input_shape)
        self._weights_of_template = list(self.template.trainable_variables)
        self.template.trainable = False
        self.stacked = []
        for index, variable in enumerate(self._weights_of_template):
            value = ops.convert_to_numpy(variable.value)
            tiled = np.broadcast_to(value, (self.num_blocks, *value.shape))
            self.stacked.append(
                self.add_weight(
                    name=f"stacked_{index}",
                    shape=tiled.shape,
                    dtype=variable.dtype,
                    initializer=keras.initializers.Constant(tiled.copy()),
                )
            )
        self.step = self.add_weight(
            name="step", shape=(), dtype="int32", initializer="zeros",
            trainable=False,
        )

    def _kept(self):
        """The kept blocks' indices, ascending: Python ints on eager torch,
        else an int32 tensor."""
        eager_torch = keras.config.backend() == "torch"
        if eager_torch:
            import torch

            eager_torch = not torch.compiler.is_compiling()
        if eager_torch:
            mask = sampling.host_keep_mask(
                self._seed_int32, self._host_step, self._offsets, self.keep,
                "exact", None,
            )
            self._host_step += 1
            return [int(i) for i in np.flatnonzero(mask)]
        hashes = sampling.block_hashes(
            self._seed_int32, self.step.value, self._offsets
        )
        self.step.assign_add(1)
        mask = sampling.keep_mask(hashes, self.keep, "exact", None)
        return sampling.kept_positions(mask, self.keep)

    def _run(self, x, weights, training):
        # The template is frozen: all its variables are non-trainable, its
        # weights (replaced by the slot's) and its state (dropout seeds).
        slot = {id(v): w for v, w in zip(self._weights_of_template, weights)}
        variables = self.template.non_trainable_variables
        values = [slot.get(id(v), v.value) for v in variables]
        y, new_values = self.template.stateless_call(
            [], values, x, training=training
        )
        for variable, value in zip(variables, new_values):
            if id(variable) not in slot:
                variable.assign(value)
        return ops.cast(y, x.dtype)

    def call(self, x, training=None):
        if not training or self.keep == self.num_blocks:
            # Every block: the stacked weights split (whose gradient is one
            # concatenation), no gather.
            split = [ops.unstack(w.value, axis=0) for w in self.stacked]
            for weights in zip(*split):
                x = self._run(x, list(weights), training)
            return x
        kept = self._kept()
        # One gather per weight: its gradient is one scatter into the
        # stacked shape (a gather per slot scattered once per slot, each
        # time into zeros of the whole stack).
        index = ops.convert_to_tensor(kept, "int32")
        gathered = [ops.take(w, index, axis=0) for w in self.stacked]
        slots = [[g[s] for g in gathered] for s in range(self.keep)]
        for weights in slots:
            x = self._run(x, weights, training)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape
