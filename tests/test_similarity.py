"""Similarity measures against textbook implementations and the properties they must have.

Every property is written once and run over every measure it holds for (repsim style). The
references below are the plain formulas in float64 numpy: explicit n x n centring matrices for
CKA, SVD bases for the CCA family -- a different route from the library's (feature-space
products, a streamed Gram with Cholesky / eigh, or a streamed QR) -- and, for PWCCA, a
transcription of google/svcca's compute_pwcca. The CCA family is checked on both of its routes.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from medtransfer.analysis import measures
from medtransfer.analysis.measures import _cca, _cka, cca, cka
from medtransfer.errors import MedtransferError

# ------------------------------------------------------------------------------------------ references


def _flat(a):
    return np.asarray(a, dtype=np.float64).reshape(len(a), -1)


def _rows(a):
    """CCA convention: conv (n, C, H, W) -> (n*H*W, C)."""
    a = np.asarray(a, dtype=np.float64)
    return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1]) if a.ndim == 4 else a


def ref_hsic(k, l, unbiased):
    n = len(k)
    if not unbiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return np.trace(k @ h @ l @ h) / (n - 1) ** 2
    k, l = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))


def ref_cka_from_kernels(k, l, unbiased=False):
    return ref_hsic(k, l, unbiased) / math.sqrt(ref_hsic(k, k, unbiased) * ref_hsic(l, l, unbiased))


def ref_linear_cka(x, y, debiased=False):
    x, y = _flat(x), _flat(y)
    return ref_cka_from_kernels(x @ x.T, y @ y.T, debiased)


def ref_rbf_kernel(x, sigma_frac):
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma_frac**2 * np.median(d2)))


def ref_rbf_cka(x, y, sigma_frac=0.8):
    return ref_cka_from_kernels(ref_rbf_kernel(_flat(x), sigma_frac), ref_rbf_kernel(_flat(y), sigma_frac))


def ref_minibatch_cka(x, y, batch_size):
    x, y = _flat(x), _flat(y)
    sums = np.zeros(3)
    for i in range(0, len(x), batch_size):
        kx, ky = x[i:i + batch_size] @ x[i:i + batch_size].T, y[i:i + batch_size] @ y[i:i + batch_size].T
        sums += [ref_hsic(kx, ky, True), ref_hsic(kx, kx, True), ref_hsic(ky, ky, True)]
    return sums[0] / math.sqrt(sums[1] * sums[2])


def ref_basis(a, rtol=1e-10, keep_variance=None):
    """Orthonormal basis of the centred, non-constant columns (unit-normalised unless keep_variance)."""
    a = a[:, a.max(0) > a.min(0)]
    a = a - a.mean(0)
    if keep_variance is None:
        a = a / np.linalg.norm(a, axis=0)
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    k = int((s > rtol * s[0]).sum())
    if keep_variance is not None:
        energy = np.cumsum(s**2) / np.sum(s**2)
        k = min(k, int(np.searchsorted(energy, keep_variance - 1e-12)) + 1)
    return u[:, :k], a


def ref_cca(x, y):
    (ux, _), (uy, _) = ref_basis(_rows(x)), ref_basis(_rows(y))
    return np.linalg.svd(ux.T @ uy, compute_uv=False)


def ref_svcca(x, y, keep_variance=0.99):
    ux, _ = ref_basis(_rows(x), keep_variance=keep_variance)
    uy, _ = ref_basis(_rows(y), keep_variance=keep_variance)
    return np.linalg.svd(ux.T @ uy, compute_uv=False).mean()


def ref_pwcca(x, y):
    x, y = _rows(x), _rows(y)
    ux, _ = ref_basis(x)
    uy, _ = ref_basis(y)
    p, rho, qh = np.linalg.svd(ux.T @ uy, full_matrices=False)
    kx, ky = int((x.max(0) > x.min(0)).sum()), int((y.max(0) > y.min(0)).sum())
    side, variates = (x, ux @ p) if kx <= ky else (y, uy @ qh.T)
    weights = np.abs(variates.T @ (side - side.mean(0))).sum(1)
    return float((weights * rho).sum() / weights.sum())


def ref_google_pwcca(x, y, epsilon=1e-10):
    """google/svcca's pwcca.compute_pwcca(acts1, acts2, epsilon)[0], transcribed step by step from
    its pwcca.py and cca_core.get_cca_similarity (np.cov, rescaling by the largest entry, dropping
    neurons of variance < epsilon, pinv + eigh square roots, SVD, then the QR of
    coef (acts - mean) + mean), with the fix of its PR #9 (acts2 in the y branch), on the
    column-centred (neurons, data points) activations."""
    x, y = _rows(x), _rows(y)
    acts1, acts2 = (x - x.mean(0)).T, (y - y.mean(0)).T
    numx = len(acts1)
    cov = np.cov(acts1, acts2)
    sxx, sxy, syy = cov[:numx, :numx], cov[:numx, numx:], cov[numx:, numx:]
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)
    x_idxs, y_idxs = np.abs(np.diag(sxx)) >= epsilon, np.abs(np.diag(syy)) >= epsilon
    sxx, sxy, syy = sxx[x_idxs][:, x_idxs], sxy[x_idxs][:, y_idxs], syy[y_idxs][:, y_idxs]

    def invsqrt(s):
        w, v = np.linalg.eigh(np.linalg.pinv(s + epsilon * np.eye(len(s))))
        return v @ np.diag(np.sqrt(w)) @ v.T

    u, s, vh = np.linalg.svd(invsqrt(sxx) @ sxy @ invsqrt(syy))
    s = np.abs(s)
    if x_idxs.sum() <= y_idxs.sum():
        acts, idxs, coef = acts1, x_idxs, u.T
    else:
        acts, idxs, coef = acts2, y_idxs, vh
    means = acts.mean(1, keepdims=True)[idxs]
    dirns = coef @ (acts[idxs] - means) + means
    p, _ = np.linalg.qr(dirns.T)
    weights = np.abs(p.T @ acts[idxs].T).sum(1)
    weights = weights / weights.sum()
    return float(np.sum(weights * s))


def ref_google_pwcca_by_definition(x, y, rtol=1e-10):
    """The same weighting written from its definition, in data space: the vectors Z Sigma^1/2 w_i
    (w_i canonical weights, Sigma the weighting side's covariance) are U S p_i for Z = U S V^T
    restricted to its defined directions; QR them in order of descending rho. Unlike the
    transcription it stays defined for rank-deficient sides: only the min(shape) canonical
    directions that exist are weighted (a thin SVD), never the weighting side's directions
    without a partner."""
    x, y = _rows(x), _rows(y)
    kx, ky = int((x.max(0) > x.min(0)).sum()), int((y.max(0) > y.min(0)).sum())
    z, other = (x, y) if kx <= ky else (y, x)
    z = z[:, z.max(0) > z.min(0)] - z.mean(0)[z.max(0) > z.min(0)]
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    rank = int((s > rtol * s[0]).sum())
    u, s = u[:, :rank], s[:rank]
    uo, _ = ref_basis(other)
    p, rho, _ = np.linalg.svd(u.T @ uo, full_matrices=False)
    q, _ = np.linalg.qr(u @ (s[:, None] * p))
    weights = np.abs(q.T @ z).sum(1)
    return float((weights * rho).sum() / weights.sum())


# ------------------------------------------------------------------------------------------ the measures

# The textbook reference of every registered measure (a new measure adds its own here), and the
# variants the registry does not hold, each as (ours, reference).
REFERENCES = {
    "linear_cka": ref_linear_cka,
    "linear_cka_debiased": lambda x, y: ref_linear_cka(x, y, True),
    "rbf_cka": ref_rbf_cka,
    "cca_mean": lambda x, y: ref_cca(x, y).mean(),
    "svcca": ref_svcca,
    # epsilon=0: compute_pwcca without its regulariser, so agreement is to round-off (the 1e-10
    # it adds by default is tested separately below)
    "pwcca": lambda x, y: ref_google_pwcca(x, y, epsilon=0.0),
}
VARIANTS = {
    "minibatch_cka": (lambda x, y: cka.minibatch_cka(x, y, 25), lambda x, y: ref_minibatch_cka(x, y, 25)),
    "pwcca_paper": (lambda x, y: cca.pwcca(x, y, variant="paper"), ref_pwcca),
}
FAMILY = {**{name: measures.MEASURES.traits(name).family for name in measures.MEASURES},
          "minibatch_cka": "cka", "pwcca_paper": "cca"}
MEASURES = {**{name: (measures.MEASURES.get(name), REFERENCES.get(name)) for name in measures.MEASURES}, **VARIANTS}
CCA_FAMILY = [name for name in MEASURES if FAMILY[name] == "cca"]


def data(seed=0, n=100, dx=8, dy=12, conv=False):
    """y shares a few directions with x plus noise; conv maps are (n, C, 3, 3)."""
    rng = np.random.default_rng(seed)
    shape = (n, dx, 3, 3) if conv else (n, dx)
    x = rng.normal(size=shape)
    mix = rng.normal(size=(dx, dy))
    y = (np.einsum("nchw,cd->ndhw", x, mix) if conv else x @ mix) + 2 * rng.normal(size=(n, dy) + shape[2:])
    return x, y


def orthogonal(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def along_features(a, m):
    """Apply a (d, d) map to the feature axis: columns of 2-D data, channels of conv maps."""
    return np.einsum("nchw,cd->ndhw", a, m) if a.ndim == 4 else a @ m


def transform(kind, a, seed=3):
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    if kind == "orthogonal":
        # CKA flattens conv maps per example: rotate that whole space; the CCA family: channels.
        return along_features(a, orthogonal(d, seed))
    if kind == "flat_orthogonal":
        flat = _flat(a)
        return (flat @ orthogonal(flat.shape[1], seed)).reshape(a.shape)
    if kind == "isotropic_scale":
        return 7.5 * a
    if kind == "translation":
        # the same offset at every position: a translation in both conventions
        return a + rng.normal(size=(1, a.shape[1]) + (1,) * (a.ndim - 2)) * 100
    if kind == "invertible":
        m = rng.normal(size=(d, d)) + 3 * np.eye(d)
        return along_features(a, m)
    if kind == "permute_and_flip":
        return along_features(a, np.eye(d)[rng.permutation(d)] * rng.choice([-1.0, 1.0], size=d))
    raise ValueError(kind)


# Which transforms each measure is invariant to, on both sides unless noted. CKA: orthogonal maps,
# isotropic scaling, translation. CCA: any invertible linear map. SVCCA: the SVD step makes it
# orthogonal-only. PWCCA: weights are L1 sums over the weighting side's neurons, so that side only
# keeps permutations, sign flips, scaling and translation; the other side keeps invertible maps.
INVARIANCES = {
    "linear_cka": ["flat_orthogonal", "isotropic_scale", "translation"],
    "linear_cka_debiased": ["flat_orthogonal", "isotropic_scale", "translation"],
    "rbf_cka": ["flat_orthogonal", "isotropic_scale", "translation"],
    "minibatch_cka": ["flat_orthogonal", "isotropic_scale", "translation"],
    "cca_mean": ["orthogonal", "isotropic_scale", "translation", "invertible"],
    "svcca": ["orthogonal", "isotropic_scale", "translation"],
    "pwcca": ["permute_and_flip", "isotropic_scale", "translation"],
    "pwcca_paper": ["permute_and_flip", "isotropic_scale", "translation"],
}
CASES = [(m, t) for m in MEASURES for t in INVARIANCES.get(m, [])]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny inputs gain nothing from threads, and spinning threads stall on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_inflation_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", measures.InflatedCorrelationWarning)
        yield


# ------------------------------------------------------------------------------------------ properties of all measures


@pytest.mark.parametrize("conv", [False, True], ids=["2d", "conv"])
@pytest.mark.parametrize("name", MEASURES)
def test_agrees_with_textbook(name, conv):
    fn, ref = MEASURES[name]
    for seed in range(3):
        x, y = data(seed, conv=conv)
        assert fn(x, y) == pytest.approx(ref(x, y), abs=1e-10)


@pytest.mark.parametrize("name", MEASURES)
def test_identity_is_one(name):
    x, _ = data(1)
    assert MEASURES[name][0](x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name", MEASURES)
def test_symmetric_and_bounded(name):
    x, y = data(2)
    fn = MEASURES[name][0]
    value = fn(x, y)
    assert isinstance(value, float) and -1 <= value <= 1
    assert fn(y, x) == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("conv", [False, True], ids=["2d", "conv"])
@pytest.mark.parametrize("name,kind", CASES)
def test_invariance(name, kind, conv):
    if conv and kind == "flat_orthogonal":
        pytest.skip("covered by 2-D data (same flattened maths)")
    fn = MEASURES[name][0]
    x, y = data(4, conv=conv)
    value = fn(x, y)
    assert fn(x, transform(kind, x)) == pytest.approx(1.0, abs=1e-9)  # d(x, T x) = 1
    assert fn(transform(kind, x), y) == pytest.approx(value, abs=1e-9)  # d(T x, y) = d(x, y)
    assert fn(x, transform(kind, y, seed=5)) == pytest.approx(value, abs=1e-9)


@pytest.mark.parametrize("variant", cca.PWCCA_VARIANTS)
def test_pwcca_invariant_to_invertible_maps_of_the_unweighted_side(variant):
    x, y = data(5, dx=6, dy=10)  # x has fewer neurons, so x gives the weights
    m = np.random.default_rng(0).normal(size=(10, 10)) + 3 * np.eye(10)
    assert cca.pwcca(x, y @ m, variant=variant) == pytest.approx(cca.pwcca(x, y, variant=variant), abs=1e-10)


@pytest.mark.parametrize("name", ["svcca", "pwcca", "pwcca_paper"])
def test_not_invariant_to_general_invertible_maps(name):
    """Documents why they are absent from the invertible-map invariance above."""
    x, y = data(6, dx=10, dy=12)
    m = np.diag(np.logspace(-2, 2, 10)) @ orthogonal(10, 1)
    assert abs(MEASURES[name][0](x @ m, y) - MEASURES[name][0](x, y)) > 1e-3


@pytest.mark.parametrize("name", MEASURES)
def test_dtypes_accumulate_in_float64(name):
    """float32/float16 inputs give the float64 answer for the values they hold, and close to the original."""
    fn = MEASURES[name][0]
    x, y = data(7)
    for dtype, tol in ((np.float32, 1e-5), (np.float16, 2e-2)):
        xq, yq = x.astype(dtype), y.astype(dtype)
        assert fn(xq, yq) == pytest.approx(fn(xq.astype(np.float64), yq.astype(np.float64)), abs=1e-11)
        assert fn(xq, yq) == pytest.approx(fn(x, y), abs=tol)


@pytest.mark.parametrize("name", MEASURES)
def test_torch_and_numpy_agree(name):
    fn = MEASURES[name][0]
    x, y = data(8)
    value = fn(x, y)
    assert fn(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(value, abs=1e-12)
    assert fn(torch.from_numpy(x).float(), y.astype(np.float32)) == pytest.approx(value, abs=1e-5)
    assert fn(torch.from_numpy(x).half(), torch.from_numpy(y).half()) == pytest.approx(value, abs=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("name", MEASURES)
def test_cuda_matches_cpu(name):
    fn = MEASURES[name][0]
    x, y = data(9)
    assert fn(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()) == pytest.approx(fn(x, y), abs=1e-10)


def test_registry_names():
    assert measures.MEASURES.names() == sorted(
        ["linear_cka", "linear_cka_debiased", "rbf_cka", "cca_mean", "svcca", "pwcca"])
    x, y = data(10)
    for name in measures.MEASURES:
        assert measures.MEASURES.get(name)(x, y) == pytest.approx(MEASURES[name][0](x, y), abs=1e-12)


@pytest.mark.parametrize("name", measures.MEASURES.names())
def test_every_registered_measure_states_its_reference_and_invariances(name):
    """The properties above run over the registry; a new measure joins them by naming its
    textbook reference and its invariances here."""
    assert REFERENCES.get(name) is not None and INVARIANCES.get(name)


def test_registering_the_measures_imports_neither_torch_nor_numpy():
    """The planner (imported by the Snakefile) reads the registry; the numerics load when a measure runs."""
    code = ("import sys; from medtransfer.analysis.measures import MEASURES; MEASURES.names(); "
            "MEASURES.traits('svcca'); print(sorted({'torch', 'numpy'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------ CKA


def test_debiased_cka_is_near_zero_for_independent_data_while_biased_is_not():
    rng = np.random.default_rng(11)
    biased, debiased = [], []
    for _ in range(20):
        x, y = rng.normal(size=(40, 100)), rng.normal(size=(40, 100))
        biased.append(cka.linear_cka(x, y))
        debiased.append(cka.linear_cka(x, y, debiased=True))
    assert min(biased) > 0.5
    assert abs(np.mean(debiased)) < 0.03
    assert min(debiased) < 0 and all(np.isfinite(debiased))  # negative HSIC: a number, never NaN


def test_minibatch_with_one_batch_equals_debiased():
    x, y = data(12, n=60, dx=30, dy=80)
    expected = cka.linear_cka(x, y, debiased=True)
    assert cka.minibatch_cka(x, y, batch_size=60) == pytest.approx(expected, abs=1e-12)
    assert cka.minibatch_cka(x, y, batch_size=1000) == pytest.approx(expected, abs=1e-12)


def test_streaming_class_tracks_many_layer_pairs():
    rng = np.random.default_rng(13)
    a = {"conv": rng.normal(size=(90, 3, 4, 4)), "fc": rng.normal(size=(90, 5))}
    b = [a["fc"] @ rng.normal(size=(5, 7)) + rng.normal(size=(90, 7)), rng.normal(size=(90, 60))]
    matrix, pairs = cka.MinibatchCKA(), cka.MinibatchCKA(pairs=[("fc", 0)])
    for i in range(0, 90, 30):
        batch_a = {k: torch.from_numpy(v[i:i + 30]) for k, v in a.items()}
        matrix.update(batch_a, [v[i:i + 30] for v in b])
        pairs.update(batch_a, [v[i:i + 30] for v in b])
    out = matrix.compute()
    assert out.shape == (2, 2)
    for i, key in enumerate(a):
        for j in range(2):
            assert out[i, j] == pytest.approx(ref_minibatch_cka(a[key], b[j], 30), abs=1e-10)
    assert pairs.compute() == {("fc", 0): pytest.approx(out[1, 0], abs=1e-12)}


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_with_fewer_examples_than_features(debiased):
    """The example-Gram (n x n) form, for n < d; the textbook tests above use n > d."""
    for seed in range(3):
        x, y = data(seed, n=30, dx=50, dy=70)
        assert cka.linear_cka(x, y, debiased) == pytest.approx(ref_linear_cka(x, y, debiased), abs=1e-10)
        x, y = data(seed, n=30, dx=5, dy=4, conv=True)  # conv maps flatten to 45 and 36 features
        assert cka.linear_cka(x, y, debiased) == pytest.approx(ref_linear_cka(x, y, debiased), abs=1e-10)


def test_linear_cka_never_builds_an_n_by_n_gram_when_n_exceeds_d(monkeypatch):
    def refuse(*args):
        raise AssertionError("n x n Gram built although n > d")

    monkeypatch.setattr(_cka, "_centred_gram", refuse)
    x, y = data(15, n=400, dx=20, dy=40)
    assert cka.linear_cka(x, y) == pytest.approx(ref_linear_cka(x, y), abs=1e-10)
    assert cka.linear_cka(x, y, debiased=True) == pytest.approx(ref_linear_cka(x, y, True), abs=1e-10)
    x, y = data(15, n=400, dx=20, dy=800)  # n > d on one side only: still the (d, d) products
    assert cka.linear_cka(x, y) == pytest.approx(ref_linear_cka(x, y), abs=1e-10)


def test_cka_of_degenerate_inputs_raises_instead_of_nan():
    x, _ = data(16, n=30)
    with pytest.raises(measures.UndefinedSimilarityError, match="constant"):
        cka.linear_cka(np.ones((30, 5)), x)
    # Equidistant examples: the unbiased HSIC of x with itself is exactly 0.
    with pytest.raises(measures.UndefinedSimilarityError, match="itself is zero"):
        cka.linear_cka(np.eye(30), x, debiased=True)
    with pytest.raises(measures.UndefinedSimilarityError):
        cka.rbf_cka(np.repeat(x[:1], 30, axis=0), x)


def test_cka_is_accurate_for_badly_scaled_and_translated_columns():
    x, y = data(17, n=80, dx=10, dy=10)
    scales = np.logspace(-3, 3, 10)
    xs, ys = x * scales + 1e4, y * scales[::-1]
    for fn, ref in (MEASURES["linear_cka"], MEASURES["linear_cka_debiased"], MEASURES["rbf_cka"]):
        assert fn(xs, ys) == pytest.approx(ref(x * scales, y * scales[::-1]), abs=1e-9)


# ------------------------------------------------------------------------------------------ CCA family


@pytest.mark.parametrize("name", ["cca_mean", "pwcca", "pwcca_paper", "svcca"])
def test_rank_deficient_columns_give_the_answer_over_the_defined_directions(name):
    fn = MEASURES[name][0]
    x, y = data(18, n=120, dx=6, dy=9)
    rng = np.random.default_rng(0)
    messy = np.concatenate([x, x[:, :2] * 3.0, np.full((120, 2), 4.2), x[:, 3:4] * 1e-3], axis=1)
    # pwcca: weights see raw neuron sizes: duplicates count twice, constants zero (compute_pwcca
    # itself breaks down here: its pinv square root meets the null directions)
    if name == "pwcca":
        assert fn(messy, y) == pytest.approx(ref_google_pwcca_by_definition(messy, y), abs=1e-10)
    elif name == "pwcca_paper":
        assert fn(messy, y) == pytest.approx(ref_pwcca(messy, y), abs=1e-10)
    elif name == "cca_mean":
        assert np.allclose(cca.cca(messy, y), ref_cca(x, y), atol=1e-10)
        assert len(cca.cca(messy, y)) == 6
    else:
        assert fn(messy, y, keep_variance=1.0) == pytest.approx(ref_svcca(x, y, keep_variance=1.0), abs=1e-10)
    low_rank = rng.normal(size=(120, 3)) @ rng.normal(size=(3, 10))  # exact rank 3
    if name == "cca_mean":
        assert np.allclose(cca.cca(low_rank, y), ref_cca(low_rank, y), atol=1e-9)
        assert len(cca.cca(low_rank, y)) == 3


def test_cca_is_invariant_to_column_scales_from_1e_minus_3_to_1e3():
    x, y = data(19, n=200, dx=10, dy=10)
    scales = np.logspace(-3, 3, 10)
    assert np.allclose(cca.cca(x * scales, y * scales[::-1]), ref_cca(x, y), atol=1e-10)


def test_ill_conditioned_but_full_rank_columns():
    rng = np.random.default_rng(20)
    base = rng.normal(size=(400, 1))
    x = base + 1e-6 * rng.normal(size=(400, 5))  # nearly collinear, condition number ~1e6
    y = x[:, :3] @ rng.normal(size=(3, 4)) + rng.normal(size=(400, 4))
    assert np.allclose(cca.cca(x, y), ref_cca(x, y), atol=1e-7)


@pytest.mark.parametrize("route", ["qr", "gram"])
def test_streamed_in_many_chunks(monkeypatch, route):
    if route == "qr":
        monkeypatch.setattr(_cca, "GRAM_ACCURACY", 0.0)  # no Gram route at all
        monkeypatch.setattr(_cca, "QR_CHUNK_ROWS", 16)
    else:
        monkeypatch.setattr(_cca, "_factorise", _refuse_qr)
        monkeypatch.setattr(_cca, "GRAM_CHUNK_ROWS", 16)
        monkeypatch.setattr(_cca, "GRAM_CHUNK_ELEMENTS", 16)
        monkeypatch.setattr(_cca, "GRAM_PANEL", 3)  # panels that do not divide the 12 columns
    for conv in (False, True):
        x, y = data(21, n=150, dx=5, dy=7, conv=conv)
        assert np.allclose(cca.cca(x, y), ref_cca(x, y), atol=1e-10)
        assert cca.pwcca(x, y) == pytest.approx(ref_google_pwcca(x, y, epsilon=0.0), abs=1e-10)
        assert cca.pwcca(x, y, variant="paper") == pytest.approx(ref_pwcca(x, y), abs=1e-10)
        assert cca.svcca(x, y) == pytest.approx(ref_svcca(x, y), abs=1e-10)


def _refuse_qr(*args):
    raise AssertionError("QR route taken although the Gram route keeps the accuracy")


@pytest.mark.parametrize("conv", [False, True], ids=["2d", "conv"])
@pytest.mark.parametrize("name", CCA_FAMILY)
def test_qr_route_agrees_with_textbook(name, conv, monkeypatch):
    """test_agrees_with_textbook takes the Gram route (well-conditioned inputs); the QR route too."""
    monkeypatch.setattr(_cca, "GRAM_ACCURACY", 0.0)
    fn, ref = MEASURES[name]
    for seed in range(3):
        x, y = data(seed, conv=conv)
        assert fn(x, y) == pytest.approx(ref(x, y), abs=1e-10)


def test_gram_route_for_well_conditioned_inputs_qr_for_the_rest(monkeypatch):
    calls = []
    factorise = _cca._factorise
    monkeypatch.setattr(_cca, "_factorise", lambda sides: calls.append(1) or factorise(sides))
    x, y = data(27, n=400, dx=6, dy=9)
    for name in CCA_FAMILY:
        MEASURES[name][0](x, y)
    assert not calls
    rng = np.random.default_rng(27)
    nearly_collinear = rng.normal(size=(400, 1)) + 1e-6 * rng.normal(size=(400, 5))  # condition ~1e6
    cca.cca(nearly_collinear, y)
    assert calls == [1]  # squared, 1e12: beyond what the Gram keeps
    cca.svcca(x, y, keep_variance=1.0)  # every direction, all well above round-off: still the Gram
    assert calls == [1]
    spread = x * np.logspace(0, -5, 6)  # variances over 1e10: all kept, too spread for the Gram
    cca.svcca(spread, y, keep_variance=1.0)
    assert calls == [1, 1]
    cca.cca(x[:8], y[:8, :4])  # fewer data points than columns: QR (the smaller matrix)
    assert calls == [1, 1, 1]


def test_cca_returns_sorted_correlations():
    x, y = data(22)
    rho = cca.cca(x, y)
    assert isinstance(rho, np.ndarray) and rho.dtype == np.float64 and rho.shape == (8,)
    assert np.all(np.diff(rho) <= 0) and rho[0] <= 1 and rho[-1] >= 0


@pytest.mark.parametrize("name", ["cca_mean", "pwcca"])
def test_plain_cca_with_too_many_features_raises_and_svcca_still_works(name):
    x, y = data(23, n=40, dx=50, dy=10)
    with pytest.raises(measures.UndefinedSimilarityError, match="svcca") as caught:
        MEASURES[name][0](x, y)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, MedtransferError)
    assert "50 non-constant neurons" in str(caught.value)
    assert cca.svcca(x, y) == pytest.approx(ref_svcca(x, y), abs=1e-10)


def test_warns_when_dimensions_approach_the_number_of_data_points():
    x, y = data(24, n=100, dx=30, dy=30)
    with pytest.warns(measures.InflatedCorrelationWarning, match="inflated"):
        cca.cca_mean(x, y)
    x, y = data(24, n=1000, dx=5, dy=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", measures.InflatedCorrelationWarning)
        cca.cca_mean(x, y)


# ------------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize("name", MEASURES)
def test_bad_inputs_raise_clear_errors(name):
    fn = MEASURES[name][0]
    x, y = data(25)
    with pytest.raises(measures.SimilarityInputError, match="same examples"):
        fn(x, y[:-1])
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(measures.SimilarityInputError, match="NaN"):
        fn(bad, y)


def test_cca_family_needs_matching_positions():
    x, _ = data(26, n=20, conv=True)
    with pytest.raises(measures.SimilarityInputError, match="pool"):
        cca.cca_mean(x, x[:, :, :2, :2])
    assert cka.linear_cka(x, x[:, :, :2, :2]) > 0  # CKA flattens each example: any shapes pair


def test_init_final_rows_carry_the_sizes_that_set_the_biased_cka_floor(tmp_path):
    """Independent init/final maps: biased CKA sits at a floor set by features / examples, which
    the rows must show; the debiased estimate stays near 0 whatever the width."""
    import json

    import h5py

    from medtransfer.analysis.init_final import similarity_init_final

    rng = np.random.default_rng(0)
    shapes = {"narrow": (400, 16, 4, 4), "wide": (400, 128, 4, 4)}
    paths = {}
    for state in ("init", "final"):
        paths[state] = tmp_path / f"{state}.h5"
        with h5py.File(paths[state], "w") as handle:
            handle.attrs["blocks"] = json.dumps(list(shapes))
            for name, shape in shapes.items():
                handle.create_dataset(f"blocks/{name}", data=np.maximum(rng.standard_normal(shape), 0))
    rows = similarity_init_final(str(paths["init"]), str(paths["final"]), ["linear_cka", "linear_cka_debiased"],
                                 {"run": "r"})
    by = rows.set_index(["measure", "block"])
    assert by.loc[("linear_cka", "narrow"), "n_features"] == 256 and by.loc[("linear_cka", "wide"), "n_features"] == 2048
    assert (rows["n_examples"] == 400).all()
    assert by.loc[("linear_cka", "wide"), "value"] > by.loc[("linear_cka", "narrow"), "value"] + 0.2
    assert abs(by.loc[("linear_cka_debiased", "wide"), "value"]) < 0.05
    assert abs(by.loc[("linear_cka_debiased", "narrow"), "value"]) < 0.05


# ------------------------------------------------------------------------------------------ PWCCA as published


def low_rank_data(seed, n=300, dx=10, dy=14, rank=3, noise=0.1):
    """Both sides driven by a few shared latent factors, plus a little noise (numerically full rank)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, rank))
    x = latent @ rng.normal(size=(rank, dx)) + noise * rng.normal(size=(n, dx))
    y = latent @ rng.normal(size=(rank, dy)) + noise * rng.normal(size=(n, dy))
    return x, y


@pytest.mark.parametrize("kind", ["random", "low_rank", "conv"])
def test_pwcca_is_google_compute_pwcca(kind):
    """compute_pwcca(Xc.T, Yc.T, epsilon=1e-10)[0], either side weighting (y's is its PR #9 branch)."""
    for seed in range(3):
        if kind == "random":
            x, y = data(30 + seed, n=200, dx=7, dy=11)
        elif kind == "low_rank":
            x, y = low_rank_data(30 + seed)
        else:
            x, y = data(30 + seed, n=60, dx=6, dy=9, conv=True)
        # The transcription inverts covariances (pinv, then a square root), which costs it ~1e-10 on
        # the low-rank inputs (cond(Sigma) ~3e3; measured: it grows as cond^2, ours stays at 1e-14
        # of the data-space definition); round-off elsewhere.
        tight = 1e-9 if kind == "low_rank" else 1e-11
        for a, b in ((x, y), (y, x)):
            assert cca.pwcca(a, b) == pytest.approx(ref_google_pwcca(a, b), abs=1e-8)
            assert cca.pwcca(a, b) == pytest.approx(ref_google_pwcca(a, b, epsilon=0.0), abs=tight)
            assert cca.pwcca(a, b) == pytest.approx(ref_google_pwcca_by_definition(a, b), abs=1e-11)


def exactly_rank_deficient_pair(seed=1, n=200):
    """x: 5 neurons of full rank; y: 10 neurons of exact rank 3 near three of x's directions. x has
    fewer neurons, so it weights, but only 3 of its 5 directions have a canonical partner."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    y = (x[:, :3] + 0.05 * rng.normal(size=(n, 3))) @ rng.normal(size=(3, 10))
    return x, y


@pytest.mark.parametrize("variant", ["google", "paper"])
def test_pwcca_on_an_exactly_rank_deficient_side_weights_only_the_directions_that_exist(variant):
    """Issue 25 (12): the 2 directions of x without a partner have no correlation and any basis of
    them is arbitrary; they used to enter google's normaliser in the eigensolver's basis (0.62-0.67
    as x's neurons were permuted, against 0.9986 over the 3 that exist). compute_pwcca raises here
    (its pinv square root of y's covariance meets NaN)."""
    x, y = exactly_rank_deficient_pair()
    ref = ref_google_pwcca_by_definition if variant == "google" else ref_pwcca
    for a, b in ((x, y), (y, x)):  # x weights either way (PR #9's branch when it is the second)
        value = cca.pwcca(a, b, variant=variant)
        assert value == pytest.approx(ref(a, b), abs=1e-10)
        assert value > 0.99
    # what must not move it: the order of the weighting side's neurons, duplicates of the other's
    value = cca.pwcca(x, y, variant=variant)
    for seed in range(4):
        perm = np.random.default_rng(seed).permutation(5)
        assert cca.pwcca(x[:, perm], y, variant=variant) == pytest.approx(value, abs=1e-10)
    assert cca.pwcca(x, np.concatenate([y, y[:, :2]], axis=1), variant=variant) == pytest.approx(value, abs=1e-10)


@pytest.mark.parametrize("variant", ["google", "paper"])
def test_pwcca_refuses_when_an_existing_direction_cannot_be_told_from_those_without_partner(variant):
    """One of y's 3 directions is uncorrelated with x: the third existing canonical direction of x
    (rho 0) is any of x's last three directions, so no weighting of it is defined."""
    rng = np.random.default_rng(2)
    n = 200
    x = rng.normal(size=(n, 5))
    design = np.column_stack([np.ones(n), x])
    w = rng.normal(size=n)
    w -= design @ np.linalg.lstsq(design, w, rcond=None)[0]  # orthogonal to x's span and to constants
    y = np.column_stack([x[:, 0] + 0.3 * rng.normal(size=n), x[:, 1], w]) @ rng.normal(size=(3, 10))
    with pytest.raises(measures.UndefinedSimilarityError, match="PWCCA is undefined here: y has only 3 defined"):
        cca.pwcca(x, y, variant=variant)


def test_the_definition_written_in_data_space_is_compute_pwcca():
    """What the rank-deficient test compares with is the same weighting where both are defined."""
    for seed in range(3):
        for x, y in (data(40 + seed, n=200, dx=7, dy=11), data(40 + seed, n=60, dx=6, dy=9, conv=True)):
            assert ref_google_pwcca_by_definition(x, y) == pytest.approx(ref_google_pwcca(x, y, 0.0), abs=1e-11)
            assert ref_google_pwcca_by_definition(y, x) == pytest.approx(ref_google_pwcca(y, x, 0.0), abs=1e-11)


def test_pwcca_variants_differ_on_well_posed_inputs():
    """Why the default changed: the paper's variates and compute_pwcca's QR vectors weight differently."""
    gaps = []
    for seed in range(5):
        x, y = low_rank_data(50 + seed, noise=0.5)
        gaps.append(abs(cca.pwcca(x, y) - cca.pwcca(x, y, variant="paper")))
    assert max(gaps) > 1e-3


def test_pwcca_rejects_unknown_variants():
    x, y = data(28)
    with pytest.raises(measures.SimilarityInputError, match="google, paper"):
        cca.pwcca(x, y, variant="morcos")


def test_gram_route_keeps_its_accuracy_up_to_where_it_hands_over_to_qr(monkeypatch):
    """Spread singular values: the Gram route is taken while eps * cond(covariance) <= 1e-8 and is
    then within 1e-8 of the SVD reference; beyond, the QR route answers (and is as accurate)."""
    calls = []
    factorise = _cca._factorise
    monkeypatch.setattr(_cca, "_factorise", lambda sides: calls.append(1) or factorise(sides))
    rng = np.random.default_rng(29)
    n, d = 2000, 40
    u, _ = np.linalg.qr(rng.normal(size=(n, d)))
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    for spread, route in ((1e2, "gram"), (1e3, "gram"), (1e5, "qr")):
        x = (u * np.logspace(0, -np.log10(spread), d)) @ v.T * np.sqrt(n)
        y = x[:, :20] @ rng.normal(size=(20, 30)) + 0.5 * rng.normal(size=(n, 30))
        calls.clear()
        rho = cca.cca(x, y)
        assert (calls == []) == (route == "gram"), spread
        assert np.abs(rho - ref_cca(x, y)).max() < 1e-8
        assert cca.pwcca(x, y) == pytest.approx(ref_google_pwcca_by_definition(x, y), abs=1e-8)
