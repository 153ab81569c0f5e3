"""Transfer gain against domain distance (Matsoukas et al. 2022, the FID figures).

Per (target, architecture, fraction, source): the gain of WT from the source over RI (mean ± sd
over seeds, :func:`medtransfer.analysis.gain.gain_over_ri`), the gain of ST from the same source,
and the share of WT's gain that the weight statistics do not explain,

    st_share = (WT − ST) / (WT − RI)          (group means over seeds)

— 1 when ST is no better than RI (all of the gain is in the weights themselves), 0 when ST
matches WT; NaN with a note when WT does not beat RI (the ratio then has no meaning) or an init
is missing. Each row carries the FID between the source's dataset and the target
(domain_distance.csv). Rows are kept, with a ``note``, where the study lacks RI, WT or ST runs,
so the figures can say so instead of silently dropping a target.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medtransfer.analysis.gain import gain_over_ri, mean_sd, read_finetune_metrics
from medtransfer.columns import FID_GAIN_COLUMNS
from medtransfer.errors import DataError

log = logging.getLogger(__name__)

def fid_gain(distance: pd.DataFrame, metrics: pd.DataFrame, metric: str,
             source_datasets: dict[str, dict[str, str]]) -> pd.DataFrame:
    """fid_gain rows from domain_distance rows and metrics.csv rows (fine-tuning runs).

    ``source_datasets``: {source: {arch: dataset it was pretrained on}} (``Study.source_datasets``).
    """
    gains = gain_over_ri(metrics, metric)
    rows = []
    groups = gains[["dataset", "arch", "fraction"]].drop_duplicates().sort_values(["dataset", "arch", "fraction"])
    for dataset, arch, fraction in groups.itertuples(index=False):
        group = gains[(gains["dataset"] == dataset) & (gains["arch"] == arch) & (gains["fraction"] == fraction)]
        for source, by_arch in sorted(source_datasets.items()):
            source_dataset = by_arch.get(arch)
            if source_dataset is None:
                continue
            match = distance[(distance["source"] == source) & (distance["target"] == dataset)]
            if match.empty:
                log.info("no FID of source %s and target %s: left out", source, dataset)
                continue
            wt = group[(group["init_name"] == "WT") & (group["source"] == source) & group["k"].isna()]
            st = group[(group["init_name"] == "ST") & (group["source"] == source)]
            ri = group[group["init"] == "RI"]
            wt_gain, wt_sd, n_wt = mean_sd(wt["gain"])
            st_gain, st_sd, n_st = mean_sd(st["gain"])
            missing = [name for name, runs in (("RI", ri), (f"WT_{source}", wt), (f"ST_{source}", st)) if runs.empty]
            note = f"no {', '.join(missing)} runs" if missing else ""
            share = float("nan")
            if n_wt and n_st and len(ri):
                if wt_gain > 0:
                    share = (wt_gain - st_gain) / wt_gain  # (WT − ST) / (WT − RI), WT − RI = the mean gain
                else:
                    note = f"WT_{source} does not beat RI: no share"
            rows.append({"dataset": dataset, "arch": arch, "fraction": float(fraction), "source": source,
                         "source_dataset": source_dataset, "features": match["features"].iloc[0],
                         "fid": float(match["fid"].iloc[0]), "metric": metric, "n_ri": int(len(ri)), "n_wt": n_wt,
                         "n_st": n_st, "ri_mean": float(ri[metric].mean()) if len(ri) else np.nan,
                         "wt_mean": float(wt[metric].mean()) if n_wt else np.nan,
                         "st_mean": float(st[metric].mean()) if n_st else np.nan, "wt_gain_mean": wt_gain,
                         "wt_gain_sd": wt_sd, "st_gain_mean": st_gain, "st_gain_sd": st_sd, "st_share": share,
                         "note": note})
    return pd.DataFrame(rows, columns=list(FID_GAIN_COLUMNS))


def fid_gain_table(spec: dict) -> pd.DataFrame:
    """fid_gain.csv from the domain_distance.csv and metrics.csv named in ``spec``."""
    path = Path(spec["domain_distance"])
    if not path.is_file():
        raise DataError(f"{path} does not exist; run the domain_distance rule first")
    distance = pd.read_csv(path, dtype={"source": str, "target": str, "source_dataset": str, "features": str},
                           keep_default_na=False, na_values=[""])
    metrics = read_finetune_metrics(spec["metrics"], spec["metric"])
    return fid_gain(distance, metrics, spec["metric"], spec["source_datasets"])
