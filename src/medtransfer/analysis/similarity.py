"""Representation similarity between layer activations: CKA, CCA, SVCCA and PWCCA.

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
      are defined instead of a crash, a NaN or a silently dropped column.

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

``MEASURES`` maps the names the pipeline config uses to functions ``(x, y) -> float``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from medtransfer.errors import MedtransferError
from medtransfer.registry import Registry

ArrayLike = Union[np.ndarray, torch.Tensor]

F64 = torch.float64
EPS64 = float(torch.finfo(F64).eps)
GRAM_BLOCK = 256  # rows/columns per block of a symmetric Gram product
SYMMETRIC_PANEL = 128  # rows per panel of a full symmetric Gram (fastest measured on this CPU)
QR_CHUNK_ROWS = 4096  # least rows per chunk of the streaming QR (more when the matrix is wide)
GRAM_CHUNK_ELEMENTS = 1 << 21  # float64 values per chunk of the streamed Gram of [X Y] (16 MiB) ...
GRAM_CHUNK_ROWS = 2048  # ... but at least this many rows (measured as fast as one whole product)
GRAM_PANEL = 512  # columns per panel of the Gram's upper triangle
GRAM_ACCURACY = 1e-8  # the Gram route is taken when eps64 * condition estimate stays below this
RANK_MARGIN = 4.0  # ... and every direction clears the rank tolerance by this factor
INFLATION_WARNING_LEVEL = 0.5  # warn when independent data would reach this top correlation
DEGENERATE_HSIC = 1e-10  # HSIC(x, x) below this fraction of its terms' size counts as zero

MEASURES: Registry = Registry("similarity measure")


class SimilarityInputError(MedtransferError, ValueError):
    """The activations cannot be compared as given (shape, size, NaN/inf)."""


class UndefinedSimilarityError(SimilarityInputError):
    """The measure is mathematically undefined for these activations; the message says what to do."""


class InflatedCorrelationWarning(UserWarning):
    """Too many directions for the number of data points: top canonical correlations are inflated."""


# --------------------------------------------------------------------------------------------
# inputs


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


# --------------------------------------------------------------------------------------------
# linear CKA: Frobenius products of centred Gram matrices, in the cheaper space per term


def _symmetric_gram(x: torch.Tensor) -> torch.Tensor:
    """x x^T (n, n) from row panels of its upper triangle, mirrored: half the flops of one matmul."""
    n = x.shape[0]
    step = min(SYMMETRIC_PANEL, max(32, -(-n // 4)))
    gram = x.new_empty((n, n))
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        panel = x[i0:i1] @ x[i0:].T
        gram[i0:i1, i0:] = panel
        gram[i1:, i0:i1] = panel[:, i1 - i0:].T
    return gram


def _gram_sq_norm(a: torch.Tensor) -> torch.Tensor:
    """||a^T a||_F^2 (= ||a a^T||_F^2) through the smaller side, upper blocks only (symmetry)."""
    if a.shape[1] > a.shape[0]:
        a = a.T
    d = a.shape[1]
    total = a.new_zeros(())
    for i0 in range(0, d, GRAM_BLOCK):
        block = a[:, i0:i0 + GRAM_BLOCK].T @ a[:, i0:]  # (b, d - i0): diagonal block, then off-diagonal
        width = min(GRAM_BLOCK, d - i0)
        total += block[:, :width].square().sum() + 2 * block[:, width:].square().sum()
    return total


def _cross_sq_norm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x^T y||_F^2 in column chunks of x, so the (dx, dy) product never needs to exist whole."""
    step = max(GRAM_BLOCK, (1 << 22) // max(1, y.shape[1]))
    total = x.new_zeros(())
    for i0 in range(0, x.shape[1], step):
        total += (x[:, i0:i0 + step].T @ y).square().sum()
    return total


def _centred_gram(t: torch.Tensor, name: str) -> torch.Tensor:
    """Gram matrix (n, n) of the centred, per-example-flattened ``t``, from float64 column chunks
    (centring is per column), so the float64 copy of ``t`` never exists whole."""
    flat = t.reshape(t.shape[0], -1)
    n, d = flat.shape
    step = max(GRAM_BLOCK, (1 << 22) // max(1, n))
    gram = None
    for c0 in range(0, d, step):
        chunk = flat[:, c0:c0 + step].to(F64, copy=True)
        mean = chunk.mean(0)
        if not bool(torch.isfinite(mean).all()):
            raise SimilarityInputError(f"{name} contains NaN or infinite values")
        part = _symmetric_gram(chunk.sub_(mean))
        gram = part if gram is None else gram.add_(part)
    return gram


def _unbiased_hsic_terms(s: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """n(n-3) * unbiased HSIC (Song et al. 2012) of centred data, and the size of its terms.

    With centred features the Gram row sums vanish, so the estimator reduces to
    tr(Kx Ky) - n/(n-2) kx.ky + sum(kx) sum(ky) / ((n-1)(n-2)), kx = diag(Kx).
    """
    cross = n / (n - 2) * (kx @ ky)
    totals = kx.sum() * ky.sum() / ((n - 1) * (n - 2))
    return s - cross + totals, s.abs() + cross.abs() + totals.abs()


def _cka_ratio(h_xy: float, h_xx: float, h_yy: float, scale_xx: float, scale_yy: float, what: str) -> float:
    """h_xy / sqrt(h_xx h_yy); a self-HSIC at round-off level means the measure is undefined."""
    for name, h, scale in (("x", h_xx, scale_xx), ("y", h_yy, scale_yy)):
        if not h > DEGENERATE_HSIC * scale:  # also catches NaN and a round-off negative value
            raise UndefinedSimilarityError(
                f"{what} is undefined: the HSIC of {name} with itself is zero "
                f"({name} is constant across examples, or all its examples are equally far apart)")
    value = h_xy / (math.sqrt(h_xx) * math.sqrt(h_yy))
    return float(min(1.0, max(-1.0, value)))


@MEASURES.register("linear_cka")
def linear_cka(x: ArrayLike, y: ArrayLike, debiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019) between x (n, ...) and y (n, ...), flattened per example.

    ``debiased=True`` uses the unbiased HSIC estimator (Song et al. 2012), which can be negative
    for dissimilar representations (the result may be slightly below 0, never NaN); needs n >= 4.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(100, 8))
    >>> round(linear_cka(x, 2 * x + 1), 6)
    1.0
    """
    tx, ty = _pair(x, y)
    n = tx.shape[0]
    if n < (4 if debiased else 2):
        raise SimilarityInputError(f"{'debiased ' if debiased else ''}linear CKA needs at least "
                                   f"{4 if debiased else 2} examples, got {n}")
    if n < min(tx[0].numel(), ty[0].numel()):
        # Fewer examples than features: the (n, n) Gram of each side, built one side at a time.
        grams = [_centred_gram(tx, "x"), _centred_gram(ty, "y")]
        row_sq = [g.diagonal().clone() for g in grams]
        flats = [g.reshape(-1) for g in grams]
        s_xy, s_xx, s_yy = torch.dot(*flats), torch.dot(flats[0], flats[0]), torch.dot(flats[1], flats[1])
    else:
        # No n x n matrix: Frobenius norms of the (d, d) products (symmetric ones block-wise).
        xc, yc = _centred_features(tx, "x"), _centred_features(ty, "y")
        s_xy, s_xx, s_yy = _cross_sq_norm(xc, yc), _gram_sq_norm(xc), _gram_sq_norm(yc)
        row_sq = [torch.linalg.vector_norm(c, dim=1).square() for c in (xc, yc)]
    # CKA is scale-invariant: divide by the squared Frobenius norms so the fourth powers stay O(1).
    totals = torch.stack([row_sq[0].sum(), row_sq[1].sum()]).tolist()
    for name, total in zip("xy", totals):
        if not total > 0:
            raise UndefinedSimilarityError(f"linear CKA is undefined: {name} is constant across examples")
    s_xy, s_xx, s_yy = s_xy / (totals[0] * totals[1]), s_xx / totals[0] ** 2, s_yy / totals[1] ** 2
    kx, ky = row_sq[0] / totals[0], row_sq[1] / totals[1]
    if not debiased:
        values = torch.stack([s_xy, s_xx, s_yy]).tolist()
        return _cka_ratio(values[0], values[1], values[2], values[1], values[2], "linear CKA")
    h_xy, _ = _unbiased_hsic_terms(s_xy, kx, ky, n)
    h_xx, scale_xx = _unbiased_hsic_terms(s_xx, kx, kx, n)
    h_yy, scale_yy = _unbiased_hsic_terms(s_yy, ky, ky, n)
    values = torch.stack([h_xy, h_xx, h_yy, scale_xx, scale_yy]).tolist()
    return _cka_ratio(*values, "debiased linear CKA")


@MEASURES.register("linear_cka_debiased")
def linear_cka_debiased(x: ArrayLike, y: ArrayLike) -> float:
    """``linear_cka(x, y, debiased=True)`` as a two-argument measure for the registry."""
    return linear_cka(x, y, debiased=True)


# --------------------------------------------------------------------------------------------
# RBF CKA


def _order_statistic(values: torch.Tensor, index: int) -> torch.Tensor:
    """The ``index``-th smallest entry (0-based) of a 1-D tensor."""
    return torch.kthvalue(values, index + 1).values


def _median_of_distances(d2: torch.Tensor) -> torch.Tensor:
    """Median of all n^2 entries of a symmetric distance matrix with zero diagonal (numpy's
    median: the mean of the two middle entries for an even count), from its upper triangle.

    Sorted, the full matrix is n zeros followed by every upper-triangle value twice, so the
    entry at position t >= n is the ((t - n) // 2)-th smallest upper value.
    """
    n = d2.shape[0]
    upper = torch.cat([d2[i, i + 1:] for i in range(n - 1)]) if n > 1 else d2.new_zeros(0)
    count = n * n
    middle = [(count - 1) // 2] if count % 2 else [count // 2 - 1, count // 2]
    ranks = [(t - n) // 2 for t in middle if t >= n]
    if not ranks:
        values = [d2.new_zeros(())] * len(middle)
    else:
        low = _order_statistic(upper, ranks[0])
        values = [low]
        if len(ranks) == 2 and ranks[1] != ranks[0]:  # the next order statistic, without a second selection
            ties = int((upper <= low).sum())
            values.append(low if ties > ranks[1] else upper.masked_fill(upper <= low, math.inf).min())
        elif len(ranks) == 2:
            values.append(low)
        values = [d2.new_zeros(())] * (len(middle) - len(values)) + values
    return sum(values) / len(values)


def _centred_rbf_gram(xc: torch.Tensor, sigma_frac: float, name: str) -> torch.Tensor:
    """H K H for K_ij = exp(-|x_i - x_j|^2 / (2 sigma^2)), sigma = sigma_frac * sqrt(median |x_i - x_j|^2)."""
    sq_norms = torch.linalg.vector_norm(xc, dim=1).square()
    d2 = _symmetric_gram(xc)
    d2.mul_(-2).add_(sq_norms[:, None]).add_(sq_norms[None, :]).clamp_(min=0).fill_diagonal_(0)
    median = float(_median_of_distances(d2))
    if not median > 0:
        raise UndefinedSimilarityError(
            f"RBF CKA is undefined: at least half of the pairwise distances of {name} are zero "
            f"(duplicate or constant examples), so the median bandwidth is zero")
    kernel = d2.mul_(-1.0 / (2 * sigma_frac**2 * median)).exp_()
    means = kernel.mean(0)  # symmetric, so row and column means agree
    return kernel.sub_(means[None, :]).sub_(means[:, None]).add_(means.mean())


@MEASURES.register("rbf_cka")
def rbf_cka(x: ArrayLike, y: ArrayLike, sigma_frac: float = 0.8) -> float:
    """RBF-kernel CKA (Kornblith et al. 2019); bandwidth sigma = sigma_frac * sqrt(median squared
    distance), the median over the full n x n matrix (diagonal included), each input its own.

    Needs the two n x n kernel matrices (8 n^2 bytes each).
    """
    if not (math.isfinite(sigma_frac) and sigma_frac > 0):
        raise SimilarityInputError(f"sigma_frac must be a positive number, got {sigma_frac}")
    tx, ty = _pair(x, y)
    if tx.shape[0] < 2:
        raise SimilarityInputError(f"RBF CKA needs at least 2 examples, got {tx.shape[0]}")
    kx = _centred_rbf_gram(_centred_features(tx, "x"), sigma_frac, "x")
    ky = _centred_rbf_gram(_centred_features(ty, "y"), sigma_frac, "y")
    flat_x, flat_y = kx.reshape(-1), ky.reshape(-1)
    h_xy, h_xx, h_yy = (torch.dot(flat_x, flat_y), torch.dot(flat_x, flat_x), torch.dot(flat_y, flat_y))
    values = torch.stack([h_xy, h_xx, h_yy]).tolist()
    return _cka_ratio(values[0], values[1], values[2], values[1], values[2], "RBF CKA")


# --------------------------------------------------------------------------------------------
# minibatch CKA (Nguyen, Raghu & Kornblith 2021)


class _BatchLayer:
    """One layer's activations on one minibatch, centred, with what the unbiased HSIC needs."""

    def __init__(self, t: torch.Tensor, name: str, buffer: torch.Tensor | None = None) -> None:
        self.x = _centred_features(t, name, out=buffer)
        self.n = self.x.shape[0]
        self.row_sq = torch.linalg.vector_norm(self.x, dim=1).square()
        self._gram: torch.Tensor | None = None

    def gram(self) -> torch.Tensor:
        if self._gram is None:
            self._gram = _symmetric_gram(self.x)
        return self._gram

    def unbiased_hsic(self, other: _BatchLayer) -> tuple[torch.Tensor, torch.Tensor]:
        """Unbiased HSIC of this layer and ``other`` on the batch, and the size of its terms
        (Gram form only when the batch is smaller than both feature counts)."""
        n = self.n
        if self is other:  # the Gram is shared with the cross terms whenever they use it
            if n < self.x.shape[1]:
                s = torch.dot(self.gram().reshape(-1), self.gram().reshape(-1))
            else:
                s = _gram_sq_norm(self.x)
        elif n < min(self.x.shape[1], other.x.shape[1]):
            s = torch.dot(self.gram().reshape(-1), other.gram().reshape(-1))
        else:
            s = _cross_sq_norm(self.x, other.x)
        h, scale = _unbiased_hsic_terms(s, self.row_sq, other.row_sq, n)
        return h / (n * (n - 3)), scale / (n * (n - 3))


def _named_layers(batch: ArrayLike | Sequence[ArrayLike] | Mapping[str, ArrayLike]) -> tuple[str, dict]:
    if isinstance(batch, Mapping):
        return "mapping", dict(batch)
    if isinstance(batch, (list, tuple)):
        return "sequence", dict(enumerate(batch))
    return "single", {0: batch}


class MinibatchCKA:
    """Streaming minibatch CKA: unbiased HSIC summed over minibatches, for many layer pairs at once.

    CKA = sum_b HSIC_1(x_b, y_b) / sqrt(sum_b HSIC_1(x_b, x_b) * sum_b HSIC_1(y_b, y_b)),
    so only one batch of activations is ever in memory. Each batch needs >= 4 examples.

    ``update(x_batch, y_batch)`` takes, for the two networks (or states), either one activation
    each, or a sequence / a mapping name -> activation of several layers (same layers every
    batch). ``compute()`` returns a float for single activations; for several layers the
    (len(x), len(y)) matrix of every layer pair as a numpy array, or, when ``pairs`` (keys or
    indices of x and y layers) was given, a dict {(x key, y key): CKA} over those pairs only.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(64, 10)), rng.normal(size=(64, 5))
    >>> metric = MinibatchCKA()
    >>> for i in range(0, 64, 16):
    ...     metric.update([a[i:i + 16], b[i:i + 16]], [a[i:i + 16]])
    >>> metric.compute().shape
    (2, 1)
    """

    def __init__(self, pairs: Sequence[tuple[object, object]] | None = None) -> None:
        self.pairs = None if pairs is None else [tuple(p) for p in pairs]
        self.reset()

    def reset(self) -> None:
        self._kinds: tuple[str, str] | None = None
        self._x_keys: list = []
        self._y_keys: list = []
        self._xy: dict[tuple, torch.Tensor] = {}
        self._xx: dict = {}
        self._yy: dict = {}
        self._buffers: dict = {}  # float64 copies of the last batch, reused by the next one
        self.batches = 0

    def update(self, x_batch, y_batch) -> None:
        """Add one minibatch (the same examples in x_batch and y_batch, >= 4 of them)."""
        (x_kind, xs), (y_kind, ys) = _named_layers(x_batch), _named_layers(y_batch)
        if self._kinds is None:
            wanted = self.pairs or [(a, b) for a in xs for b in ys]
            unknown = [p for p in wanted if p[0] not in xs or p[1] not in ys]
            if unknown:
                raise SimilarityInputError(f"MinibatchCKA pairs {unknown} name layers that the batch lacks; "
                                           f"x layers {list(xs)}, y layers {list(ys)}")
            self._kinds, self._x_keys, self._y_keys = (x_kind, y_kind), list(xs), list(ys)
            self._xy = {p: None for p in wanted}
            self._xx = {a: None for a, _ in wanted}
            self._yy = {b: None for _, b in wanted}
        elif (x_kind, y_kind) != self._kinds or list(xs) != self._x_keys or list(ys) != self._y_keys:
            raise SimilarityInputError("MinibatchCKA.update got different layers than in the first batch")
        first = next(iter(xs.values()))
        n = int(first.shape[0])
        if n < 4:
            raise SimilarityInputError(f"each minibatch needs at least 4 examples for the unbiased HSIC, got {n}")
        device = next((v.device for v in [*xs.values(), *ys.values()] if isinstance(v, torch.Tensor)), None)

        def layer(name: str, key, value) -> _BatchLayer:
            t = _as_tensor(value, f"{name}[{key!r}]")
            if device is not None:
                t = t.to(device)
            if t.ndim < 2 or t.shape[0] != n:
                raise SimilarityInputError(f"{name}[{key!r}] has shape {tuple(t.shape)}; expected ({n}, ...)")
            buffer = self._buffers.pop((name, key), None)
            if buffer is not None and buffer.shape != (n, t[0].numel()):
                buffer = None  # a different batch size: free it before a new one is allocated
            made = _BatchLayer(t, f"{name}[{key!r}]", buffer)
            self._buffers[(name, key)] = made.x
            return made

        x_layers = {k: layer("x_batch", k, xs[k]) for k in self._xx}
        y_layers = {k: layer("y_batch", k, ys[k]) for k in self._yy}
        for store, layers in ((self._xx, x_layers), (self._yy, y_layers)):
            for key, lay in layers.items():
                store[key] = _add(store[key], torch.stack(lay.unbiased_hsic(lay)))
        for a, b in self._xy:
            self._xy[(a, b)] = _add(self._xy[(a, b)], x_layers[a].unbiased_hsic(y_layers[b])[0])
        self.batches += 1

    def compute(self) -> float | np.ndarray | dict:
        if not self.batches:
            raise SimilarityInputError("MinibatchCKA.compute() before any update()")
        keys = list(self._xy)
        cross = torch.stack([self._xy[k] for k in keys]).tolist()
        selfs_x = {a: v.tolist() for a, v in self._xx.items()}  # [sum of HSIC, sum of term sizes]
        selfs_y = {b: v.tolist() for b, v in self._yy.items()}
        values = {}
        for key, h_xy in zip(keys, cross):
            (h_xx, scale_xx), (h_yy, scale_yy) = selfs_x[key[0]], selfs_y[key[1]]
            what = "minibatch CKA" if self._kinds == ("single", "single") else \
                f"minibatch CKA of x layer {key[0]!r} and y layer {key[1]!r}"
            values[key] = _cka_ratio(h_xy, h_xx, h_yy, scale_xx, scale_yy, what)
        if self._kinds == ("single", "single"):
            return values[(0, 0)]
        if self.pairs is not None:
            return values
        out = np.empty((len(self._x_keys), len(self._y_keys)))
        for i, a in enumerate(self._x_keys):
            for j, b in enumerate(self._y_keys):
                out[i, j] = values[(a, b)]
        return out


def _add(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total + value


def minibatch_cka(x: ArrayLike, y: ArrayLike, batch_size: int) -> float:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021) over contiguous minibatches in the given order.

    With ``batch_size >= n`` it equals ``linear_cka(x, y, debiased=True)``. The last batch may be
    shorter but needs at least 4 examples.
    """
    if int(batch_size) != batch_size or batch_size < 4:
        raise SimilarityInputError(f"batch_size must be an integer >= 4, got {batch_size}")
    batch_size = int(batch_size)
    tx, ty = _pair(x, y)
    n = tx.shape[0]
    if 0 < n % batch_size < 4:
        raise SimilarityInputError(
            f"the last minibatch would hold {n % batch_size} of {n} examples; the unbiased HSIC needs "
            f"at least 4: choose another batch_size or drop those examples")
    metric = MinibatchCKA()
    for i0 in range(0, n, batch_size):
        metric.update(tx[i0:i0 + batch_size], ty[i0:i0 + batch_size])
    return float(metric.compute())


# --------------------------------------------------------------------------------------------
# CCA family: one streamed pass for column statistics, one for the centred Gram of [X Y] (or, where
# the Gram would not keep GRAM_ACCURACY, a streamed QR of [X Y]), then small dense algebra


class _NeuronRows:
    """A side as an (N, C) matrix, channels = neurons, rows = (example, h, w), read in chunks."""

    def __init__(self, t: torch.Tensor, name: str) -> None:
        if t.ndim == 2:
            self.per_example = 1
        elif t.ndim == 4:
            self.per_example = t.shape[2] * t.shape[3]
        else:
            raise SimilarityInputError(
                f"{name} has shape {tuple(t.shape)}; the CCA family takes (n, features) or (n, C, H, W)")
        self.t, self.name = t, name
        self.n_examples, self.n_cols = t.shape[0], t.shape[1]
        self.n_rows = self.n_examples * self.per_example
        self.roundoff = _unit_roundoff(t.dtype)

    def read(self, i0: int, i1: int, out: torch.Tensor) -> torch.Tensor:
        """Rows of examples i0:i1 into ``out`` ((i1 - i0) * per_example, C), converted to float64."""
        part = self.t[i0:i1]
        if part.ndim == 4:
            out.view(i1 - i0, part.shape[2], part.shape[3], part.shape[1]).copy_(part.permute(0, 2, 3, 1))
        else:
            out.copy_(part)
        return out


def _column_stats(side: _NeuronRows, chunk_examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Column means (float64) and a mask of the columns that are not constant."""
    device = side.t.device
    total = torch.zeros(side.n_cols, dtype=F64, device=device)
    high = torch.full((side.n_cols,), -math.inf, dtype=F64, device=device)
    low = torch.full((side.n_cols,), math.inf, dtype=F64, device=device)
    buf = torch.empty((chunk_examples * side.per_example, side.n_cols), dtype=F64, device=device)
    for i0 in range(0, side.n_examples, chunk_examples):
        i1 = min(side.n_examples, i0 + chunk_examples)
        rows = side.read(i0, i1, buf[:(i1 - i0) * side.per_example])
        total += rows.sum(0)
        torch.maximum(high, rows.amax(0), out=high)
        torch.minimum(low, rows.amin(0), out=low)
    if not bool(torch.isfinite(total).all()):
        raise SimilarityInputError(f"{side.name} contains NaN or infinite values")
    return total / side.n_rows, high > low


class _Sides:
    """Both sides, checked: their non-constant columns (neurons), those columns' means, and a
    reader of centred row chunks of ``[X Y]`` restricted to them."""

    def __init__(self, x: ArrayLike, y: ArrayLike, what: str, plain: bool) -> None:
        """``plain``: the measure is plain CCA on all directions, undefined when a side has as many
        non-constant neurons as the N - 1 dimensions of centred data."""
        tx, ty = _pair(x, y)
        sx, sy = _NeuronRows(tx, "x"), _NeuronRows(ty, "y")
        if sx.per_example != sy.per_example:
            raise SimilarityInputError(
                f"{what} pairs data points (example, h, w): x has {sx.per_example} and y {sy.per_example} "
                f"positions per example ({tuple(tx.shape)} vs {tuple(ty.shape)}); pool or interpolate both "
                f"to the same spatial size first (e.g. torch.nn.functional.adaptive_avg_pool2d)")
        self.sx, self.sy, self.n_rows, self.device = sx, sy, sx.n_rows, tx.device
        stats_chunk = self.chunk_examples(max(GRAM_CHUNK_ROWS, GRAM_CHUNK_ELEMENTS // (sx.n_cols + sy.n_cols)))
        (mean_x, keep_x), (mean_y, keep_y) = _column_stats(sx, stats_chunk), _column_stats(sy, stats_chunk)
        self.kx, self.ky = int(keep_x.sum()), int(keep_y.sum())
        for name, k in (("x", self.kx), ("y", self.ky)):
            if k == 0:
                raise UndefinedSimilarityError(f"{what} is undefined: every neuron of {name} is constant")
            if plain and k >= self.n_rows - 1:
                raise UndefinedSimilarityError(
                    f"{what} is undefined here: {name} has {k} non-constant neurons but only {self.n_rows} data "
                    f"points ({self.n_rows - 1} dimensions once centred), so every canonical correlation would be "
                    f"1 by construction. Pool the activations (e.g. global average pooling), subsample channels, "
                    f"use more examples, or use svcca, which reduces each side first")
        self.k = self.kx + self.ky
        self._columns = []  # per side: (reader, indices of the kept columns or None for all, their means, slice)
        for side, keep, mean, cols in ((sx, keep_x, mean_x, slice(0, self.kx)),
                                       (sy, keep_y, mean_y, slice(self.kx, self.k))):
            every = int(keep.sum()) == side.n_cols
            self._columns.append((side, None if every else keep.nonzero().squeeze(1), mean[keep], cols))
        self._scratch: dict[str, torch.Tensor] = {}

    def chunk_examples(self, rows: int) -> int:
        """Examples per chunk for chunks of about ``rows`` data points."""
        return max(1, min(self.sx.n_examples, rows // self.sx.per_example))

    def fill(self, i0: int, i1: int, block: torch.Tensor) -> torch.Tensor:
        """The centred kept columns of [X Y] at examples i0:i1 into ``block`` (rows, kx + ky)."""
        m = (i1 - i0) * self.sx.per_example
        for side, idx, mean, cols in self._columns:
            if idx is None:
                side.read(i0, i1, block[:, cols])
            else:
                scratch = self._scratch.get(side.name)
                if scratch is None or scratch.shape[0] < m:
                    scratch = self._scratch[side.name] = torch.empty(
                        (m, side.n_cols), dtype=F64, device=self.device)
                block[:, cols].copy_(side.read(i0, i1, scratch[:m]).index_select(1, idx))
            block[:, cols].sub_(mean)
        return block


@dataclass
class _Factor:
    """[Xc Yc] = Q R for the centred non-constant columns; R is (r, kx + ky) upper trapezoidal."""

    r: torch.Tensor
    kx: int  # non-constant neurons of x (the first kx columns of r)
    ky: int
    n_rows: int
    roundoff_x: float
    roundoff_y: float

    @property
    def a(self) -> torch.Tensor:
        return self.r[:, :self.kx]

    @property
    def b(self) -> torch.Tensor:
        return self.r[:, self.kx:]


def _factorise(sides: _Sides) -> _Factor:
    """QR-factorise the centred [X Y] chunk by chunk (TSQR), keeping only R."""
    sx = sides.sx
    chunk_examples = sides.chunk_examples(max(QR_CHUNK_ROWS, 4 * (sx.n_cols + sides.sy.n_cols)))
    k = sides.k
    rows_per_chunk = chunk_examples * sx.per_example
    carried = min(k, sides.n_rows) if chunk_examples < sx.n_examples else 0  # room for R of earlier chunks
    buf = torch.empty((carried + rows_per_chunk, k), dtype=F64, device=sides.device)
    r: torch.Tensor | None = None
    for i0 in range(0, sx.n_examples, chunk_examples):
        i1 = min(sx.n_examples, i0 + chunk_examples)
        top = 0 if r is None else r.shape[0]
        m = (i1 - i0) * sx.per_example
        sides.fill(i0, i1, buf[top:top + m])
        if r is not None:
            buf[:top] = r
        r = torch.linalg.qr(buf[:top + m], mode="r").R
    return _Factor(r, sides.kx, sides.ky, sides.n_rows, sx.roundoff, sides.sy.roundoff)


def _centred_cross_products(sides: _Sides) -> torch.Tensor:
    """[Xc Yc]^T [Xc Yc] (k, k) of the kept columns, summed over row chunks; each chunk adds its
    upper triangle in column panels (half the flops of a full product), mirrored at the end."""
    k = sides.k
    # few columns (conv channels over many positions): long chunks, so per-chunk overhead stays small
    chunk_examples = sides.chunk_examples(max(GRAM_CHUNK_ROWS, GRAM_CHUNK_ELEMENTS // k))
    buf = torch.empty((chunk_examples * sides.sx.per_example, k), dtype=F64, device=sides.device)
    gram = torch.zeros((k, k), dtype=F64, device=sides.device)
    for i0 in range(0, sides.sx.n_examples, chunk_examples):
        i1 = min(sides.sx.n_examples, i0 + chunk_examples)
        block = sides.fill(i0, i1, buf[:(i1 - i0) * sides.sx.per_example])
        for c0 in range(0, k, GRAM_PANEL):
            gram[c0:c0 + GRAM_PANEL, c0:].addmm_(block[:, c0:c0 + GRAM_PANEL].T, block[:, c0:])
    for c0 in range(0, k, GRAM_PANEL):
        c1 = min(k, c0 + GRAM_PANEL)
        gram[c1:, c0:c1] = gram[c0:c1, c1:].T
    return gram


# ---- dense algebra on the small matrices
# On the CPU the symmetric eigensolver and the SVD go through numpy: torch's bundled LAPACK (MKL)
# ran them 2-5x slower than numpy's OpenBLAS on the AMD CPU benchmarks/similarity.py was measured
# on (2048 x 2048 eigh: 5.0 vs 1.2 CPU s; eigenvalues only 5.0 vs 0.4), while torch is the faster
# one for QR, Cholesky and triangular solves, which stay in torch. Each numpy call runs on one
# BLAS thread: threaded, the same eigh took 3.2 CPU s and longer in wall time too (its
# tridiagonal reduction is matrix-vector work, which threads only slow down); independent
# decompositions (both sides of SVCCA, PWCCA's two) run side by side instead, one per thread the
# process may use (torch.get_num_threads(), which jobs set to their share).


def _numpy_eigh_descending(m: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = np.linalg.eigh(m)
    return torch.from_numpy(values[::-1].copy()), torch.from_numpy(np.ascontiguousarray(vectors[:, ::-1]))


def _eigh_descending(*matrices: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Eigenvalues (descending) and eigenvectors of each symmetric matrix, concurrently on the CPU."""
    if matrices[0].device.type != "cpu":
        return [(values.flip(0), vectors.flip(1)) for values, vectors in map(torch.linalg.eigh, matrices)]
    arrays = [m.numpy() for m in matrices]
    workers = min(len(arrays), torch.get_num_threads())
    with threadpool_limits(1, user_api="blas"):
        if workers < 2:
            return [_numpy_eigh_descending(a) for a in arrays]
        with ThreadPoolExecutor(workers) as pool:  # LAPACK releases the GIL
            return list(pool.map(_numpy_eigh_descending, arrays))


def _svdvals(m: torch.Tensor) -> torch.Tensor:
    if m.device.type == "cpu":
        with threadpool_limits(1, user_api="blas"):
            return torch.from_numpy(np.linalg.svd(m.numpy(), compute_uv=False))
    return torch.linalg.svdvals(m)


def _psd_sqrt(values: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix from its eigendecomposition."""
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def _condition_estimate(r: torch.Tensor, c: torch.Tensor) -> float:
    """LAPACK's 1-norm condition estimate of ``c = r^T r`` from its Cholesky factor (O(d^2))."""
    from scipy.linalg import lapack

    rcond, info = lapack.dpocon(r.cpu().numpy(), float(torch.linalg.matrix_norm(c, ord=1)))
    return math.inf if info != 0 or not rcond > 0 else 1.0 / rcond


def _rank_tolerance(roundoff: float, n_rows: int, n_cols: int) -> float:
    """Relative singular value below which a direction is not defined by the data."""
    return roundoff + max(n_rows, n_cols) * EPS64


def _gram_keeps_accuracy(cond: float, tol: float) -> bool:
    """Whether directions with condition ``cond`` (of the covariance, i.e. squared singular-value
    ratio) stay within GRAM_ACCURACY through the Gram route, and clear the rank tolerance ``tol``
    (a relative singular value) by RANK_MARGIN, so the QR route would not have dropped any."""
    return EPS64 * cond <= GRAM_ACCURACY and cond * (RANK_MARGIN * tol) ** 2 < 1


@dataclass
class _Bases:
    """Orthonormal bases Ux, Uy of each side's directions (all, or the kept ones of SVCCA), given
    through the cross matrix ``Ux^T Uy`` (its singular values are the canonical correlations) and
    the loadings ``U^T Z`` of the side's raw centred neurons Z (r, k), all float64."""

    cross: torch.Tensor
    load_x: torch.Tensor | None
    load_y: torch.Tensor | None
    n_rows: int
    kx: int  # kept (non-constant) neurons of each side
    ky: int


def _use_gram(sides: _Sides) -> bool:
    # With fewer data points than columns the QR's R is the smaller matrix, and cheaper to get.
    return sides.n_rows >= sides.k and GRAM_ACCURACY > 0


def _plain_from_gram(sides: _Sides, gram: torch.Tensor) -> _Bases | None:
    """Plain CCA bases from the Gram: equilibrated (unit diagonal, as CCA ignores column scale),
    Ux = Xc D^-1 Rx^-1 with the Cholesky factor Rx; None when a side's condition estimate says the
    result would not keep GRAM_ACCURACY or a direction may be undefined (the caller then uses QR)."""
    kx, k = sides.kx, sides.k
    norms = gram.diagonal().sqrt()
    gram = gram.div_(norms[:, None]).div_(norms[None, :])  # in place: the caller's copy is not needed again
    factors = []
    for cols, side, count in ((slice(0, kx), sides.sx, kx), (slice(kx, k), sides.sy, sides.ky)):
        block = gram[cols, cols]
        r, info = torch.linalg.cholesky_ex(block, upper=True)
        if int(info) != 0 or not _gram_keeps_accuracy(_condition_estimate(r, block),
                                                      _rank_tolerance(side.roundoff, sides.n_rows, count)):
            return None
        factors.append(r)
    rx, ry = factors
    cross = torch.linalg.solve_triangular(rx.mT, gram[:kx, kx:], upper=False)
    cross = torch.linalg.solve_triangular(ry, cross, upper=True, left=False)
    # Ux^T Xc = Rx^-T (D^-1 Xc^T Xc) = Rx D: the loadings of the unscaled neurons
    return _Bases(cross, rx * norms[:kx], ry * norms[kx:], sides.n_rows, kx, sides.ky)


def _reduced_from_gram(sides: _Sides, gram: torch.Tensor, keep_variance: float) -> _Bases | None:
    """SVCCA bases from each side's covariance eigenvectors: Ux = Xc V Lambda^-1/2 over the fewest top
    directions holding ``keep_variance`` of the variance; None when the smallest kept eigenvalue is
    too close to round-off for GRAM_ACCURACY or the rank tolerance (the caller then uses QR)."""
    kx, k = sides.kx, sides.k
    bases = []
    parts = ((slice(0, kx), sides.sx, kx), (slice(kx, k), sides.sy, sides.ky))
    eigen = _eigh_descending(*(gram[cols, cols] for cols, _, _ in parts))
    for (cols, side, count), (values, vectors) in zip(parts, eigen):
        values = values.clamp(min=0)
        energy = values.cumsum(0)
        kept = min(count, int((energy < keep_variance * energy[-1] * (1 - 1e-12)).sum()) + 1)
        top, smallest = values[[0, kept - 1]].tolist()
        if not (top > 0 and _gram_keeps_accuracy(top / smallest if smallest > 0 else math.inf,
                                                  _rank_tolerance(side.roundoff, sides.n_rows, count))):
            return None
        bases.append(vectors[:, :kept] / values[:kept].sqrt())
    wx, wy = bases
    return _Bases(wx.T @ gram[:kx, kx:] @ wy, None, None, sides.n_rows, kx, sides.ky)


def _clearly_full_rank(t: torch.Tensor, rtol: float) -> bool:
    """True if square upper-triangular ``t`` certainly has s_min > rtol * s_max.

    s_min >= 1 / ||t^-1||_F and s_max <= ||t||_F; a False only means "check with an SVD".
    """
    if t.shape[0] != t.shape[1] or t.shape[0] == 0:
        return False
    eye = torch.eye(t.shape[0], dtype=t.dtype, device=t.device)
    inverse_norm = torch.linalg.vector_norm(torch.linalg.solve_triangular(t, eye, upper=True))
    bound = torch.stack([inverse_norm, torch.linalg.vector_norm(t)]).tolist()
    return math.isfinite(bound[0]) and 1.0 / bound[0] > rtol * bound[1]


def _svd_basis(m: torch.Tensor, rtol: float, keep_variance: float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis (r, k) of the defined (or top ``keep_variance``) directions of ``m``
    and the loadings basis^T m (k, d)."""
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    values = s.tolist()
    rank = sum(v > rtol * values[0] for v in values) if values and values[0] > 0 else 0
    k = rank
    if keep_variance is not None and rank:
        energy = s[:rank].square().cumsum(0)
        k = min(rank, int((energy < keep_variance * energy[-1] * (1 - 1e-12)).sum()) + 1)
    return u[:, :k], s[:k, None] * vh[:k]


def _bases_from_qr(f: _Factor, keep_variance: float | None = None) -> _Bases:
    """Bases from R of [Xc Yc] = Q R. Plain CCA equilibrates the columns first (CCA ignores column
    scale); fast path for full-rank sides: Ux is the first kx coordinates (R11 is triangular) and
    Uy = b Rb^-1 with b = Qb Rb. Otherwise an SVD of each side keeps its defined (or top
    ``keep_variance``) directions."""
    a, b = f.a, f.b
    norm_a = norm_b = None
    if keep_variance is None:
        norm_a, norm_b = torch.linalg.vector_norm(a, dim=0), torch.linalg.vector_norm(b, dim=0)
        a, b = a / norm_a, b / norm_b
    tol_x = _rank_tolerance(f.roundoff_x, f.n_rows, f.kx)
    tol_y = _rank_tolerance(f.roundoff_y, f.n_rows, f.ky)
    cross = None
    if keep_variance is None and a.shape[0] >= f.kx and _clearly_full_rank(a[:f.kx], tol_x):
        rb = torch.linalg.qr(b, mode="r").R
        if _clearly_full_rank(rb, tol_y):
            cross = torch.linalg.solve_triangular(rb, b[:f.kx], upper=True, left=False)
            load_a, load_b = a[:f.kx], rb
    if cross is None:
        top = min(a.shape[0], f.kx)  # a is upper trapezoidal: its rows below kx are zero
        ua, load_a = _svd_basis(a[:top], tol_x, keep_variance)
        ub, load_b = _svd_basis(b, tol_y, keep_variance)
        cross = ua.T @ ub[:top]
    if keep_variance is None:
        load_a, load_b = load_a * norm_a, load_b * norm_b
    return _Bases(cross, load_a, load_b, f.n_rows, f.kx, f.ky)


def _plain_bases(x: ArrayLike, y: ArrayLike, what: str) -> _Bases:
    sides = _Sides(x, y, what, plain=True)
    if _use_gram(sides):
        bases = _plain_from_gram(sides, _centred_cross_products(sides))
        if bases is not None:
            return bases
    return _bases_from_qr(_factorise(sides))


def _warn_if_inflated(ka: int, kb: int, n_rows: int, what: str) -> None:
    dof = max(1, n_rows - 1)
    gx, gy = ka / dof, kb / dof
    edge = 1.0 if gx + gy >= 1 else math.sqrt(gx * (1 - gy)) + math.sqrt(gy * (1 - gx))
    if edge >= INFLATION_WARNING_LEVEL:
        warnings.warn(
            f"{what}: {ka} and {kb} directions for only {n_rows} data points; independent data would "
            f"already reach a top canonical correlation near {min(edge, 1.0):.2f} (Wachter limit), so the "
            f"top correlations are inflated. Use more examples, pool, or keep fewer directions",
            InflatedCorrelationWarning, stacklevel=3)


def _correlations(cross: torch.Tensor) -> torch.Tensor:
    return _svdvals(cross).clamp_(0.0, 1.0)


def cca(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Canonical correlations between x and y, descending, as a float64 array of length
    min(kx, ky) (kx, ky: defined directions of each side). Conv maps count as (n*H*W, C).

    Raises ``UndefinedSimilarityError`` if a side has >= N - 1 non-constant neurons for N data points.
    """
    bases = _plain_bases(x, y, "CCA")
    _warn_if_inflated(bases.cross.shape[0], bases.cross.shape[1], bases.n_rows, "CCA")
    return _correlations(bases.cross).cpu().numpy()


@MEASURES.register("cca_mean")
def cca_mean(x: ArrayLike, y: ArrayLike) -> float:
    """Mean of all canonical correlations (see ``cca``)."""
    return float(np.mean(cca(x, y)))


@MEASURES.register("svcca")
def svcca(x: ArrayLike, y: ArrayLike, keep_variance: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): centre, keep each side's fewest top singular directions whose
    squared singular values reach ``keep_variance`` of the total, then the mean canonical
    correlation of the reduced sides. Works when a side has more neurons than data points.
    """
    if not 0 < keep_variance <= 1:
        raise SimilarityInputError(f"keep_variance must be in (0, 1], got {keep_variance}")
    sides = _Sides(x, y, "SVCCA", plain=False)
    bases = _reduced_from_gram(sides, _centred_cross_products(sides), keep_variance) if _use_gram(sides) else None
    if bases is None:
        bases = _bases_from_qr(_factorise(sides), keep_variance)
    _warn_if_inflated(bases.cross.shape[0], bases.cross.shape[1], bases.n_rows, "SVCCA")
    return float(_correlations(bases.cross).mean())


PWCCA_VARIANTS = ("google", "paper")


@MEASURES.register("pwcca")
def pwcca(x: ArrayLike, y: ArrayLike, variant: str = "google") -> float:
    """Projection-weighted CCA (Morcos et al. 2018): sum_i a_i rho_i / sum_i a_i over the canonical
    correlations rho_i, with a_i = sum_j |<v_i, z_j>| over the centred neurons z_j of the side with
    fewer non-constant neurons (x on a tie). The variants differ in the unit vectors v_i:

    * ``"google"`` (default): as google/svcca's ``pwcca.compute_pwcca``, which Morcos et al. and
      the studies that followed ran: the orthonormalised (QR, in order of descending rho) vectors
      ``Z Sigma^1/2 w_i``, w_i the canonical weights (canonical variate ``Z w_i``) and Sigma the
      side's covariance: that code orthonormalises ``coef_x (acts - mean)``, the left singular
      vectors of the whitened cross-covariance applied to the activations without
      Sigma^-1/2. Equal to ``compute_pwcca(Xc.T, Yc.T, epsilon=1e-10)[0]`` on column-centred
      inputs, with its PR #9 fix (y's own activations when y is the side), up to that code's
      epsilon and the neurons it drops as near-constant (variance below 1e-10 of the largest;
      here only constant ones are dropped).
    * ``"paper"``: the paper's wording, v_i = the unit canonical variates ``Z w_i / |Z w_i|``.
      Differs from ``"google"`` by up to ~0.05 on ordinary inputs: the two agree only where the
      canonical variates are already orthogonal in the order the QR visits them.

    Invariant to permutations, sign flips and scaling of the weighting side's neurons and to
    invertible linear maps of the other side; not to general maps of the weighting side.
    Raises like ``cca``.
    """
    if variant not in PWCCA_VARIANTS:
        raise SimilarityInputError(f"pwcca variant {variant!r}; allowed: {', '.join(PWCCA_VARIANTS)}")
    bases = _plain_bases(x, y, "PWCCA")
    cross = bases.cross
    _warn_if_inflated(cross.shape[0], cross.shape[1], bases.n_rows, "PWCCA")
    on_x = bases.kx <= bases.ky
    side, loadings = (cross, bases.load_x) if on_x else (cross.T, bases.load_y)
    # Left singular vectors p_i of the side's cross matrix, descending, from the eigenvectors of
    # side side^T (a fraction of an SVD's cost); rho_i = |side^T p_i| is accurate to round-off
    # (a Rayleigh quotient), and the side's directions beyond min(shape) get rho 0.
    if variant == "paper":
        [(_, p)] = _eigh_descending(side @ side.T)
    else:
        [(_, p), root] = _eigh_descending(side @ side.T, loadings @ loadings.T)
    rho = torch.linalg.vector_norm(side.T @ p, dim=0).clamp_(0.0, 1.0)
    if variant == "paper":
        count = min(cross.shape)
        p, rho = p[:, :count], rho[:count]
        directions = p  # canonical variate i is U p_i, so <U p_i, z_j> = (p_i^T loadings)_j
    else:
        # google's vectors Z Sigma^1/2 w_i are U (L L^T)^1/2 p_i in the basis U, L = U^T Z: their
        # QR is U times the QR of (L L^T)^1/2 P
        directions = torch.linalg.qr(_psd_sqrt(*root) @ p).Q
    weights = (directions.T @ loadings).abs().sum(1)
    return float((weights * rho).sum() / weights.sum())
