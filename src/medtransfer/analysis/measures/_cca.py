"""The shared core of the CCA family (imports torch): column statistics, the centred Gram of
``[X Y]`` or its streamed QR, and the bases and correlations every CCA measure reads.

The measures in :mod:`.cca` import this when they run; the numerics are described in the
package's docstring (:mod:`medtransfer.analysis.measures`).
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from medtransfer.analysis.measures._inputs import EPS64, F64, ArrayLike, _pair, _unit_roundoff
from medtransfer.analysis.measures.errors import (InflatedCorrelationWarning, SimilarityInputError,
                                                  UndefinedSimilarityError)

QR_CHUNK_ROWS = 4096  # least rows per chunk of the streaming QR (more when the matrix is wide)
GRAM_CHUNK_ELEMENTS = 1 << 21  # float64 values per chunk of the streamed Gram of [X Y] (16 MiB) ...
GRAM_CHUNK_ROWS = 2048  # ... but at least this many rows (measured as fast as one whole product)
GRAM_PANEL = 512  # columns per panel of the Gram's upper triangle
GRAM_ACCURACY = 1e-8  # the Gram route is taken when eps64 * condition estimate stays below this
RANK_MARGIN = 4.0  # ... and every direction clears the rank tolerance by this factor
INFLATION_WARNING_LEVEL = 0.5  # warn when independent data would reach this top correlation


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
    tolerance: float  # the larger side's rank tolerance: a relative singular value below it is round-off


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
    factors, tolerances = [], []
    for cols, side, count in ((slice(0, kx), sides.sx, kx), (slice(kx, k), sides.sy, sides.ky)):
        block = gram[cols, cols]
        r, info = torch.linalg.cholesky_ex(block, upper=True)
        tolerances.append(_rank_tolerance(side.roundoff, sides.n_rows, count))
        if int(info) != 0 or not _gram_keeps_accuracy(_condition_estimate(r, block), tolerances[-1]):
            return None
        factors.append(r)
    rx, ry = factors
    cross = torch.linalg.solve_triangular(rx.mT, gram[:kx, kx:], upper=False)
    cross = torch.linalg.solve_triangular(ry, cross, upper=True, left=False)
    # Ux^T Xc = Rx^-T (D^-1 Xc^T Xc) = Rx D: the loadings of the unscaled neurons
    return _Bases(cross, rx * norms[:kx], ry * norms[kx:], sides.n_rows, kx, sides.ky, max(tolerances))


def _reduced_from_gram(sides: _Sides, gram: torch.Tensor, keep_variance: float) -> _Bases | None:
    """SVCCA bases from each side's covariance eigenvectors: Ux = Xc V Lambda^-1/2 over the fewest top
    directions holding ``keep_variance`` of the variance; None when the smallest kept eigenvalue is
    too close to round-off for GRAM_ACCURACY or the rank tolerance (the caller then uses QR)."""
    kx, k = sides.kx, sides.k
    bases, tolerances = [], []
    parts = ((slice(0, kx), sides.sx, kx), (slice(kx, k), sides.sy, sides.ky))
    eigen = _eigh_descending(*(gram[cols, cols] for cols, _, _ in parts))
    for (cols, side, count), (values, vectors) in zip(parts, eigen):
        values = values.clamp(min=0)
        energy = values.cumsum(0)
        kept = min(count, int((energy < keep_variance * energy[-1] * (1 - 1e-12)).sum()) + 1)
        top, smallest = values[[0, kept - 1]].tolist()
        tolerances.append(_rank_tolerance(side.roundoff, sides.n_rows, count))
        if not (top > 0 and _gram_keeps_accuracy(top / smallest if smallest > 0 else math.inf, tolerances[-1])):
            return None
        bases.append(vectors[:, :kept] / values[:kept].sqrt())
    wx, wy = bases
    return _Bases(wx.T @ gram[:kx, kx:] @ wy, None, None, sides.n_rows, kx, sides.ky, max(tolerances))


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
    return _Bases(cross, load_a, load_b, f.n_rows, f.kx, f.ky, max(tol_x, tol_y))


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


def _existing_canonical_directions(side: torch.Tensor, tolerance: float, name: str
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The left singular vectors (r, m) and values (m,) of the weighting side's cross matrix
    ``side`` (r, m), r > m: its m canonical directions that have a partner, and their correlations.

    Raises ``UndefinedSimilarityError`` when the smallest correlation is not above
    sqrt(``tolerance``): its direction (known to about tolerance / rho) cannot then be told
    from the r - m directions that have no partner.
    """
    p, rho, _ = torch.linalg.svd(side, full_matrices=False)
    smallest = float(rho[-1])
    if not smallest > math.sqrt(tolerance):
        other = "y" if name == "x" else "x"
        raise UndefinedSimilarityError(
            f"PWCCA is undefined here: {other} has only {side.shape[1]} defined directions (it is "
            f"rank-deficient) against {side.shape[0]} of {name}, the weighting side, so only "
            f"{side.shape[1]} canonical directions of {name} exist, and the smallest of their "
            f"correlations ({smallest:.2g}) is too close to round-off (rank tolerance {tolerance:.2g}) "
            f"to tell its direction from the {side.shape[0] - side.shape[1]} that have no partner. "
            f"Drop the linearly dependent neurons of {other}, or use cca_mean or svcca")
    return p, rho.clamp_(0.0, 1.0)
