"""Representation similarity between layer activations: CKA, CCA, SVCCA and PWCCA, one registry.

Inputs are numpy arrays or torch tensors with examples on the first axis, either 2-D
``(n, features)`` or conv activations ``(n, C, H, W)`` (tokens stored as ``(n, D, T, 1)`` count as
conv maps). ``x`` and ``y`` must hold the same examples in the same order.

Conventions
    * CKA (``linear_cka``, ``rbf_cka``, ``minibatch_cka``) flattens each example to ``(n, C*H*W)``.
    * The CCA family (``cca``, ``cca_mean``, ``svcca``, ``pwcca``) treats channels as neurons and
      every (example, h, w) position as a data point, ``(n*H*W, C)``, as google/svcca does; both
      sides must then have the same number of positions (pool to a common size first).

Numerics
    * Everything is computed in float64 on the device the tensors are on (numpy inputs on the
      CPU), whatever the input dtype; a numpy input paired with a tensor goes to its device.
    * Linear CKA uses feature-space products (d x d) when n >= d for either side, else each
      side's example Gram (n x n, built one side at a time from float64 column chunks); the
      symmetric products are computed block-wise (half the work): no n x n matrix exists unless
      n < d for both sides.
    * The CCA family centres and drops constant columns (max == min over the data points) in a
      first streamed pass, then takes one of two routes, both streaming row chunks:
      - Gram (the default wherever it is accurate): the float64 centred cross-products of
        ``[X Y]`` (upper triangle in panels), then small dense algebra -- plain CCA/PWCCA equilibrate
        (unit diagonal: CCA ignores column scale), whiten each side with its Cholesky factor
        (triangular solves, no inverse) and take the SVD of the whitened cross matrix; SVCCA takes
        each side's covariance eigenvectors. The Gram squares the condition number, so this route
        is taken only when LAPACK's condition estimate (plain CCA/PWCCA) or the spread of the kept
        eigenvalues (SVCCA, whose 99 % of variance rarely reaches near round-off) says the result
        keeps ``GRAM_ACCURACY`` (1e-8 relative; measured errors are ~1e-3 of that estimate), and
        only with at least as many data points as columns.
      - QR otherwise: a Householder QR ``[X Y] = Q R`` (TSQR over the chunks); the angles
        between the two column spaces are read off the small ``R`` (QR / SVD only).
      Directions whose singular value is below ``s_max * (u + max(N, d) * eps64)`` (``u`` = unit
      round-off of the input dtype, ``eps64`` of float64) are undefined and left out (the Gram
      route is taken only when every direction clears that by ``RANK_MARGIN``), so duplicate,
      constant, badly scaled or exactly low-rank columns give the answer over the directions that
      are defined instead of a crash, a NaN or a silently dropped column (PWCCA weights only the
      canonical directions that exist, never a side's directions beyond the other side's rank).

Errors and warnings
    * ``SimilarityInputError`` (a ``MedtransferError`` and a ``ValueError``): inputs that do not
      fit (shapes, too few examples, NaN/inf). ``UndefinedSimilarityError``, its subclass: the
      measure is undefined for these inputs, e.g. plain CCA/PWCCA when a side has at least as
      many non-constant features as the ``N - 1`` dimensions centred data span, or CKA of a
      constant representation. Catch either as ``ValueError`` or ``MedtransferError``.
    * ``InflatedCorrelationWarning`` when the numbers of defined directions ``kx + ky`` are so
      large for ``N`` data points that independent data would already reach a top canonical
      correlation of ``INFLATION_WARNING_LEVEL``: the Wachter limit
      ``sqrt(gx (1 - gy)) + sqrt(gy (1 - gx))``, ``g = k / (N - 1)``.

Layout and API
    Importing this package imports every public module in it (found with ``pkgutil``) and so
    registers every measure, without importing torch or numpy (the planner reads names and traits
    here). Public modules hold the measures and import their numerics when they run; the modules
    whose names start with ``_`` hold the numerics and import torch:

    * :mod:`.registry` -- ``MEASURES``: name -> function ``(x, y) -> float``
      (``MEASURES.get(name, key=...)``, ``MEASURES.names()``), and its traits
      (``MEASURES.traits(name).family``, ``"cka"`` or ``"cca"``, see ``FAMILIES``).
    * :mod:`.cka` -- ``linear_cka``, ``linear_cka_debiased``, ``rbf_cka`` (registered),
      ``MinibatchCKA``, ``minibatch_cka``; numerics in :mod:`._cka`.
    * :mod:`.cca` -- ``cca``, ``cca_mean``, ``svcca``, ``pwcca`` (registered), ``PWCCA_VARIANTS``;
      the shared core in :mod:`._cca`. :mod:`._inputs`: the input checks of every measure.
    * :mod:`.errors` -- ``SimilarityInputError``, ``UndefinedSimilarityError``,
      ``InflatedCorrelationWarning`` (also importable from here).
    * ``MEASURE_NAMES`` / ``CCA_MEASURES``: every measure / the CCA family's, listed family by
      family (the planner's allowed ``analysis.measures`` and what ``analysis.cca_subsample`` applies to).

    A new measure is one module here with a function decorated ``@MEASURES.register(name,
    family=...)``, plus its reference and invariances in ``tests/test_similarity.py``, whose
    tests run over every registered measure.
"""

from __future__ import annotations

import importlib
import pkgutil

from medtransfer.analysis.measures.errors import (InflatedCorrelationWarning, SimilarityInputError,
                                                  UndefinedSimilarityError)
from medtransfer.analysis.measures.registry import FAMILIES, MEASURES, MeasureTraits

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):  # private modules hold numerics (torch), imported by the measures
        importlib.import_module(f"{__name__}.{_module.name}")

MEASURE_NAMES: tuple[str, ...] = MEASURES.listed()
CCA_MEASURES: tuple[str, ...] = MEASURES.listed("cca")

__all__ = ["CCA_MEASURES", "FAMILIES", "MEASURES", "MEASURE_NAMES", "InflatedCorrelationWarning", "MeasureTraits",
           "SimilarityInputError", "UndefinedSimilarityError"]
