"""Model families and the registry's entry points.

Importing this package imports every family module, each registering its named
architectures, then re-exports the registry (`spvit_tf.registry`, which imports no model):
use `create_model`, `model_config` and `list_models` from here (or from `spvit_tf`).
A new family is a module that calls `register_model`, imported below.
"""

from spvit_tf.models.pit import PoolingVisionTransformer
from spvit_tf.models.vit import VisionTransformer
from spvit_tf.registry import create_model, list_models, model_config, register_model

__all__ = [
    "PoolingVisionTransformer", "VisionTransformer", "create_model", "list_models",
    "model_config", "register_model",
]
