"""Self-supervised pretraining methods, one module each, on the shared epoch loop.

Public API::

    METHODS: Registry                  # simclr, mocov2, byol, dino, swav, barlowtwins
    build(name, backbone, options, *, steps_per_epoch, epochs) -> SSLMethod
    Views(recipe, *, size, gray, mean, std)     # on-device kornia views
    SSLObjective(method, views, device=, precision=, monitor=)
    resolve_options(method, options, key) -> dict   # defaults + overrides, checked

Each method module says which lightly losses and heads it uses; defaults and where they come
from are in :mod:`medtransfer.training.ssl.options`. Only ``options`` is imported eagerly: the
study grid (imported by the Snakefile) checks option names without importing torch.
"""

from __future__ import annotations

from typing import Any

from .options import METHOD_DEFAULTS, VIEW_DEFAULTS, resolve_options

_LAZY = {"METHODS": "methods", "build": "methods", "SSLMethod": "base", "embed": "base",
         "SSLObjective": "objective", "Views": "views"}

__all__ = ["METHODS", "METHOD_DEFAULTS", "SSLMethod", "SSLObjective", "VIEW_DEFAULTS", "Views", "build", "embed",
           "resolve_options"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
