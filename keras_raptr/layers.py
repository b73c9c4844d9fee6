"""Public layers."""

from keras_raptr.src.layers.random_part_stack import RandomPartStack
