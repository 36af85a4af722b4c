"""Static: no selector; a fixed centre subset of the grid, the floor a learned method must beat.

Every image keeps the same tokens: those nearest the grid's centre
(`spvit_tf.pruning.selector.centre_priority`), dropped ones discarded.
"""

import dataclasses

from spvit_tf.pruning.methods.base import SelectionMethod, register


@dataclasses.dataclass(frozen=True)
class CentreSelection(SelectionMethod):
    """Top-k by closeness to the grid's centre (ties by grid index)."""

    def scores(self, pruner, j, state, block, mode):
        from keras import ops

        from spvit_tf.pruning.selector import centre_priority

        return None, ops.take(centre_priority(pruner.schedule.steps[j].grid), state.index)


STATIC = register(CentreSelection(
    name="static", label="static centre crop", fate="discarded", marker="D",
))
