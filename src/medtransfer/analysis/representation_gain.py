"""Representation vs gain: does a block that stays closer to its init go with a larger gain over
random init? (Juodelyte et al. found no such correlation.)

For every fine-tuning run: a block's similarity between its init and final state (the rows of
similarity_init_final.csv, per measure) and the run's gain over RI
(:func:`medtransfer.analysis.gain.gain_over_ri`). The Spearman rank correlation over runs is
reported per (target, architecture, block, measure), pooling inits, fractions and seeds, and
pooled over targets too (``dataset`` = ``all``, per architecture, as Juodelyte et al. pool their
targets). RI runs are left out by default (``analysis.representation_gain.include_ri``): their
gain is zero by construction up to seed noise, and a random init's similarity to itself measures
something else than how much of a source is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from medtransfer.analysis.gain import RUN_KEY, gain_over_ri, read_finetune_metrics
from medtransfer.columns import (
    REPRESENTATION_GAIN_COLUMNS,
    REPRESENTATION_GAIN_RUNS_COLUMNS,
)
from medtransfer.errors import DataError

MIN_RUNS = 3  # fewer points give no rank correlation worth a p-value


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float, str]:
    """(rho, p, note): scipy's Spearman correlation with its two-sided p-value, or NaN and why."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < MIN_RUNS:
        return float("nan"), float("nan"), f"fewer than {MIN_RUNS} runs"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan"), "constant similarity or gain"
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue), ""


def run_points(similarity: pd.DataFrame, metrics: pd.DataFrame, metric: str, include_ri: bool = False) -> pd.DataFrame:
    """One row per (run, block, measure): its similarity(init, final) and its gain over RI."""
    gains = gain_over_ri(metrics, metric)
    key = [*RUN_KEY, *(["fold"] if "fold" in similarity.columns and "fold" in gains.columns else [])]
    keep = similarity[[*key, "block", "block_index", "measure", "value"]].rename(columns={"value": "similarity"})
    points = keep.merge(gains[[*key, "init_name", "gain"]], on=key, how="inner")
    if not include_ri:
        points = points[points["init"] != "RI"]
    points = points.dropna(subset=["similarity", "gain"]).assign(metric=metric)
    return points[list(REPRESENTATION_GAIN_RUNS_COLUMNS) + key[len(RUN_KEY):]].reset_index(drop=True)


def correlations(points: pd.DataFrame) -> pd.DataFrame:
    """Spearman rows per (dataset, arch, block, measure), and per (arch, block, measure) over
    every target (``dataset`` = ``all``)."""
    rows = []
    pooled = points.assign(dataset="all")
    for frame in (points, pooled):
        for (dataset, arch, block, measure), group in frame.groupby(["dataset", "arch", "block", "measure"], sort=False):
            rho, p, note = spearman(group["similarity"], group["gain"])
            rows.append({"dataset": dataset, "arch": arch, "block": block,
                         "block_index": int(group["block_index"].iloc[0]), "measure": measure,
                         "metric": group["metric"].iloc[0], "spearman": rho, "p_value": p, "n_runs": len(group),
                         "note": note})
    return pd.DataFrame(rows, columns=list(REPRESENTATION_GAIN_COLUMNS))


def representation_gain(spec: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(representation_gain rows, the per-run points) from the CSVs named in ``spec``."""
    path = Path(spec["similarity"])
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the collect_parts rule for it first")
    similarity = pd.read_csv(path, dtype={"init": str, "dataset": str, "arch": str, "block": str},
                             keep_default_na=False, na_values=[""])
    missing = [c for c in [*RUN_KEY, "block", "block_index", "measure", "value"] if c not in similarity.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; regenerate it with the current medtransfer")
    metrics = read_finetune_metrics(spec["metrics"], spec["metric"])
    points = run_points(similarity, metrics, spec["metric"], spec.get("include_ri", False))
    return correlations(points), points
