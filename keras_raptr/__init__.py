"""keras_raptr: RaPTr (Random Part Training) for Keras 3."""

from keras_raptr import callbacks
from keras_raptr import layers
from keras_raptr.src.callbacks.stage_scheduler import StageScheduler
from keras_raptr.src.hub.wrap import wrap_backbone
from keras_raptr.src.layers.random_part_stack import RandomPartStack
from keras_raptr.src.version import __version__
