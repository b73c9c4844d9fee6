"""Public KerasHub integration (imports keras_hub).

`import keras_raptr.hub` registers `RaptrBackbone`, so presets and `.keras`
files that hold one load with `keras_hub` / `keras.saving`.
"""

from keras_raptr.src.hub.raptr_backbone import RaptrBackbone
from keras_raptr.src.hub.wrap import load_backbone
from keras_raptr.src.hub.wrap import load_task_preset
from keras_raptr.src.hub.wrap import unwrap
from keras_raptr.src.hub.wrap import wrap_backbone
