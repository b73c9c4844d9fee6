"""`RaptrBackbone`: a KerasHub backbone whose transformer blocks run inside a
`RandomPartStack`, built by graph surgery on a loaded backbone.

This module imports `keras_hub` (and with it TensorFlow, when installed); the
rest of keras_raptr does not. Importing it registers `RaptrBackbone` with
Keras serialization, which `from_preset` and `keras.saving` need.
"""

import keras
import keras_hub
from keras import tree

from keras_raptr.src.api_export import raptr_export
from keras_raptr.src.layers.random_part_stack import RandomPartStack

STACK_NAME = "random_part_stack"
_NOT_COPIED = ("name", "trainable", "dtype")


def _nodes(model):
    return [
        node
        for nodes in model._nodes_by_depth.values()
        for node in nodes
        if node.operation is not None and not node.is_input
    ]


def _same_value(a, b):
    if isinstance(a, keras.KerasTensor) or isinstance(b, keras.KerasTensor):
        return a is b
    try:
        return bool(a == b)
    except Exception:
        return a is b


def check_block_chain(backbone):
    """Checks that `backbone.transformer_layers` can be replaced by one stack.

    The blocks must each be called once in the backbone's graph, in list
    order, as `block(x, **kwargs)` with one positional tensor, the same
    keyword arguments for every block, and the output of block `i` feeding
    only block `i + 1`.

    Returns:
        The call kwargs shared by every block (from the backbone's graph).
    """
    blocks = list(backbone.transformer_layers)
    by_block = {id(block): [] for block in blocks}
    nodes = _nodes(backbone)
    for node in nodes:
        if id(node.operation) in by_block:
            by_block[id(node.operation)].append(node)

    def fail(reason):
        raise ValueError(
            "Invalid value for `backbone`. Its `transformer_layers` must be "
            "a chain of residual blocks, each called once as "
            "`block(x, **kwargs)` on the output of the one before, with the "
            f"same kwargs for every block. {reason} "
            f"Received: backbone={backbone.name} "
            f"({type(backbone).__name__})"
        )

    block_nodes = []
    for index, block in enumerate(blocks):
        found = by_block[id(block)]
        if len(found) != 1:
            fail(
                f"Block {index} ({block.name}) is called {len(found)} times "
                "in the backbone's graph."
            )
        node = found[0]
        if len(node.arguments.args) != 1 or len(node.outputs) != 1:
            fail(
                f"Block {index} ({block.name}) takes "
                f"{len(node.arguments.args)} positional arguments and "
                f"returns {len(node.outputs)} tensors; expected 1 and 1."
            )
        x, y = node.arguments.args[0], node.outputs[0]
        if not isinstance(x, keras.KerasTensor) or tuple(x.shape) != tuple(
            y.shape
        ):
            fail(
                f"Block {index} ({block.name}) maps shape "
                f"{getattr(x, 'shape', x)} to {y.shape}; a residual block "
                "keeps the shape."
            )
        block_nodes.append(node)

    first_kwargs = block_nodes[0].arguments.kwargs
    for index in range(1, len(blocks)):
        node = block_nodes[index]
        if node.arguments.args[0] is not block_nodes[index - 1].outputs[0]:
            fail(
                f"Block {index} ({blocks[index].name}) does not take the "
                f"output of block {index - 1} as its input."
            )
        kwargs = node.arguments.kwargs
        if set(kwargs) != set(first_kwargs) or not all(
            _same_value(kwargs[key], first_kwargs[key]) for key in kwargs
        ):
            fail(
                f"Block {index} ({blocks[index].name}) is called with "
                f"kwargs {sorted(kwargs)} that differ from block 0's "
                f"{sorted(first_kwargs)}."
            )

    inner_outputs = {id(node.outputs[0]) for node in block_nodes[:-1]}
    consumers_allowed = {id(node) for node in block_nodes[1:]}
    for node in nodes:
        if id(node) in consumers_allowed:
            continue
        if any(id(t) in inner_outputs for t in node.input_tensors):
            fail(
                f"The output of an inner block is also used by "
                f"{node.operation.name}."
            )
    if any(id(t) in inner_outputs for t in tree.flatten(backbone.outputs)):
        fail("The output of an inner block is also a backbone output.")
    return first_kwargs


@raptr_export("keras_raptr.hub.RaptrBackbone")
class RaptrBackbone(keras_hub.models.Backbone):
    """A KerasHub backbone whose transformer blocks train as RaPTr.

    Rebuilds the functional graph of `backbone` with its
    `transformer_layers` run inside one `keras_raptr.RandomPartStack`. Every
    other layer (embeddings, final norm, pooler, ...) is reused as is, so the
    new backbone shares all weights with `backbone`: no copies are made, and
    training one trains the other. Inputs, outputs and public attributes
    (`vocabulary_size`, `token_embedding`, `hidden_dim`, ...) are those of
    `backbone`, so a `RaptrBackbone` can be passed wherever the original
    backbone is taken, e.g. `keras_hub.models.BertMaskedLM(backbone=...)`.

    With `training=True` (as in `fit`) each step runs the stack's sampled
    subset of blocks; otherwise (evaluation, `predict`, inference) every
    block runs and the outputs equal the original backbone's.

    `get_config`, `save_to_preset` and `from_preset` round-trip (the
    preset's `config.json` names `keras_raptr>RaptrBackbone`, so
    `import keras_raptr.hub` before loading one). `unwrap()` gives back the
    plain backbone (e.g. a `BertBackbone`) that shares the weights, for
    fine-tuning and serving without keras_raptr.

    Usually built with `keras_raptr.wrap_backbone(backbone, ...)`.

    Args:
        backbone: a functional `keras_hub.models.Backbone` with a
            `transformer_layers` list of residual blocks, each called as
            `block(x, **kwargs)` on the output of the one before with the
            same kwargs (true of BERT, RoBERTa, GPT-2, ...). A serialized
            backbone (a dict) is deserialized first.
        keep_count: int. Blocks run per training step. Defaults to `None`:
            all blocks (a `keras_raptr.StageScheduler` sets it during `fit`).
        fixed: list of int. Blocks that always run. Defaults to `None`: the
            first and the last block.
        sampling: `"exact"` or `"bernoulli"`. Defaults to `"exact"`.
        scaling: `"none"` or `"expectation"`. Defaults to `"none"`.
        seed: int. Seed of the subset sequence. Defaults to `0`.
        dtype: dtype policy of the new backbone. Defaults to `None`: the
            policy of `backbone`.
        **kwargs: base `Backbone` arguments (`name`, `trainable`). `name`
            defaults to `"raptr_" + backbone.name`.

    Example:

    ```python
    backbone = keras_hub.models.BertBackbone.from_preset("./bert_preset")
    raptr = keras_raptr.wrap_backbone(backbone)
    masked_lm = keras_hub.models.BertMaskedLM(backbone=raptr)
    masked_lm.compile(...)
    masked_lm.fit(data, callbacks=[keras_raptr.StageScheduler("2-3-4")])
    raptr.unwrap().save_to_preset("./bert_pretrained")  # plain BertBackbone
    ```
    """

    def __init__(
        self,
        backbone,
        keep_count=None,
        fixed=None,
        sampling="exact",
        scaling="none",
        seed=0,
        dtype=None,
        **kwargs,
    ):
        if isinstance(backbone, dict):
            backbone = dict(backbone)
            if dtype is not None:
                backbone["config"] = {
                    **backbone["config"],
                    "dtype": keras.dtype_policies.serialize(
                        keras.dtype_policies.get(dtype)
                    ),
                }
            backbone = keras.layers.deserialize(backbone)
        validate_backbone(backbone)
        check_block_chain(backbone)
        if dtype is None:
            dtype = backbone.dtype_policy
        kwargs.setdefault("name", f"raptr_{backbone.name}")

        # === Layers ===
        stack = RandomPartStack(
            list(backbone.transformer_layers),
            keep_count=keep_count,
            fixed=fixed,
            sampling=sampling,
            scaling=scaling,
            seed=seed,
            dtype=backbone.dtype_policy,
            name=STACK_NAME,
        )
        # The blocks are built and `check_block_chain` has checked that each
        # keeps its input's shape. `RandomPartStack.build` would call every
        # block without its kwargs, which fails for blocks with a required
        # keyword input (DeBERTa's `rel_embeddings`): skip it.
        stack.built = True
        self.random_part_stack = stack
        self.token_embedding = backbone.token_embedding

        # === Functional Model ===
        first, rest = stack.blocks[0], {id(b) for b in stack.blocks[1:]}

        def call_fn(operation, *args, **call_kwargs):
            if operation is first:
                return stack(*args, **call_kwargs)
            if id(operation) in rest:
                # Already run inside the stack: pass its output through.
                return args[0]
            return operation(*args, **call_kwargs)

        inputs = tree.map_structure(
            lambda t: keras.Input(
                batch_shape=t.shape, dtype=t.dtype, name=t.name
            ),
            backbone.input,
        )
        outputs = backbone._run_through_graph(inputs, call_fn=call_fn)
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        # Not tracked: its layers are already part of this graph.
        object.__setattr__(self, "_wrapped_backbone", backbone)
        self.keep_count = stack.initial_keep_count
        self.fixed = list(stack.fixed)
        self.sampling = sampling
        self.scaling = scaling
        self.seed = seed
        # The wrapped backbone's public attributes (`vocabulary_size`,
        # `hidden_dim`, `transformer_layers`, `layer_norm`, ...), which tasks
        # read from their backbone. Set without tracking: the layers among
        # them are already tracked through the graph.
        for key, value in vars(backbone).items():
            if key.startswith("_") or key in _NOT_COPIED:
                continue
            if hasattr(type(self), key) or key in vars(self):
                continue
            object.__setattr__(self, key, value)

    def unwrap(self):
        """The plain backbone (e.g. `BertBackbone`) that shares the weights.

        Its layout and weight names are the standard ones: its
        `save_to_preset` writes a preset that loads with `keras_hub` alone,
        and tasks built on it fine-tune or serve with every block running.
        """
        return self._wrapped_backbone

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.layers.serialize(self._wrapped_backbone),
                "keep_count": self.keep_count,
                "fixed": self.fixed,
                "sampling": self.sampling,
                "scaling": self.scaling,
                "seed": self.seed,
            }
        )
        return config


def validate_backbone(backbone):
    if isinstance(backbone, RaptrBackbone):
        raise ValueError(
            "Invalid value for `backbone`. It is already a RaptrBackbone; "
            "wrap the plain backbone (`backbone.unwrap()`) instead. "
            f"Received: backbone={backbone.name}"
        )
    blocks = getattr(backbone, "transformer_layers", None)
    if (
        not isinstance(backbone, keras.Model)
        or not hasattr(backbone, "_run_through_graph")
        or not isinstance(blocks, (list, tuple))
        or not blocks
    ):
        raise ValueError(
            "Invalid value for `backbone`. Expected a functional KerasHub "
            "backbone (a `keras_hub.models.Backbone`) with a non-empty "
            "`transformer_layers` list, e.g. a "
            "`keras_hub.models.BertBackbone`. "
            f"Received: backbone={backbone!r}"
        )
