"""Activations in, float64 tensors out: the input checks and conversions every measure shares (imports torch).

Inputs are numpy arrays or torch tensors with examples on the first axis; a numpy input paired
with a tensor goes to the tensor's device.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from medtransfer.analysis.measures.errors import SimilarityInputError

ArrayLike = Union[np.ndarray, torch.Tensor]

F64 = torch.float64
EPS64 = float(torch.finfo(F64).eps)


def _as_tensor(a: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        array = np.asarray(a)
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise SimilarityInputError(f"{name} must be a real numeric array, got dtype {array.dtype}")
        try:
            t = torch.from_numpy(array)
        except (TypeError, ValueError):  # negative strides, or a dtype torch lacks (e.g. float128)
            t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    if t.is_complex():
        raise SimilarityInputError(f"{name} is complex; similarity measures take real activations")
    return t


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Both inputs as tensors on one device (a tensor's device wins over a numpy array's CPU)."""
    tx, ty = _as_tensor(x, "x"), _as_tensor(y, "y")
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        if tx.device != ty.device:
            raise SimilarityInputError(f"x is on {tx.device} and y on {ty.device}; put both on one device")
    elif isinstance(x, torch.Tensor):
        ty = ty.to(tx.device)
    elif isinstance(y, torch.Tensor):
        tx = tx.to(ty.device)
    for name, t in (("x", tx), ("y", ty)):
        if t.ndim < 2:
            raise SimilarityInputError(
                f"{name} has shape {tuple(t.shape)}; expected (n, features) or (n, C, H, W) with examples first")
    if tx.shape[0] != ty.shape[0]:
        raise SimilarityInputError(
            f"x has {tx.shape[0]} examples and y {ty.shape[0]}; both must hold the same examples in the same order")
    return tx, ty


def _unit_roundoff(dtype: torch.dtype) -> float:
    """Relative precision the input was stored with (0 for integers, which are exact)."""
    return float(torch.finfo(dtype).eps) / 2 if dtype.is_floating_point else 0.0


def _centred_features(t: torch.Tensor, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """(n, d) float64 copy of ``t`` with each example flattened and each column centred.

    ``out``: a float64 buffer of that shape to reuse (a fresh one costs page faults per call).
    """
    flat = t.reshape(t.shape[0], -1)
    if out is None or out.shape != flat.shape or out.device != flat.device:
        out = torch.empty(flat.shape, dtype=F64, device=flat.device)
    x = out.copy_(flat)  # one contiguous copy
    mean = x.mean(0)
    if not bool(torch.isfinite(mean).all()):
        raise SimilarityInputError(f"{name} contains NaN or infinite values")
    return x.sub_(mean)
