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
    * The CCA family never forms or inverts a covariance. It streams the centred activations
      through a Householder QR, ``[X Y] = Q R``, in row chunks; all angles between the two column
      spaces are then read off the small ``R`` (QR / SVD only). Columns are normalised to unit
      length (CCA is invariant to that), constant columns (max == min over the data points) are
      dropped, and directions whose singular value is below ``s_max * (u + max(N, d) * eps64)``
      (``u`` = unit round-off of the input dtype, ``eps64`` of float64) are undefined and left
      out, so duplicate, constant, badly scaled or exactly low-rank columns give the answer over
      the directions that are defined instead of a crash, a NaN or a silently dropped column.

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
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from medtransfer.errors import MedtransferError
from medtransfer.registry import Registry

ArrayLike = Union[np.ndarray, torch.Tensor]

F64 = torch.float64
EPS64 = float(torch.finfo(F64).eps)
GRAM_BLOCK = 256  # rows/columns per block of a symmetric Gram product
SYMMETRIC_PANEL = 128  # rows per panel of a full symmetric Gram (fastest measured on this CPU)
QR_CHUNK_ROWS = 4096  # least rows per chunk of the streaming QR (more when the matrix is wide)
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
# CCA family: stream the centred [X Y] through a QR, then work on the small R


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


def _factorise(x: ArrayLike, y: ArrayLike, what: str, plain: bool) -> _Factor:
    """Centre, drop constant columns and QR-factorise [X Y] chunk by chunk (TSQR), keeping only R.

    ``plain``: the measure is plain CCA on all directions, undefined when a side has as many
    non-constant neurons as the N - 1 dimensions of centred data.
    """
    tx, ty = _pair(x, y)
    sx, sy = _NeuronRows(tx, "x"), _NeuronRows(ty, "y")
    if sx.per_example != sy.per_example:
        raise SimilarityInputError(
            f"{what} pairs data points (example, h, w): x has {sx.per_example} and y {sy.per_example} "
            f"positions per example ({tuple(tx.shape)} vs {tuple(ty.shape)}); pool or interpolate both "
            f"to the same spatial size first (e.g. torch.nn.functional.adaptive_avg_pool2d)")
    n_rows = sx.n_rows
    width = sx.n_cols + sy.n_cols
    chunk_rows = max(QR_CHUNK_ROWS, 4 * width)
    chunk_examples = max(1, min(sx.n_examples, chunk_rows // sx.per_example))
    (mean_x, keep_x), (mean_y, keep_y) = _column_stats(sx, chunk_examples), _column_stats(sy, chunk_examples)
    kx, ky = int(keep_x.sum()), int(keep_y.sum())
    for name, k in (("x", kx), ("y", ky)):
        if k == 0:
            raise UndefinedSimilarityError(f"{what} is undefined: every neuron of {name} is constant")
        if plain and k >= n_rows - 1:
            raise UndefinedSimilarityError(
                f"{what} is undefined here: {name} has {k} non-constant neurons but only {n_rows} data points "
                f"({n_rows - 1} dimensions once centred), so every canonical correlation would be 1 by "
                f"construction. Pool the activations (e.g. global average pooling), subsample channels, "
                f"use more examples, or use svcca, which reduces each side first")
    all_x, all_y = kx == sx.n_cols, ky == sy.n_cols
    mean_x, mean_y = mean_x[keep_x], mean_y[keep_y]
    idx_x, idx_y = keep_x.nonzero().squeeze(1), keep_y.nonzero().squeeze(1)
    k = kx + ky
    device = tx.device
    rows_per_chunk = chunk_examples * sx.per_example
    carried = min(k, n_rows) if chunk_examples < sx.n_examples else 0  # room for R of earlier chunks
    buf = torch.empty((carried + rows_per_chunk, k), dtype=F64, device=device)
    scratch_x = None if all_x else torch.empty((rows_per_chunk, sx.n_cols), dtype=F64, device=device)
    scratch_y = None if all_y else torch.empty((rows_per_chunk, sy.n_cols), dtype=F64, device=device)
    r: torch.Tensor | None = None
    for i0 in range(0, sx.n_examples, chunk_examples):
        i1 = min(sx.n_examples, i0 + chunk_examples)
        top = 0 if r is None else r.shape[0]
        m = (i1 - i0) * sx.per_example
        block = buf[top:top + m]
        for side, scratch, idx, mean, cols in ((sx, scratch_x, idx_x, mean_x, slice(0, kx)),
                                               (sy, scratch_y, idx_y, mean_y, slice(kx, k))):
            if scratch is None:
                side.read(i0, i1, block[:, cols])
            else:
                block[:, cols].copy_(side.read(i0, i1, scratch[:m]).index_select(1, idx))
            block[:, cols].sub_(mean)
        if r is not None:
            buf[:top] = r
        r = torch.linalg.qr(buf[:top + m], mode="r").R
    return _Factor(r, kx, ky, n_rows, sx.roundoff, sy.roundoff)


def _rank_tolerance(roundoff: float, n_rows: int, n_cols: int) -> float:
    """Relative singular value below which a direction is not defined by the data."""
    return roundoff + max(n_rows, n_cols) * EPS64


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


def _bases(f: _Factor, a: torch.Tensor, b: torch.Tensor, keep_variance: float | None = None):
    """Cross matrix M = Ua^T Ub of the two sides' orthonormal bases, and their loadings U^T side.

    The canonical correlations are the singular values of M. Fast path for full-rank sides (plain
    CCA): Ua is the first kx coordinates (R11 is triangular) and Ub = b Rb^-1 with b = Qb Rb.
    """
    tol_x = _rank_tolerance(f.roundoff_x, f.n_rows, f.kx)
    tol_y = _rank_tolerance(f.roundoff_y, f.n_rows, f.ky)
    if keep_variance is None and a.shape[0] >= f.kx and _clearly_full_rank(a[:f.kx], tol_x):
        rb = torch.linalg.qr(b, mode="r").R
        if _clearly_full_rank(rb, tol_y):
            cross = torch.linalg.solve_triangular(rb, b[:f.kx], upper=True, left=False)
            return cross, a[:f.kx], rb
    top = min(a.shape[0], f.kx)  # a is upper trapezoidal: its rows below kx are zero
    ua, load_a = _svd_basis(a[:top], tol_x, keep_variance)
    ub, load_b = _svd_basis(b, tol_y, keep_variance)
    return ua.T @ ub[:top], load_a, load_b


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
    return torch.linalg.svdvals(cross).clamp_(0.0, 1.0)


def _equilibrated(f: _Factor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit-length columns of a and b (CCA ignores column scale) and the norms divided out."""
    norm_a = torch.linalg.vector_norm(f.a, dim=0)
    norm_b = torch.linalg.vector_norm(f.b, dim=0)
    return f.a / norm_a, f.b / norm_b, norm_a, norm_b


def cca(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Canonical correlations between x and y, descending, as a float64 array of length
    min(kx, ky) (kx, ky: defined directions of each side). Conv maps count as (n*H*W, C).

    Raises ``UndefinedSimilarityError`` if a side has >= N - 1 non-constant neurons for N data points.
    """
    f = _factorise(x, y, "CCA", plain=True)
    a, b, _, _ = _equilibrated(f)
    cross, _, _ = _bases(f, a, b)
    _warn_if_inflated(cross.shape[0], cross.shape[1], f.n_rows, "CCA")
    return _correlations(cross).cpu().numpy()


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
    f = _factorise(x, y, "SVCCA", plain=False)
    cross, _, _ = _bases(f, f.a, f.b, keep_variance=keep_variance)
    _warn_if_inflated(cross.shape[0], cross.shape[1], f.n_rows, "SVCCA")
    return float(_correlations(cross).mean())


@MEASURES.register("pwcca")
def pwcca(x: ArrayLike, y: ArrayLike) -> float:
    """Projection-weighted CCA (Morcos et al. 2018): sum_i w_i rho_i with w_i proportional to
    sum_j |<h_i, z_j>|, h_i the unit canonical variates and z_j the centred neurons of the side
    with fewer non-constant neurons (x on a tie). Raises like ``cca``.
    """
    f = _factorise(x, y, "PWCCA", plain=True)
    a, b, norm_a, norm_b = _equilibrated(f)
    cross, load_a, load_b = _bases(f, a, b)
    _warn_if_inflated(cross.shape[0], cross.shape[1], f.n_rows, "PWCCA")
    p, rho, qh = torch.linalg.svd(cross, full_matrices=False)
    rho = rho.clamp(0.0, 1.0)
    m = rho.shape[0]
    if f.kx <= f.ky:  # canonical variate i of x is Ua p_i; its inner products with x's neurons:
        projections = p[:, :m].T @ load_a * norm_a
    else:
        projections = qh[:m] @ load_b * norm_b
    weights = projections.abs().sum(1)
    return float((weights * rho).sum() / weights.sum())
