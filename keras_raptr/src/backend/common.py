"""Helpers shared by the backend implementations and the layer."""


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
