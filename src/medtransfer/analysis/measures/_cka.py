"""The numerics of the CKA family (imports torch): Gram products in the cheaper space, the
unbiased HSIC, the RBF kernel's median bandwidth, and one minibatch's layer for minibatch CKA.

The measures in :mod:`.cka` import this when they run, so registering them needs no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from medtransfer.analysis.measures._inputs import F64, ArrayLike, _centred_features
from medtransfer.analysis.measures.errors import SimilarityInputError, UndefinedSimilarityError

GRAM_BLOCK = 256  # rows/columns per block of a symmetric Gram product
SYMMETRIC_PANEL = 128  # rows per panel of a full symmetric Gram (fastest measured on this CPU)
DEGENERATE_HSIC = 1e-10  # HSIC(x, x) below this fraction of its terms' size counts as zero


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



def _add(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    return value if total is None else total + value

