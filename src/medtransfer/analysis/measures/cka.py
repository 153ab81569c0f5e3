"""The CKA family (Kornblith et al. 2019): linear CKA, its debiased form, RBF CKA, and minibatch
CKA (Nguyen, Raghu & Kornblith 2021), which streams batches and is not a registered measure.

Each example is flattened to ``(n, C*H*W)``. Importing this module registers the measures without
importing torch; the numerics (:mod:`._cka`) are imported when a measure runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from medtransfer.analysis.measures.errors import SimilarityInputError, UndefinedSimilarityError
from medtransfer.analysis.measures.registry import MEASURES

if TYPE_CHECKING:
    import numpy as np
    import torch

    from medtransfer.analysis.measures._inputs import ArrayLike


@MEASURES.register("linear_cka", family="cka")
def linear_cka(x: ArrayLike, y: ArrayLike, debiased: bool = False) -> float:
    """Linear CKA (Kornblith et al. 2019) between x (n, ...) and y (n, ...), flattened per example.

    ``debiased=True`` uses the unbiased HSIC estimator (Song et al. 2012), which can be negative
    for dissimilar representations (the result may be slightly below 0, never NaN); needs n >= 4.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(100, 8))
    >>> round(linear_cka(x, 2 * x + 1), 6)
    1.0
    """
    import torch

    from medtransfer.analysis.measures._cka import (_centred_gram, _cka_ratio, _cross_sq_norm, _gram_sq_norm,
                                                    _unbiased_hsic_terms)
    from medtransfer.analysis.measures._inputs import _centred_features, _pair

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


@MEASURES.register("linear_cka_debiased", family="cka")
def linear_cka_debiased(x: ArrayLike, y: ArrayLike) -> float:
    """``linear_cka(x, y, debiased=True)`` as a two-argument measure for the registry."""
    return linear_cka(x, y, debiased=True)


@MEASURES.register("rbf_cka", family="cka")
def rbf_cka(x: ArrayLike, y: ArrayLike, sigma_frac: float = 0.8) -> float:
    """RBF-kernel CKA (Kornblith et al. 2019); bandwidth sigma = sigma_frac * sqrt(median squared
    distance), the median over the full n x n matrix (diagonal included), each input its own.

    Needs the two n x n kernel matrices (8 n^2 bytes each).
    """
    import torch

    from medtransfer.analysis.measures._cka import _centred_rbf_gram, _cka_ratio
    from medtransfer.analysis.measures._inputs import _centred_features, _pair

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
# minibatch CKA: streams batches, so it is a class (and a function over whole arrays), not a registered measure


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
        import torch

        from medtransfer.analysis.measures._cka import _add, _BatchLayer, _named_layers
        from medtransfer.analysis.measures._inputs import _as_tensor

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
        import numpy as np
        import torch

        from medtransfer.analysis.measures._cka import _cka_ratio

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


def minibatch_cka(x: ArrayLike, y: ArrayLike, batch_size: int) -> float:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021) over contiguous minibatches in the given order.

    With ``batch_size >= n`` it equals ``linear_cka(x, y, debiased=True)``. The last batch may be
    shorter but needs at least 4 examples.
    """
    from medtransfer.analysis.measures._inputs import _pair

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

