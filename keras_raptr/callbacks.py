"""Public callbacks."""

from keras_raptr.src.callbacks.stage_scheduler import StageScheduler
