"""Token pruning: SPViT's selector and package token, and the peer baselines.

`PruningConfig` and the method registry (`spvit_tf.pruning.methods`, one module per method)
are importable without TensorFlow (the cost model uses them); the Keras pieces live in
`spvit_tf.pruning.selector`, `spvit_tf.pruning.tokens` and the methods' step functions.
"""

from spvit_tf.pruning.config import PruningConfig

__all__ = ["PruningConfig"]
