"""The CCA family: canonical correlations (``cca``), their mean, SVCCA (Raghu et al. 2017) and
PWCCA (Morcos et al. 2018).

Channels are neurons and every (example, h, w) position a data point, ``(n*H*W, C)``, as
google/svcca does; both sides must have the same number of positions. Importing this module
registers the measures without importing torch; the shared core (:mod:`._cca`: centring, the Gram
and QR routes, the rank tolerance) is imported when a measure runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medtransfer.analysis.measures.errors import SimilarityInputError
from medtransfer.analysis.measures.registry import MEASURES

if TYPE_CHECKING:
    import numpy as np

    from medtransfer.analysis.measures._inputs import ArrayLike


def cca(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Canonical correlations between x and y, descending, as a float64 array of length
    min(kx, ky) (kx, ky: defined directions of each side). Conv maps count as (n*H*W, C).

    Raises ``UndefinedSimilarityError`` if a side has >= N - 1 non-constant neurons for N data points.
    """
    from medtransfer.analysis.measures._cca import _correlations, _plain_bases, _warn_if_inflated

    bases = _plain_bases(x, y, "CCA")
    _warn_if_inflated(bases.cross.shape[0], bases.cross.shape[1], bases.n_rows, "CCA")
    return _correlations(bases.cross).cpu().numpy()


@MEASURES.register("cca_mean", family="cca")
def cca_mean(x: ArrayLike, y: ArrayLike) -> float:
    """Mean of all canonical correlations (see ``cca``)."""
    import numpy as np

    return float(np.mean(cca(x, y)))


@MEASURES.register("svcca", family="cca")
def svcca(x: ArrayLike, y: ArrayLike, keep_variance: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): centre, keep each side's fewest top singular directions whose
    squared singular values reach ``keep_variance`` of the total, then the mean canonical
    correlation of the reduced sides. Works when a side has more neurons than data points.
    """
    from medtransfer.analysis.measures._cca import (_bases_from_qr, _centred_cross_products, _correlations,
                                                    _factorise, _reduced_from_gram, _Sides, _use_gram,
                                                    _warn_if_inflated)

    if not 0 < keep_variance <= 1:
        raise SimilarityInputError(f"keep_variance must be in (0, 1], got {keep_variance}")
    sides = _Sides(x, y, "SVCCA", plain=False)
    bases = _reduced_from_gram(sides, _centred_cross_products(sides), keep_variance) if _use_gram(sides) else None
    if bases is None:
        bases = _bases_from_qr(_factorise(sides), keep_variance)
    _warn_if_inflated(bases.cross.shape[0], bases.cross.shape[1], bases.n_rows, "SVCCA")
    return float(_correlations(bases.cross).mean())


PWCCA_VARIANTS = ("google", "paper")


@MEASURES.register("pwcca", family="cca")
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

    Rank-deficient inputs: only the min(rx, ry) canonical directions that exist (rx, ry: defined
    directions of each side, as in ``cca``) enter the weighted sum and the normaliser, in both
    variants. The weighting side (fewer *neurons*) can have more defined directions than the other
    side when the other's neurons are linearly dependent; its directions beyond the other's rank
    have no partner and no correlation, and any basis of them is arbitrary, so they are left out.
    google/svcca's ``cca_core.compute_ccas`` does not reach a number there: the square root of the
    pseudo-inverse of the rank-deficient covariance has NaNs and its SVD raises ``LinAlgError``.

    Raises like ``cca``, and ``UndefinedSimilarityError`` when the smallest existing correlation
    is not above sqrt(rank tolerance) while directions without a partner exist: its direction
    cannot then be told apart from theirs.
    """
    import torch

    from medtransfer.analysis.measures._cca import (_eigh_descending, _existing_canonical_directions, _plain_bases,
                                                    _psd_sqrt, _warn_if_inflated)

    if variant not in PWCCA_VARIANTS:
        raise SimilarityInputError(f"pwcca variant {variant!r}; allowed: {', '.join(PWCCA_VARIANTS)}")
    bases = _plain_bases(x, y, "PWCCA")
    cross = bases.cross
    _warn_if_inflated(cross.shape[0], cross.shape[1], bases.n_rows, "PWCCA")
    on_x = bases.kx <= bases.ky
    side, loadings = (cross, bases.load_x) if on_x else (cross.T, bases.load_y)
    if side.shape[0] <= side.shape[1]:
        # Every direction of the weighting side has a canonical partner (always so on full-rank
        # sides). Left singular vectors p_i of the side's cross matrix, descending, from the
        # eigenvectors of side side^T (a fraction of an SVD's cost); rho_i = |side^T p_i| is
        # accurate to round-off (a Rayleigh quotient).
        if variant == "paper":
            [(_, p)] = _eigh_descending(side @ side.T)
        else:
            [(_, p), root] = _eigh_descending(side @ side.T, loadings @ loadings.T)
        rho = torch.linalg.vector_norm(side.T @ p, dim=0).clamp_(0.0, 1.0)
    else:
        # The other side has fewer defined directions than this one (it is rank-deficient), so only
        # that many canonical pairs exist; the rest of this side's directions span the null space
        # of side^T in whatever basis a solver picks, and enter neither sum. A thin SVD gives just
        # the pairs that exist, each direction to about tolerance / rho_i.
        p, rho = _existing_canonical_directions(side, bases.tolerance, "x" if on_x else "y")
        if variant == "google":
            [root] = _eigh_descending(loadings @ loadings.T)
    if variant == "paper":
        directions = p  # canonical variate i is U p_i, so <U p_i, z_j> = (p_i^T loadings)_j
    else:
        # google's vectors Z Sigma^1/2 w_i are U (L L^T)^1/2 p_i in the basis U, L = U^T Z: their
        # QR is U times the QR of (L L^T)^1/2 P
        directions = torch.linalg.qr(_psd_sqrt(*root) @ p).Q
    weights = (directions.T @ loadings).abs().sum(1)
    return float((weights * rho).sum() / weights.sum())

