"""`wrap_backbone` and friends. keras_hub is imported only when called, so
`import keras_raptr` stays free of keras_hub (and TensorFlow)."""

import os

from keras_raptr.src.api_export import raptr_export

_LOCAL_HINT = (
    "keras_raptr never downloads weights itself. On a machine that can reach "
    "the model hub, run `keras_hub.models.Backbone.from_preset(name)."
    "save_to_preset('./my_preset')`, copy the directory here and pass its "
    "path instead."
)


def _is_connection_error(error):
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(
        names
        & {
            "ConnectionError",
            "NameResolutionError",
            "MaxRetryError",
            "Timeout",
            "TimeoutError",
            "URLError",
            "KaggleApiHTTPError",
        }
    ) or isinstance(error, OSError) and not isinstance(
        error, FileNotFoundError
    )


def load_backbone(preset, **kwargs):
    """A KerasHub backbone from a local preset directory or a preset name.

    A name (e.g. `"bert_tiny_en_uncased"`, `"kaggle://..."`, `"hf://..."`)
    needs the network; without it this fails at once with a `ValueError`
    that says what to do, rather than the hub client's connection error.
    """
    import keras_hub

    import keras_raptr.src.hub.raptr_backbone  # noqa: F401 (registers)

    if not isinstance(preset, (str, os.PathLike)):
        raise ValueError(
            "Invalid value for `preset`. Expected a path to a local preset "
            "directory or a preset name (str). "
            f"Received: preset={preset!r}"
        )
    preset = os.fspath(preset)
    if os.path.exists(preset):
        if not os.path.isfile(os.path.join(preset, "config.json")):
            raise ValueError(
                "Invalid value for `preset`. A local preset directory must "
                "hold a `config.json` (as written by `save_to_preset`). "
                f"Received: preset={preset!r}"
            )
        return keras_hub.models.Backbone.from_preset(preset, **kwargs)
    try:
        return keras_hub.models.Backbone.from_preset(preset, **kwargs)
    except Exception as error:  # the hub clients raise many kinds
        if _is_connection_error(error):
            raise ValueError(
                f"Could not load preset {preset!r}: it is not a local "
                "directory, and downloading it failed because the model hub "
                f"is unreachable ({type(error).__name__}). {_LOCAL_HINT} "
                f"Received: preset={preset!r}"
            ) from error
        raise


@raptr_export("keras_raptr.wrap_backbone")
def wrap_backbone(backbone, **stack_options):
    """Makes a KerasHub backbone train its transformer blocks with RaPTr.

    Returns a `keras_raptr.hub.RaptrBackbone`: the same graph as `backbone`
    with `backbone.transformer_layers` run inside one
    `keras_raptr.RandomPartStack`, sharing every weight with `backbone` (no
    copies). It takes and returns what `backbone` does, so it can be the
    backbone of a KerasHub task (`BertMaskedLM`, `BertTextClassifier`,
    `GPT2CausalLM`, ...). In training each step runs the sampled subset of
    blocks; in evaluation and inference all blocks run, exactly as in
    `backbone`. Drive the keep count with `keras_raptr.StageScheduler`;
    `.unwrap()` returns the plain backbone for fine-tuning and serving.

    Args:
        backbone: a `keras_hub.models.Backbone` with a `transformer_layers`
            list (built from a config or loaded with `from_preset`), or a
            str: a local preset directory or a preset name, loaded with
            `keras_hub.models.Backbone.from_preset` first. A name needs the
            network; offline it fails at once with a `ValueError`.
        **stack_options: `RandomPartStack` options: `keep_count`, `fixed`,
            `sampling`, `scaling`, `seed`; and `name`, `dtype`.

    Returns:
        A `keras_raptr.hub.RaptrBackbone`.

    Example:

    ```python
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=1000, num_layers=4, num_heads=2, hidden_dim=64,
        intermediate_dim=128, max_sequence_length=64,
    )
    masked_lm = keras_hub.models.BertMaskedLM(
        backbone=keras_raptr.wrap_backbone(backbone)
    )
    ```
    """
    from keras_raptr.src.hub.raptr_backbone import RaptrBackbone

    allowed = {"keep_count", "fixed", "sampling", "scaling", "seed", "name",
               "dtype"}
    unknown = sorted(set(stack_options) - allowed)
    if unknown:
        raise ValueError(
            "Invalid keyword argument for `wrap_backbone`. Expected any of "
            f"{sorted(allowed)}. Received: {', '.join(unknown)}"
        )
    if isinstance(backbone, (str, os.PathLike)):
        backbone = load_backbone(backbone)
    return RaptrBackbone(backbone, **stack_options)


def unwrap(model):
    """The plain KerasHub model under a RaPTr one, sharing its weights.

    Args:
        model: a `RaptrBackbone` (gives the wrapped backbone), or a KerasHub
            `Task` whose backbone is a `RaptrBackbone` (gives a new task of
            the same class on the plain backbone; the head's weights are
            copied, the backbone's shared).

    Returns:
        A backbone or task that needs no keras_raptr to load or run.
    """
    import keras
    import keras_hub

    from keras_raptr.src.hub.raptr_backbone import RaptrBackbone

    if isinstance(model, RaptrBackbone):
        return model.unwrap()
    if isinstance(model, keras_hub.models.Task) and isinstance(
        model.backbone, RaptrBackbone
    ):
        config = model.get_config()
        config["backbone"] = model.backbone.unwrap()
        config["preprocessor"] = model.preprocessor
        task = type(model).from_config(config)
        source = _head_weights(model)
        target = _head_weights(task)
        if [w.shape for w in source] != [w.shape for w in target]:
            raise ValueError(
                "Could not map the head weights of the task onto a new "
                f"{type(model).__name__}. Received: model={model.name}"
            )
        for src, dst in zip(source, target):
            dst.assign(keras.ops.convert_to_tensor(src))
        return task
    raise ValueError(
        "Invalid value for `model`. Expected a `RaptrBackbone` or a KerasHub "
        "task whose backbone is one. "
        f"Received: model={getattr(model, 'name', model)!r}"
    )


def _head_weights(task):
    backbone_ids = {id(w) for w in task.backbone.weights}
    return [w for w in task.weights if id(w) not in backbone_ids]


def load_task_preset(preset, **kwargs):
    """Loads a task saved with `save_to_preset` whose backbone is RaPTr.

    `keras_hub.models.BertMaskedLM.from_preset(dir)` refuses such a preset
    (it looks for a task class made for the backbone class), so this reads
    the preset's `task.json` directly, with the task and backbone weights.

    Args:
        preset: str. A local preset directory written by
            `task.save_to_preset`.
        **kwargs: passed to the task's constructor (as for `from_preset`).

    Returns:
        The task, e.g. a `BertMaskedLM` on a `RaptrBackbone`.
    """
    import keras_hub  # noqa: F401
    from keras_hub.src.utils import preset_utils

    import keras_raptr.src.hub.raptr_backbone  # noqa: F401 (registers)

    if not isinstance(preset, (str, os.PathLike)) or not os.path.isfile(
        os.path.join(os.fspath(preset), "task.json")
    ):
        raise ValueError(
            "Invalid value for `preset`. Expected a local preset directory "
            "with a `task.json` (written by `task.save_to_preset`). "
            f"Received: preset={preset!r}"
        )
    preset = os.fspath(preset)
    loader = preset_utils.get_preset_loader(preset)
    task_config = preset_utils.load_json(preset, "task.json")
    task_cls = preset_utils.check_config_class(task_config)
    return loader.load_task(
        task_cls, load_weights=True, load_task_weights=True, **kwargs
    )
