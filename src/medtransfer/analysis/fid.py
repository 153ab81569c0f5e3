"""Domain distance: the Fréchet distance between the feature distributions of two datasets (FID).

Each dataset is embedded once per embedder (the pooled features of a fixed network) and reduced to
its statistics, ``n``, the mean ``mu`` [D] and the covariance ``sigma`` [D, D] (float64), streamed
batch by batch (:class:`StreamingMoments`), so memory is bounded by one batch and the D × D
matrix, not by the dataset. The distance of two such Gaussians is

    FD² = ‖mu1 − mu2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2}        (:func:`frechet_distance`)

The embedder (``analysis.fid.features``) is a timm model name (default ``inception_v3``: the
pool features at 299 px of timm's ``inception_v3.tv_in1k``, Google's ImageNet weights as ported
by torchvision; *not* the TF "FID Inception" weights of pytorch-fid, so values compare within a
study, not with published FID numbers), or the name of one of the study's sources, whose
pretrained backbone (for ``analysis.fid.arch``, default the study's first architecture) embeds
both datasets: that works offline. Both datasets of a pair pass through the same preprocessing —
the embedder's normalisation (timm's mean/std, or the source's pretraining normalisation) and the
same input size — so a difference in intensity or contrast between domains counts as distance.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from medtransfer import data
from medtransfer.atomic import atomic_path
from medtransfer.columns import DOMAIN_DISTANCE_COLUMNS
from medtransfer.errors import ConfigError, DataError, WeightsError

log = logging.getLogger(__name__)

STATS_VERSION = 1
# Relative size (to the largest eigenvalue) below which a negative eigenvalue of a covariance or
# of Σ1^{1/2} Σ2 Σ1^{1/2} is round-off of a positive semi-definite matrix, clipped to zero; a
# more negative one means the input was not a covariance at all.
NEGATIVE_EIGENVALUE_TOLERANCE = 1e-8


# ------------------------------------------------------------------------------------ statistics


class StreamingMoments:
    """Mean and covariance of rows added in chunks, in float64.

    Each chunk is centred on its own mean and merged with Chan et al.'s pairwise update
    (``M2 = M2_a + M2_b + δ δᵀ n_a n_b / n``) rather than by accumulating raw sums Σx and Σxxᵀ:
    the raw form subtracts n·μμᵀ from Σxxᵀ at the end and loses every digit the mean shares with
    the spread (ReLU features have means of the order of their standard deviation). Memory: the
    chunk plus two D-vectors and one D × D matrix.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None  # Σ (x − mean)(x − mean)ᵀ

    def update(self, chunk: np.ndarray | torch.Tensor) -> None:
        """Add rows ``chunk`` [B, D] (any float dtype; converted to float64)."""
        x = chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"chunk must be [rows, features], got shape {x.shape}")
        if not np.isfinite(x).all():
            raise DataError("features contain NaN or infinite values; the embedder diverged on these images")
        b = x.shape[0]
        if b == 0:
            return
        mean_b = x.mean(0)
        centred = x - mean_b
        m2_b = centred.T @ centred
        if self.mean is None:
            self.n, self.mean, self.m2 = b, mean_b, m2_b
            return
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"chunk has {x.shape[1]} features, earlier chunks {self.mean.shape[0]}")
        n = self.n + b
        delta = mean_b - self.mean
        self.m2 += m2_b + np.outer(delta, delta) * (self.n * b / n)
        self.mean = self.mean + delta * (b / n)
        self.n = n

    def covariance(self) -> np.ndarray:
        """Sample covariance [D, D] (ddof = 1, as np.cov)."""
        if self.n < 2:
            raise DataError(f"a covariance needs at least 2 images, got {self.n}")
        return self.m2 / (self.n - 1)


# ------------------------------------------------------------------------------------ distance


def _psd_eigh(matrix: np.ndarray, what: str, vectors: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Eigenvalues (clipped at 0) and eigenvectors (None unless ``vectors``; eigvalsh is ~3x faster)
    of a symmetric positive semi-definite matrix."""
    symmetric = (matrix + matrix.T) / 2
    values, vectors = np.linalg.eigh(symmetric) if vectors else (np.linalg.eigvalsh(symmetric), None)
    scale = max(float(np.abs(values).max(initial=0.0)), np.finfo(np.float64).tiny)
    if values.min(initial=0.0) < -NEGATIVE_EIGENVALUE_TOLERANCE * scale * max(1, len(values)):
        raise ValueError(f"{what} is not positive semi-definite (eigenvalue {values.min():.3g} "
                         f"against a largest of {scale:.3g})")
    return np.clip(values, 0.0, None), vectors


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ1 Σ2)^{1/2} for symmetric positive semi-definite Σ1, Σ2, in float64.

    Σ1 Σ2 is similar to the symmetric S Σ2 S with S = Σ1^{1/2} (both have the eigenvalues of
    Σ1 Σ2, which are real and ≥ 0), so the trace is Σ √λ over the eigenvalues of S Σ2 S, each from
    a symmetric eigendecomposition. Unlike ``scipy.linalg.sqrtm(Σ1 @ Σ2)`` (a Schur decomposition
    of a non-symmetric product) this returns no complex parts and no NaN when a covariance is
    singular (fewer images than features, n < D, the usual case for 2048-d Inception features on a
    small medical set): zero eigenvalues stay zero; tiny negative ones from round-off are clipped.
    """
    values, vectors = _psd_eigh(np.asarray(sigma1, dtype=np.float64), "sigma1")
    root = (vectors * np.sqrt(values)) @ vectors.T
    inner = root @ np.asarray(sigma2, dtype=np.float64) @ root
    eigenvalues, _ = _psd_eigh(inner, "Σ1^{1/2} Σ2 Σ1^{1/2}", vectors=False)
    return float(np.sqrt(eigenvalues).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance (its square, as FID reports it) of N(mu1, sigma1) and N(mu2, sigma2).

    Shapes: mu [D], sigma [D, D]; float64 throughout. Symmetric in its two Gaussians, 0 for equal
    ones, finite and ≥ 0 for singular covariances (the negative round-off of a near-zero result is
    clipped to 0).

    >>> import numpy as np
    >>> round(frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)), 6)  # 2 + 2·(1 − 2)²
    4.0
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shapes do not fit: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    value = mean_term + float(np.trace(sigma1) + np.trace(sigma2)) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(0.0, value)


# ------------------------------------------------------------------------------------ embedders


def _imagenet_embedder(spec: dict) -> tuple[torch.nn.Module, dict, int]:
    """A timm model with ImageNet weights (through medtransfer.models.weights), its normalisation
    and its input size; offline without the weights: one WeightsError naming the config key."""
    import timm

    from medtransfer.models.weights import IMAGENET_WEIGHTS, load_source_state_dict

    name = spec["name"]
    full = name if "." in name else IMAGENET_WEIGHTS.get(name, name)
    try:
        state = load_source_state_dict({"kind": "timm", "arch": full, **({"file": spec["file"]} if spec.get("file") else {})})
    except WeightsError as error:
        raise WeightsError(
            f"analysis.fid.features: {name!r} needs the timm ImageNet weights {full!r}, which are not available "
            f"({str(error).split('. ')[0]}). Offline, set analysis.fid.features to one of the study's sources (its pretrained "
            "backbone embeds the images, no download), give the weights as analysis.fid.file, "
            "or set analysis.fid: false"
        ) from None
    model = timm.create_model(full, pretrained=False, num_classes=0)
    missing, _ = model.load_state_dict(state, strict=False)  # the ImageNet head is not needed
    if missing:
        raise WeightsError(f"analysis.fid.features: weights for {full!r} lack {missing[:3]}")
    cfg = model.pretrained_cfg
    normalize = {"mean": list(cfg["mean"]), "std": list(cfg["std"])}
    return model, normalize, int(cfg["input_size"][-1])


def _source_embedder(spec: dict) -> tuple[torch.nn.Module, dict | str, int | None]:
    """The backbone of a study source (its pretrained weights, as a WT init loads them), the
    normalisation it was pretrained with and its pretraining input size."""
    from medtransfer.training.stage import initialised_model

    model, _, _ = initialised_model({**spec, "seed": 0}, 1)  # the head is not used
    normalize = spec["normalize"]
    if normalize == "dataset":  # the source dataset's statistics, applied to both datasets alike
        info = data.read_info(spec["normalize_cache"])
        normalize = {"mean": list(info.mean), "std": list(info.std)}
    size = spec.get("image_size")
    if not size and spec.get("normalize_cache"):
        size = data.read_info(spec["normalize_cache"]).image_size
    return model, normalize, size


def embedder(spec: dict) -> tuple[torch.nn.Module, dict | str, int | None]:
    """(model in eval mode, normalisation for the loader, its input size in px or None when it has
    none of its own) of an embedder spec (``medtransfer.study.Study.fid_embedder_spec``)."""
    if spec["kind"] == "timm":
        model, normalize, size = _imagenet_embedder(spec)
    elif spec["kind"] == "source":
        model, normalize, size = _source_embedder(spec)
    else:
        raise ConfigError(f"analysis.fid.features: unknown embedder kind {spec['kind']!r}")
    return model.eval(), normalize, size


def subset(n_examples: int, max_images: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded subset of ``max_images`` images (None: every image)."""
    if max_images is None or max_images >= n_examples:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(n_examples)[:max_images]).astype(np.int64)


@torch.no_grad()
def dataset_statistics(spec: dict, device: torch.device) -> dict:
    """Embed ``spec["split"]`` of ``spec["cache"]`` and write its statistics to ``spec["out"]``.

    The stats file (HDF5): ``mean`` float64 [D], ``covariance`` float64 [D, D], attributes ``n``,
    ``dataset``, ``split``, ``features`` (the embedder label), ``size`` (px), ``normalize`` (JSON),
    ``version``. Returns a summary (n, D, seconds).
    """
    from medtransfer.models.embedding import pooled_features

    start = time.monotonic()
    model, normalize, default_size = embedder(spec["embedder"])
    size = spec.get("size") or default_size
    if not size:  # both datasets of a pair must be embedded at one size
        raise ConfigError(f"analysis.fid.size: embedder {spec['embedder']['label']} has no input size of its own; "
                          "give one in px")
    size = int(size)
    model.to(device)
    n_split = len(data.read_labels(spec["cache"], spec["split"]))
    indices = subset(n_split, spec.get("max_images"), spec.get("seed", 0))
    loader = data.make_loader(spec["cache"], spec["split"], batch_size=spec.get("batch_size", 100), shuffle=False,
                              indices=indices, device=device, channels=3, normalize=normalize, image_size=size,
                              resize_mode="bilinear", max_memory_mb=spec.get("max_memory_mb", 1024),
                              num_workers=spec.get("num_workers", 0))
    moments = StreamingMoments()
    for x, _ in loader:
        moments.update(pooled_features(model, x.to(device)).float())
    covariance = moments.covariance()
    with atomic_path(spec["out"], suffix=".h5") as tmp, h5py.File(tmp, "w") as handle:
        handle.create_dataset("mean", data=moments.mean)
        handle.create_dataset("covariance", data=covariance)
        handle.attrs.update(n=moments.n, dataset=spec["dataset"], split=spec["split"],
                            features=spec["embedder"]["label"], size=size, version=STATS_VERSION,
                            normalize=json.dumps(normalize))
    seconds = time.monotonic() - start
    log.info("FID statistics of %s/%s with %s at %d px: n = %d, D = %d, %.1f s", spec["dataset"], spec["split"],
             spec["embedder"]["label"], size, moments.n, len(moments.mean), seconds)
    return {"n": moments.n, "features": len(moments.mean), "size": size, "seconds": seconds}


def read_statistics(path: str | Path) -> dict:
    """{"mean", "covariance", "n", "dataset", "split", "features", "size"} of a stats file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"FID statistics {path} do not exist; run the fid_stats rule (snakemake {path})")
    with h5py.File(path, "r") as handle:
        if int(handle.attrs.get("version", -1)) != STATS_VERSION:
            raise DataError(f"{path} is not a version-{STATS_VERSION} FID statistics file; delete it and rerun")
        out = {key: handle[key][()] for key in ("mean", "covariance")}
        out.update({key: handle.attrs[key] for key in ("n", "dataset", "split", "features", "size")})
    out["n"], out["size"] = int(out["n"]), int(out["size"])
    return out


def domain_distance(spec: dict) -> pd.DataFrame:
    """domain_distance.csv rows: one per (source, target) of ``spec["pairs"]`` ({"source",
    "source_dataset", "target", "source_stats", "target_stats"}), FID from the two stats files.
    Sources in ``spec["skipped_sources"]`` (timm / file weights without a dataset) are logged."""
    for source in spec.get("skipped_sources", []):
        log.warning("source %s has no dataset to measure (timm or file weights): no FID; name a stand-in dataset "
                    "under analysis.fid.source_datasets.%s", source, source)
    rows, cache = [], {}

    def stats(path: str) -> dict:
        if path not in cache:
            cache[path] = read_statistics(path)
        return cache[path]

    for pair in spec["pairs"]:
        a, b = stats(pair["source_stats"]), stats(pair["target_stats"])
        if (a["features"], a["size"]) != (b["features"], b["size"]):
            raise DataError(f"{pair['source_stats']} ({a['features']}, {a['size']} px) and {pair['target_stats']} "
                            f"({b['features']}, {b['size']} px) were embedded differently; rerun fid_stats for both")
        rows.append({"source": pair["source"], "source_dataset": pair["source_dataset"], "target": pair["target"],
                     "features": a["features"], "size": a["size"], "split": a["split"], "n_source": a["n"],
                     "n_target": b["n"], "n_features": len(a["mean"]),
                     "fid": frechet_distance(a["mean"], a["covariance"], b["mean"], b["covariance"])})
    return pd.DataFrame(rows, columns=list(DOMAIN_DISTANCE_COLUMNS))
