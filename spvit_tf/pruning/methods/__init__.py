"""Pruning methods: one module per method, each registering one method object.

    from spvit_tf.pruning.methods import get_method, method_names
    get_method("evit").label, get_method("tome").learned, method_names()

The registry (`base.py`) and the method modules import no model module and, at import time,
neither TensorFlow nor Keras, so the cost model and the report use them without TensorFlow.
Registration order (below) is the report's order. A new method is a new module here that
calls `register` with a `Method` (see `base.py` for the contract), imported below.
"""

from spvit_tf.pruning.methods.base import (
    Method,
    SelectionMethod,
    StepShape,
    get_method,
    method_names,
    register,
)
from spvit_tf.pruning.methods import spvit, hard, evit, static, tome  # noqa: E402,F401  (order)

__all__ = ["Method", "SelectionMethod", "StepShape", "get_method", "method_names", "register"]
