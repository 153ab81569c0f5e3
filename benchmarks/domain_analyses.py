"""Time the cross-run feature-reuse analyses on the demo study and on a 10,000-image target.

Needs the demo's results (``snakemake --cores 2`` in the repository root first). Each case calls
the function the workflow's job calls, in this process, and reports wall seconds; the FID
statistics also run in fresh subprocesses at 1,000 and 10,000 images to report their peak
resident memory (``ru_maxrss``), which the streamed statistics keep independent of the dataset.
The 10k target is a synthetic cache (``lesion_presence`` at 32 px) written to a temp folder.
The default embedder, timm's Inception-v3 at 299 px, needs ImageNet weights this machine may
not have: its cost is measured with random weights (the same arithmetic) on a few hundred
images and extrapolated. Run from the repository root:

    python benchmarks/domain_analyses.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def demo_study():
    from medtransfer.study import Study, load_config

    return Study(load_config("config.yaml", "workflow/schemas/config.schema.yaml"))


def fid_stats_subprocess(spec: dict, threads: int) -> dict:
    """dataset_statistics in a fresh process: seconds and peak RSS (MB)."""
    code = f"""
import json, resource, time, torch
torch.set_num_threads({threads})
from medtransfer.analysis.fid import dataset_statistics
start = time.perf_counter()
summary = dataset_statistics(json.loads({json.dumps(json.dumps(spec))}), torch.device("cpu"))
print(json.dumps({{"seconds": time.perf_counter() - start, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "n": summary["n"], "features": summary["features"]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only-cca", action="store_true", help="only the CCA subsample cases")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.only_cca:
        rows: list[dict] = []
        cca_cases(demo_study(), lambda *a: (rows.append(a), print(*a, flush=True)))
        return
    from medtransfer.analysis.fid import domain_distance, frechet_distance
    from medtransfer.analysis.predictions import prediction_similarity, prediction_similarity_table
    from medtransfer.analysis.representation_gain import representation_gain
    from medtransfer.data import build_cache

    study = demo_study()
    rows = []

    def record(case: str, size: str, seconds: float, note: str = "") -> None:
        rows.append({"analysis": case, "data": size, "seconds": round(seconds, 3), "note": note})
        print(f"{case:28s} {size:34s} {seconds:8.3f} s  {note}", flush=True)

    # --- FID statistics: the demo's datasets, then 1k and 10k synthetic images ------------------
    embedder = study.fid_embedder()
    for dataset in ("shapes", "lesions"):
        spec = study.fid_stats_spec(embedder, dataset)
        spec["out"] = tempfile.mktemp(suffix=".h5")
        result = fid_stats_subprocess(spec, args.threads)
        record("fid_stats", f"demo {dataset} ({result['n']} × 32 px)", result["seconds"],
               f"{embedder}, D={result['features']}, peak RSS {result['peak_mb']:.0f} MB")
    with tempfile.TemporaryDirectory() as folder:
        big = f"{folder}/big.h5"
        seconds, _ = timed(build_cache, "big", {"format": "synthetic", "task": "lesion_presence", "n_train": 10000,
                                                "n_val": 10, "n_test": 10, "size": 32}, big)
        print(f"(built the 10k cache in {seconds:.1f} s)")
        for n in (1000, 10000):
            spec = {**study.fid_stats_spec(embedder, "lesions"), "cache": big, "dataset": "big", "max_images": n,
                    "out": f"{folder}/stats{n}.h5"}
            result = fid_stats_subprocess(spec, args.threads)
            record("fid_stats", f"synthetic {n} × 32 px", result["seconds"],
                   f"{embedder}, peak RSS {result['peak_mb']:.0f} MB")
        # the default embedder's arithmetic: Inception-v3 (random weights) at 299 px, 256 images
        import timm

        from medtransfer.data import make_loader
        from medtransfer.models.embedding import pooled_features

        model = timm.create_model("inception_v3", pretrained=False, num_classes=0).eval()
        loader = make_loader(big, "train", batch_size=64, shuffle=False, indices=np.arange(256), channels=3,
                             normalize="imagenet", image_size=299, resize_mode="bilinear", num_workers=0)
        start = time.perf_counter()
        with torch.no_grad():
            for x, _ in loader:
                pooled_features(model, x)
        seconds = time.perf_counter() - start
        record("fid_stats (inception_v3)", "256 × 299 px", seconds,
               f"{256 / seconds:.1f} images/s: 10k images ≈ {10000 / (256 / seconds) / 60:.0f} min")

    # --- Fréchet distance from statistics ---------------------------------------------------------
    seconds, _ = timed(domain_distance, study.domain_distance_spec())
    record("fid (domain_distance)", f"demo, {len(study.fid_pairs())} pairs", seconds, "D=128")
    rng = np.random.default_rng(0)
    for d in (128, 2048):
        a, b = rng.normal(size=(4 * d, d)), rng.normal(size=(4 * d, d)) + 0.1
        stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
        seconds, _ = timed(frechet_distance, stats[0][0], stats[0][1], stats[1][0], stats[1][1])
        record("frechet_distance", f"one pair, D={d}", seconds, "two symmetric eigh of D × D")

    # --- prediction similarity ----------------------------------------------------------------------
    total, comparisons = 0.0, 0
    for group in study.prediction_groups():
        spec = study.prediction_similarity_spec(*group)
        seconds, _ = timed(prediction_similarity_table, spec)
        total += seconds
        comparisons += len(spec["comparisons"])
    record("prediction_similarity", f"demo, {comparisons} pairs of 600 test images", total)
    for task, k in (("binary", 2), ("multiclass", 9), ("multilabel", 14)):
        z = rng.normal(size=(10000, k))
        softmax = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        scores = 1 / (1 + np.exp(-z)) if task == "multilabel" else softmax
        seconds, _ = timed(prediction_similarity, task, scores, np.clip(scores + 0.05 * rng.normal(size=z.shape), 0, 1))
        record("prediction_similarity", f"one pair, 10k test images, {task} K={k}", seconds)

    # --- representation vs gain -------------------------------------------------------------------------
    seconds, (table, points) = timed(representation_gain, study.representation_gain_spec())
    record("representation_gain", f"demo, {len(points)} (run, block, measure) points", seconds,
           f"{len(table)} correlations")

    cca_cases(study, record)
    print(pd.DataFrame(rows).to_markdown(index=False))


def cca_cases(study, record) -> None:
    """The CCA subsample protocol on one demo comparison (WT_natural vs RI, seed 0, final)."""
    import warnings

    from medtransfer.analysis.activations import read_activations
    from medtransfer.analysis.cca_subsample import subsampled
    from medtransfer.analysis.pairs import similarity_pairs
    from medtransfer.analysis.measures.cca import cca_mean

    spec = study.pairs_spec("lesions", "cbr_tiny", "1")
    spec["comparisons"] = spec["comparisons"][:1]
    spec["measures"] = ["cca_mean"]
    a, b = (read_activations(spec["comparisons"][0][side]) for side in ("a", "b"))
    protocol = subsampled(cca_mean, channels=64, positions=10000, repeats=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the head's few data points per direction: inflated, known
        # plain CCA needs both blocks on one grid: the matching blocks only
        seconds, _ = timed(lambda: [cca_mean(a[k], b[k]) for k in a])
        record("cca_mean", f"demo, {len(a)} matching blocks", seconds, "plain (all channels and positions)")
        seconds, _ = timed(lambda: [protocol(a[k], b[k]) for k in a])
        record("cca_mean subsampled", f"demo, {len(a)} matching blocks", seconds, "64 channels, 10k positions, 5 repeats")
        spec["cca_subsample"] = {"channels": 64, "positions": 10000, "repeats": 5, "seed": 0}
        seconds, _ = timed(similarity_pairs, spec)
        record("similarity_pairs cca_mean", f"demo, one pair, {len(a)} × {len(b)} blocks", seconds,
               "subsampled (plain CCA cannot pair blocks of different grids)")


if __name__ == "__main__":
    main()
