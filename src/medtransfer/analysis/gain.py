"""The gain of a run over random initialisation, shared by the analyses that relate something
(domain distance, representation drift) to how much transfer helped.

gain(run) = the run's test metric − the mean test metric of the RI runs of the same target,
architecture and fraction (over their seeds). The RI mean, not the RI run of the same seed: a
gain then reads "better than random init on average", and a run whose group has no RI run gets
NaN rather than a number.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medtransfer.errors import DataError

GROUP = ["dataset", "arch", "fraction"]
RUN_KEY = ["dataset", "arch", "init", "fraction", "seed"]


def read_finetune_metrics(path: str | Path, metric: str) -> pd.DataFrame:
    """The fine-tuning runs of metrics.csv (frozen-feature protocols left out), with ``metric``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the collect_metrics rule first")
    frame = pd.read_csv(path, dtype={"init": str, "init_name": str, "source": str, "dataset": str, "arch": str},
                        keep_default_na=False, na_values=[""])
    missing = [c for c in RUN_KEY + ["init_name", metric] if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the gain over RI is measured in {metric} "
                        "(analysis.*.metric); pick a column it has or regenerate it")
    if "protocol" in frame.columns:
        frame = frame[frame["protocol"].fillna("finetune").replace("", "finetune") == "finetune"]
    frame = frame[~frame["init_name"].isin(["DVME", "CONCAT"])]  # fusions are no single backbone
    return frame.reset_index(drop=True)


def gain_over_ri(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``metrics`` (one row per run) with ``ri_mean`` (mean ``metric`` of the group's RI runs),
    ``n_ri`` and ``gain`` = ``metric`` − ``ri_mean`` (NaN where the group has no RI run)."""
    ri = metrics[metrics["init"] == "RI"].groupby(GROUP)[metric].agg(ri_mean="mean", n_ri="count").reset_index()
    out = metrics.merge(ri, on=GROUP, how="left")
    out["n_ri"] = out["n_ri"].fillna(0).astype(int)
    out["gain"] = out[metric] - out["ri_mean"]
    return out


def mean_sd(values: pd.Series) -> tuple[float, float, int]:
    """Mean, sample sd (ddof = 1; 0 for one value) and count of the non-NaN values."""
    values = values.dropna().to_numpy(float)
    if values.size == 0:
        return float("nan"), float("nan"), 0
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0, int(values.size)
