"""The registry of method classes, filled by importing each method module."""

from __future__ import annotations

from typing import Any

from torch import nn

from . import barlowtwins, byol, dino, mocov2, simclr, swav  # noqa: F401 - fill the registry
from .base import METHODS, SSLMethod


def build(name: str, backbone: nn.Module, options: dict[str, Any], *, steps_per_epoch: int,
          epochs: int) -> SSLMethod:
    """The method ``name`` around ``backbone`` with its resolved ``options``."""
    return METHODS.get(name)(backbone, options, steps_per_epoch=steps_per_epoch, epochs=epochs)
