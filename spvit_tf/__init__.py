"""spvit_tf: SPViT latency-aware soft token pruning for Vision Transformers, in Keras 3.

The public names are imported lazily so that light tools (the adb benchmark, result parsers)
can import submodules without loading TensorFlow.
"""

import importlib
import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) would bury our one-line errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_PUBLIC = {
    "create_model": "spvit_tf.models",
    "list_models": "spvit_tf.models",
    "model_config": "spvit_tf.models",
    "SpvitError": "spvit_tf.errors",
    "PruningConfig": "spvit_tf.pruning.config",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'spvit_tf' has no attribute {name!r}")
