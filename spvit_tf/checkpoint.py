"""Checkpoint import: timm/DeiT/PiT state dicts and this library's own Keras weights.

Everything is read and checked before any variable is assigned, so a bad checkpoint leaves
the model exactly as it was.
"""

import logging
import os

import numpy as np

from spvit_tf.errors import SpvitError, first_line

log = logging.getLogger("spvit_tf")

# Containers that training scripts wrap state dicts in (DeiT's official files use "model").
_WRAPPER_KEYS = ("model", "state_dict", "model_ema")
KERAS_WEIGHTS_SUFFIX = ".weights.h5"


class WeightsMismatch(SpvitError):
    """Readable Keras weights of another architecture than the model being loaded; `problem`
    says how they differ, for callers that know better what the user should do."""

    def __init__(self, message, problem):
        super().__init__(message)
        self.problem = problem


def read_state_dict(path):
    """Reads a flat {key: numpy array} state dict from .safetensors, .npz or .pth/.pt."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SpvitError(f"checkpoint {path} does not exist; pass the path of a checkpoint file")
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            state = load_file(path)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                state = {key: data[key] for key in data.files}
        elif suffix in (".pth", ".pt"):
            state = _read_torch(path)
        else:
            raise SpvitError(
                f"checkpoint {path} has unknown format {suffix!r}; use .safetensors, .npz, "
                f".pth/.pt or {KERAS_WEIGHTS_SUFFIX}"
            )
    except SpvitError:
        raise
    except Exception as error:  # each format's parser has its own error types
        raise SpvitError(
            f"checkpoint {path} is corrupt or truncated ({type(error).__name__}: {error}); "
            "download or export it again"
        ) from None
    return state


def _read_torch(path):
    try:
        import torch
    except ImportError:
        raise SpvitError(
            f"reading {path} needs PyTorch; install torch, or convert it elsewhere with "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise SpvitError(
            f"checkpoint {path} cannot be loaded safely with weights_only=True "
            f"({type(error).__name__}); it is corrupt or holds arbitrary Python objects: "
            "convert it to .safetensors"
        ) from None
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise SpvitError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def to_keras_layout(array, layout, target_shape):
    """Converts a PyTorch tensor layout to the layout of a Keras variable of `target_shape`."""
    if layout == "linear":  # [out, in] -> [in, out]
        return array.T
    if layout == "conv":  # [out, in, kh, kw] -> [kh, kw, in, out]
        return array.transpose(2, 3, 1, 0)
    if layout == "depthwise" and array.ndim == 4:  # [in * m, 1, kh, kw] -> [kh, kw, in, m]
        multiplier = target_shape[-1]
        if array.shape[0] % multiplier:
            return array  # reported as a shape mismatch
        return array.reshape(-1, multiplier, *array.shape[2:]).transpose(2, 3, 0, 1)
    if layout == "pos_grid":  # [1, C, H, W] -> [1, H, W, C]
        return array.transpose(0, 2, 3, 1)
    return array


def _cubic(x, a=-0.5):
    """Keys' cubic kernel; a=-0.5 is what PyTorch's antialiased bicubic (and PIL) use."""
    x = np.abs(x)
    return np.where(
        x <= 1,
        ((a + 2) * x - (a + 3)) * x * x + 1,
        np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0),
    )


def _resample_matrix(in_size, out_size):
    """(out, in) weights of antialiased bicubic resampling along one axis.

    Same algorithm as `torch.nn.functional.interpolate(mode="bicubic", antialias=True,
    align_corners=False)`, which timm uses to resize position embeddings: the kernel widens
    when downsampling and is truncated and renormalised at the borders.
    """
    scale = in_size / out_size
    support_scale = max(scale, 1.0)
    support = 2.0 * support_scale
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = _cubic((np.arange(lo, hi) - center + 0.5) / support_scale)
        weights[i, lo:hi] = taps / taps.sum()
    return weights


def resize_grid(grid, new_size):
    """Resizes a (H, W, C) grid to `new_size` (h, w) with antialiased bicubic."""
    rows = _resample_matrix(grid.shape[0], new_size[0])
    cols = _resample_matrix(grid.shape[1], new_size[1])
    out = np.einsum("ih,hwc->iwc", rows, grid.astype(np.float64))
    return np.einsum("jw,iwc->ijc", cols, out).astype(grid.dtype)


def _resize_pos_embed(value, target_shape, layout, num_prefix_tokens, key):
    if layout == "pos_grid":  # [1, H, W, C]
        return resize_grid(value[0], target_shape[1:3])[None]
    prefix, patches = value[:, :num_prefix_tokens], value[0, num_prefix_tokens:]
    old = int(round(np.sqrt(patches.shape[0])))
    new = int(round(np.sqrt(target_shape[1] - num_prefix_tokens)))
    if old * old != patches.shape[0] or new * new != target_shape[1] - num_prefix_tokens:
        raise SpvitError(
            f"{key}: cannot resize non-square position grid {value.shape} -> {target_shape}"
        )
    grid = resize_grid(patches.reshape(old, old, -1), (new, new))
    return np.concatenate([prefix, grid.reshape(1, new * new, -1)], axis=1)


def convert_state_dict(model, state, replace_head=False):
    """Matches a timm state dict to `model`'s variables: returns [(variable, array)].

    Strict: missing or unexpected keys and shape mismatches raise one `SpvitError` naming
    them. Position embeddings are resized to the model's grid. With `replace_head`, a head
    whose class count differs is skipped (left freshly initialised) and logged.
    """
    targets = model.timm_variables()
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    assignments, mismatched, skipped_head = [], [], []
    for key, (variable, layout) in targets.items():
        if key not in state:
            continue
        shape = tuple(variable.shape)
        value = to_keras_layout(np.asarray(state[key], dtype=np.float32), layout, shape)
        if value.shape != shape and layout in ("pos_tokens", "pos_grid") and value.ndim == len(shape):
            log.info("resizing %s from %s to %s", key, value.shape, shape)
            value = _resize_pos_embed(value, shape, layout, model.num_prefix_tokens, key)
        if value.shape != shape:
            if replace_head and key.split(".")[0] in ("head", "head_dist"):
                skipped_head.append(key)
                continue
            mismatched.append(f"{key} {value.shape} vs model {shape}")
            continue
        assignments.append((variable, value))
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched)}")
    if problems:
        raise SpvitError(
            f"checkpoint does not fit {model.name}: {' | '.join(problems)}; "
            "check the model name and its options (num_classes, image_size, ...)"
        )
    if skipped_head:
        log.warning(
            "checkpoint head has a different class count: %s left freshly initialised "
            "for num_classes=%d", ", ".join(skipped_head), model.num_classes
        )
    return assignments


def _stored_tensor_count(path):
    """How many arrays a `.weights.h5` holds (Keras ignores extra ones when loading)."""
    import h5py

    count = 0

    def visit(_, item):
        nonlocal count
        count += isinstance(item, h5py.Dataset)

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except (OSError, RuntimeError) as error:  # HDF5 reports damaged structures as either
        raise _damaged_h5(path, error) from None
    return count


def _damaged_h5(path, error):
    return SpvitError(f"{path} is not a readable Keras .weights.h5 file ({first_line(error)}): "
                      "it is truncated or damaged; restore it from a copy or train again")


def _load_keras_weights(model, path):
    """Strict `.weights.h5` loading: the same tensors as `model`, or, for a pruned `model`, a
    dense model's (a teacher's weights starting a fine-tune: the selectors stay fresh)."""
    if not os.path.isfile(path):
        raise SpvitError(f"checkpoint {path} does not exist; pass the path of a weights file")
    stored, problem = _stored_tensor_count(path), None
    if stored == len(model.weights):
        snapshot = [v.numpy() for v in model.weights]
        try:
            model.load_weights(path)
            return
        except (ValueError, OSError, KeyError, RuntimeError) as error:
            for variable, value in zip(model.weights, snapshot):
                variable.assign(value)
            if isinstance(error, (OSError, RuntimeError)):  # h5py met a damaged file
                raise _damaged_h5(path, error) from None
            problem = first_line(error)
    elif model.pruner is not None and _load_dense_weights(model, path, stored):
        return
    problem = problem or f"{stored} tensors stored, the model has {len(model.weights)}"
    raise WeightsMismatch(
        f"Keras weights {path} do not fit {model.name} ({problem}); build the model with the "
        "same name and options it was trained with", problem
    )


def _load_dense_weights(model, path, stored):
    """Loads a dense model's weights into pruned `model`; False when they do not fit."""
    dense = type(model).from_config({**model.get_config(), "pruning": None})
    dense.build_weights()
    if stored != len(dense.weights):
        return False
    try:
        dense.load_weights(path)
    except (ValueError, KeyError):
        return False
    except (OSError, RuntimeError) as error:
        raise _damaged_h5(path, error) from None
    targets = model.timm_variables()
    for key, (variable, _) in dense.timm_variables().items():
        targets[key][0].assign(variable)
    log.info("loaded the dense weights %s into %s; token selectors %s freshly initialised", path,
             model.name, ", ".join(s.name for s in model.pruner.selectors) or "(none)")
    return True


def load_checkpoint(model, path, replace_head=False):
    """Loads `path` into `model` (built): a timm-style state dict or Keras `.weights.h5`."""
    path = os.fspath(path)
    if path.endswith(KERAS_WEIGHTS_SUFFIX):
        _load_keras_weights(model, path)
        return
    assignments = convert_state_dict(model, read_state_dict(path), replace_head)
    for variable, value in assignments:
        variable.assign(value)
    log.info("loaded %d tensors from %s into %s", len(assignments), path, model.name)
    if model.pruner is not None and model.pruner.weights:
        log.info(
            "token selectors are not in %s: %s freshly initialised",
            path, ", ".join(s.name for s in model.pruner.selectors),
        )
