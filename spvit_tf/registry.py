"""Model registry: every named architecture is a family class plus a default config.

`create_model` is the one entry point users and the CLIs share (timm's habit): it resolves the
config, builds the weights and optionally imports a checkpoint.

The registry imports no model: each family module registers its names when imported (timm's
habit), and `spvit_tf.models` imports every family and re-exports these functions, so
`from spvit_tf.models import create_model` (or `spvit_tf.create_model`) sees every name.
"""

import fnmatch
import inspect
import logging

from spvit_tf.errors import SpvitError

_REGISTRY = {}
log = logging.getLogger("spvit_tf")


def register_model(name, model_cls, **config):
    """Registers `name` as `model_cls(**config)`, other arguments at the class defaults."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    defaults = {
        p.name: p.default
        for p in inspect.signature(model_cls.__init__).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    unknown = set(config) - set(defaults)
    if unknown:
        raise ValueError(f"{model_cls.__name__} has no argument {sorted(unknown)}")
    _REGISTRY[name] = (model_cls, defaults | config)


def list_models(pattern="*"):
    """Sorted registered names matching a shell-style `pattern`."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _lookup(name):
    if name not in _REGISTRY:
        known = ", ".join(list_models()) or "none registered (import spvit_tf.models first)"
        raise SpvitError(f"unknown model {name!r}; choose one of: {known}")
    return _REGISTRY[name]


def model_config(name, *, num_classes=None, image_size=None, **overrides):
    """The full constructor config of `name` with overrides applied (no weights built)."""
    model_cls, defaults = _lookup(name)
    config = dict(defaults)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if image_size is not None:
        overrides["image_size"] = image_size
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise SpvitError(
            f"{name} has no option {', '.join(unknown)}; valid options: {', '.join(sorted(config))}"
        )
    config.update(overrides)
    return model_cls, config


def create_model(name, *, num_classes=None, image_size=None, checkpoint=None, **overrides):
    """Builds registered model `name` (weights created) and optionally loads `checkpoint`.

    `checkpoint` may be a timm/DeiT/PiT state dict (.safetensors, .npz, .pth/.pt) or this
    library's Keras weights (.weights.h5). When `num_classes` differs from the checkpoint's
    head, the head is left freshly initialised; when `image_size` differs, position
    embeddings are resized.
    """
    model_cls, config = model_config(
        name, num_classes=num_classes, image_size=image_size, **overrides
    )
    model = model_cls(**config, name=name)
    model.build_weights()
    if checkpoint is not None:
        from spvit_tf.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint, replace_head=num_classes is not None)
    return model
