"""Frozen-feature protocols against what they replace, in the same run.

1. A linear-probe run (features of train/val/test once + the validation-chosen L-BFGS probe)
   against a fine-tuning run of the same model on the same data (the ssl_transfer recipe: Adam,
   20 epochs, batch 128, float32): wall seconds and the ratio (target: >= 20x cheaper).
2. The k-NN classifier (``medtransfer.models.embedding.knn_scores``) against scikit-learn's
   ``KNeighborsClassifier`` (brute force, cosine) on the same features: uniform votes (our
   temperature -> infinity), the share of identical predictions and the wall seconds of each.

The data is a synthetic ``lesions`` cache built in a temporary folder (28 px, gray, binary) unless
``--cache`` names one of your own. Run from the repository root:

    python benchmarks/protocols.py
    python benchmarks/protocols.py --cache results/data/breastmnist.h5 --arch resnet18_28 --width 0.25
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import KNeighborsClassifier

from medtransfer.data import build_cache
from medtransfer.study import DEFAULT_TRAINING, deep_merge
from medtransfer.models.embedding import knn_scores
from medtransfer.protocols import LINEAR_DEFAULTS
from medtransfer.protocols.features import extract_features
from medtransfer.protocols.probe import probe
from medtransfer.training.finetune import finetune


def _specs(cache: str, arch: str, width: float, out: Path) -> tuple[dict, dict, dict]:
    init = {"name": "RI", "source": None, "k": None, "slim": None, "label": "RI"}
    training = deep_merge(DEFAULT_TRAINING, {"epochs": 20, "batch_size": 128, "num_workers": 0, "amp": "none",
                                             "normalize": {"mean": 0.5, "std": 0.5}})
    common = {"dataset": "bench", "cache": cache, "arch": arch, "arch_options": {"width": width}, "init": init,
              "seed": 0, "training": training}
    run = {**copy.deepcopy(common), "run": "bench/RI/f1/s0", "run_dir": str(out / "finetune"), "source": None,
           "fraction": 1.0}
    features = {**copy.deepcopy(common), "source": None, "out": str(out / "features.h5")}
    linear = {"run": "bench/RI/f1/s0", "protocol": "linear", "run_dir": str(out / "linear"), "dataset": "bench",
              "arch": arch, "init": init, "fraction": 1.0, "seed": 0, "features": features["out"],
              "linear": LINEAR_DEFAULTS}
    return run, features, linear


def linear_vs_finetune(cache: str, arch: str, width: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run, features, linear = _specs(cache, arch, width, Path(tmp))
        start = time.perf_counter()
        extract_features(features, device="cpu")
        feature_seconds = time.perf_counter() - start
        start = time.perf_counter()
        linear_metrics = probe(linear)
        probe_seconds = time.perf_counter() - start
        start = time.perf_counter()
        finetune_metrics = finetune(run, device="cpu", progress=False)
        finetune_seconds = time.perf_counter() - start
    total = feature_seconds + probe_seconds
    print("| run | wall s | test AUC | vs fine-tuning |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| fine-tune (20 epochs) | {finetune_seconds:.1f} | {finetune_metrics['test']['auc']:.3f} | 1x |")
    print(f"| linear probe: features once + probe ({feature_seconds:.1f} + {probe_seconds:.1f} s) | {total:.1f} | "
          f"{linear_metrics['test']['auc']:.3f} | {finetune_seconds / total:.0f}x cheaper |")
    print(f"| linear probe, features already cached (each further fraction / seed) | {probe_seconds:.1f} | "
          f"{linear_metrics['test']['auc']:.3f} | {finetune_seconds / probe_seconds:.0f}x cheaper |\n")


def knn_vs_sklearn(n_memory: int, n_query: int, dim: int, k: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n_memory + n_query)
    features = (centres[labels] + 2.0 * rng.normal(size=(len(labels), dim))).astype(np.float32)
    memory, queries = torch.from_numpy(features[:n_memory]), torch.from_numpy(features[n_memory:])
    memory_labels = torch.from_numpy(labels[:n_memory])
    start = time.perf_counter()
    ours = knn_scores(memory, memory_labels, queries, num_classes=classes, k=k, temperature=1e6).argmax(1).numpy()
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    reference = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(
        features[:n_memory], labels[:n_memory]).predict(features[n_memory:])
    sklearn_seconds = time.perf_counter() - start
    print(f"| k-NN, {n_memory:,} memory x {n_query:,} queries x {dim} features, k = {k} | wall s | same predictions |")
    print("| --- | ---: | ---: |")
    print(f"| scikit-learn KNeighborsClassifier (brute, cosine) | {sklearn_seconds:.2f} | – |")
    print(f"| medtransfer knn_scores (T -> inf: uniform votes) | {ours_seconds:.2f} | "
          f"{100 * (ours == reference).mean():.2f} % (speed-up {sklearn_seconds / ours_seconds:.1f}x) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=None, help="an HDF5 cache (default: a synthetic lesions set)")
    parser.add_argument("--arch", default="resnet18_28")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads, {args.arch} width {args.width}\n")
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache
        if cache is None:
            cache = str(Path(tmp) / "lesions.h5")
            build_cache("bench", {"format": "synthetic", "task": "lesion_presence", "n_train": 1000, "n_val": 300,
                                  "n_test": 600, "size": 28}, cache)
        linear_vs_finetune(cache, args.arch, args.width)
    knn_vs_sklearn(n_memory=20_000, n_query=5_000, dim=512, k=20, classes=10)


if __name__ == "__main__":
    main()
