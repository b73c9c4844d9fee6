"""KerasHub integration: RaPTr for KerasHub backbones (BERT and others).

`keras_raptr.src.hub.wrap` does not import keras_hub at import time;
`keras_raptr.src.hub.raptr_backbone` does.
"""
