"""Hard drop (DynamicViT-style): SPViT's learned selector, dropped tokens discarded.

The same selector, decisions and top-k as `spvit` (`LearnedSelection`), without the package
token: what the package token is worth.
"""

from spvit_tf.pruning.methods.base import register
from spvit_tf.pruning.methods.spvit import LearnedSelection

HARD = register(LearnedSelection(
    name="hard", label="hard drop (DynamicViT-style)", learned=True, has_package=False,
    fate="discarded", marker="s",
))
