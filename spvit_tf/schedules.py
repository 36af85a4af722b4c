"""Learning-rate schedules the Keras library lacks."""

import keras
from keras import ops


@keras.saving.register_keras_serializable("spvit_tf")
class CappedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """min(`cap`, `schedule`(step + `offset`)): SPViT's backbone rate during fine-tuning.

    The official recipe trains the backbone at min(0.01·lr, the predictor's cosine) after
    keeping it frozen for the first epochs. A frozen backbone's optimizer counts only the
    steps it applies, so after `offset` frozen steps its step `s` is the run's step
    `s + offset`: the cap then follows the selectors' schedule at the same point of the run.
    """

    def __init__(self, schedule, cap, offset=0):
        self.schedule, self.cap, self.offset = schedule, float(cap), int(offset)

    def __call__(self, step):
        return ops.minimum(self.cap, self.schedule(ops.cast(step, "float32") + self.offset))

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "cap": self.cap, "offset": self.offset}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)
