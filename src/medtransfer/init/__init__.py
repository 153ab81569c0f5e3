"""Initialisations: how a network starts before fine-tuning, decided per canonical block.

Public API::

    INITS: Registry[Init]                # "RI", "WT", "ST", "WT-ST", "WT-RI", "Gabor": plan + traits
    apply(model, init, source=None, *, k=None, seed=0, **options) -> dict
    create_kwargs(init, *, k=None, **options) -> dict    # extra create() kwargs an init needs

Importing this package does not import torch: ``INITS`` and the traits the planner reads are in
:mod:`medtransfer.init.registry`; ``apply`` and ``create_kwargs`` (:mod:`.initialise`) load on
first use. Layout: ``plans/`` one module per init (its plan and traits; a new init is a new file
there), ``registry`` finds them, ``origins`` fills a block by its origin, ``initialise`` runs it all.

Every init starts from a fresh copy of the model's own architecture drawn under ``seed``
(:func:`medtransfer.models.rebuild`), so whatever is "random" is the architecture's default init
and the same seed gives bit-identical weights. An init is a registered function that assigns
each canonical body block an origin; :func:`apply` then fills the blocks (``origins.ORIGINS``):

``source``   copied bit-for-bit from the source state dict (BatchNorm running stats included; an
             input conv with another channel count is adapted like timm's ``adapt_input_conv``)
``stats``    every floating parameter redrawn i.i.d. from N(mean, std) of the source tensor
             (Raghu's "Mean Var", Matsoukas' "stats transfer"; a one-element tensor keeps its
             value). Normalisation layers (BatchNorm, LayerNorm, GroupNorm) are reset to their
             defaults — weight 1, bias 0, BatchNorm running mean 0 / var 1 — as Matsoukas et al.
             do; their affine parameters are a per-channel gain/shift, not a weight distribution
             to mimic, and reusing BN statistics computed for other weights would be wrong.
             (The layer's own ``reset_parameters()``, so also where the architecture's init
             differs, such as timm's zero-init of the last BN in each ResNet block.) Non-parameter buffers (e.g.
             attention masks) keep the architecture's values.
``random``   the architecture's default init (from the seeded fresh copy)
``gabor``    as random, with the first conv's weight replaced by Gabor filters (see ``gabor.py``)
``new_head`` the classifier of a transfer init: random, never taken from the source

Inits (config names): ``RI`` all random; ``WT`` all source, new head; ``ST`` all stats, new head;
``WT-ST`` (k) blocks[:k] source, the rest stats; ``WT-RI`` (k) blocks[:k] source, the rest random,
with option ``slim: factor`` for a model built with ``create(..., **create_kwargs("WT-RI", k=k,
slim=factor))`` (blocks >= k rebuilt with ``factor`` × channels); ``Gabor`` random with a Gabor
first conv (a ``source``, if given, sets the filter parameter ranges and scale).
``k`` counts canonical blocks from the input (0 <= k <= number of blocks before the head).
"""

from __future__ import annotations

from typing import Any

from .registry import INITS

_LAZY = {"apply": "initialise", "create_kwargs": "initialise"}

__all__ = ["INITS", "apply", "create_kwargs"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
