"""Keras ResNet-50 weight files (``.h5``) read with h5py alone, as a state dict of
:mod:`medtransfer.models.keras_resnet` (architecture ``keras_resnet50``); Keras itself is not
needed to load them.

The files researchers download are Keras's legacy HDF5 saves:

- a weights save (``model.save_weights("x.h5")`` in Keras 2): the root's ``layer_names``
  attribute lists the layers; each layer's group lists its variables in ``weight_names``;
- a full-model save (``model.save("x.h5")``; Keras 3's legacy ``.h5`` too): the same under the
  group ``model_weights`` (the root also holds ``model_config``, not read here);
- Keras 2 (TensorFlow) names a variable ``conv1_conv/kernel:0`` (e.g. ``RadImageNet-ResNet50_notop.h5``,
  Keras's ImageNet ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``), Keras 3
  ``conv1_conv/kernel``; a model nested in another (a fine-tuned model wrapping ResNet50) keeps its
  variables in the group of the nested model, named by their own layer;
- long attribute lists are split by Keras into ``layer_names0``, ``layer_names1``, ….

Layer names are those of ``keras.applications.resnet.ResNet50`` (``conv1_conv``, ``conv1_bn``,
``conv{S}_block{B}_{I}_conv|bn`` with I = 0 for the projection shortcut, ``predictions``) or of
the older ``keras.applications.resnet50`` (``conv1``, ``bn_conv1``, ``res{S}{b}_branch1|2a|2b|2c``
and ``bn{S}{b}_…`` with the block as a letter, ``fc1000``). Tensors are converted to PyTorch's
layouts: conv kernels HWIO → OIHW, dense kernels (in, out) → (out, in); BatchNorm
``gamma``/``beta``/``moving_mean``/``moving_variance`` → ``weight``/``bias``/``running_mean``/``running_var``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from medtransfer.errors import WeightsError

#: Keras variable name → PyTorch parameter/buffer name.
VARIABLES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
             "moving_mean": "running_mean", "moving_variance": "running_var"}

_BRANCH = {"1": 0, "2a": 1, "2b": 2, "2c": 3}
_PATTERNS: list[tuple[re.Pattern[str], object]] = [
    (re.compile(r"conv1_(conv|bn)"), lambda m: f"conv1.{m[1]}"),
    (re.compile(r"conv(\d)_block(\d+)_([0-3])_(conv|bn)"), lambda m: f"conv{m[1]}.block{m[2]}.{m[4]}{m[3]}"),
    (re.compile(r"conv1"), lambda m: "conv1.conv"),  # keras.applications.resnet50 before Keras 2.2.5
    (re.compile(r"bn_conv1"), lambda m: "conv1.bn"),
    (re.compile(r"(res|bn)(\d)([a-z])_branch(1|2a|2b|2c)"),
     lambda m: f"conv{m[2]}.block{ord(m[3]) - ord('a') + 1}.{'conv' if m[1] == 'res' else 'bn'}{_BRANCH[m[4]]}"),
    (re.compile(r"predictions|fc1000"), lambda m: "fc"),
]


def is_hdf5(path: Path) -> bool:
    """True when ``path`` is an HDF5 file (by its signature, whatever its suffix)."""
    import h5py

    try:
        return bool(h5py.is_hdf5(str(path)))
    except OSError:
        return False


def module_name(layer: str) -> str | None:
    """The ``keras_resnet50`` module of Keras ResNet-50 layer ``layer``, or None if it is none."""
    for pattern, name in _PATTERNS:
        match = pattern.fullmatch(layer)
        if match:
            return name(match)  # type: ignore[operator]
    return None


def _attribute_list(group, name: str) -> list[str]:
    """A string-list attribute as Keras writes it: whole, or split into ``name0``, ``name1``, …"""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values += list(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _weights_root(f):
    if "layer_names" not in f.attrs and "layer_names0" not in f.attrs and "model_weights" in f:
        return f["model_weights"]
    return f


def _to_torch(module: str, variable: str, value: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if variable == "kernel" and tensor.ndim == 4:  # Conv2D: (H, W, in, out) -> (out, in, H, W)
        tensor = tensor.permute(3, 2, 0, 1)
    elif variable == "kernel" and tensor.ndim == 2:  # Dense: (in, out) -> (out, in)
        tensor = tensor.T
    return tensor.contiguous()


def read_keras_resnet50(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict (``keras_resnet50`` keys, float32, CPU) of the Keras ResNet-50 weights in
    ``path``; the classifier ``fc`` only where the file has one (``include_top=True``).

    Raises ``WeightsError`` for a file that is no Keras legacy HDF5 save, or whose layers with
    weights are not ResNet-50's (the message lists them).
    """
    import h5py

    path = Path(path)
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    try:
        with h5py.File(path, "r") as f:
            root = _weights_root(f)
            layers = _attribute_list(root, "layer_names")
            if not layers:
                raise WeightsError(
                    f"weights file {str(path)!r} is an HDF5 file but no Keras legacy weights save (no "
                    "'layer_names' attribute at its root or under 'model_weights'); save the Keras model "
                    "with model.save('x.h5') (Keras 3: the legacy format) or model.save_weights('x.h5') (Keras 2)"
                )
            for layer in layers:
                group = root[layer]
                for weight in _attribute_list(group, "weight_names"):
                    parts = weight.split("/")
                    variable = parts[-1].split(":")[0]
                    owner = parts[-2] if len(parts) > 1 else layer  # a nested model names its layers
                    module = module_name(owner)
                    if module is None or variable not in VARIABLES:
                        unknown.append(f"{layer}/{weight}")
                        continue
                    key = f"{module}.{VARIABLES[variable]}"
                    if key in state:
                        raise WeightsError(f"weights file {str(path)!r} holds {weight!r} twice "
                                           f"(two ResNet-50s in one file?)")
                    state[key] = _to_torch(module, variable, group[weight][()])
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure means an unreadable file
        raise WeightsError(
            f"weights file {str(path)!r} could not be read as a Keras HDF5 save ({type(e).__name__}: {e})"
        ) from e
    if unknown:
        raise WeightsError(
            f"weights file {str(path)!r} is a Keras save, but not of Keras's ResNet-50 (architecture "
            f"keras_resnet50): its variables {', '.join(unknown[:5])}"
            + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
            + " are no layer of keras.applications.resnet.ResNet50"
        )
    if not state:
        raise WeightsError(f"weights file {str(path)!r} is a Keras save without any weights")
    return state
