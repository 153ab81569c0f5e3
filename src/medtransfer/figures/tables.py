"""The summary table: mean and sd over seeds of every run metric, as CSV and GitHub Markdown."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from medtransfer.atomic import write_text
from medtransfer.columns import RUN_COLUMNS
from medtransfer.figures.io import RUN_KEY, check_unique, read_results, with_protocol
from medtransfer.figures.style import init_sort_key, metric_label
from medtransfer.protocols import PROTOCOLS

GROUP = ("dataset", "arch", "protocol", "init", "fraction")
# Summarised when the column is there; test_kappa (ordinal tasks) and test_dice / test_iou
# (segmentation) only when some run has a value.
SUMMARY_METRICS = ("test_auc", "test_acc", "test_kappa", "val_auc", "test_dice", "test_iou", "train_seconds")
_ALWAYS = ("test_auc", "test_acc", "val_auc", "train_seconds")


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset × arch × protocol × init × fraction: ``init_name``, ``source``, ``k``,
    ``n_seeds`` and ``<metric>_mean`` / ``<metric>_sd`` (sample sd, ddof=1; NaN for one seed).

    Rows follow the order datasets and architectures first appear, inits in the canonical order
    (RI … WT, k ascending) and fractions ascending; protocols in the order of
    :data:`medtransfer.protocols.PROTOCOLS` (finetune, linear, knn).
    """
    metrics = with_protocol(metrics)
    metrics_present = [m for m in SUMMARY_METRICS if m in metrics.columns]
    metrics_present = [m for m in metrics_present if m in _ALWAYS or metrics[m].notna().any()]
    folds = "fold" in metrics.columns and metrics["fold"].notna().any()  # a cross-validated study
    columns = list(GROUP[:4]) + ["init_name", "source", "k", "fraction", "n_seeds"] + (["n_folds"] if folds else [])
    columns += [f"{m}_{stat}" for m in metrics_present for stat in ("mean", "sd")]
    if metrics.empty:
        return pd.DataFrame(columns=columns)
    groups = metrics.groupby(list(GROUP), sort=False, dropna=False)
    table = groups[["init_name", "source", "k"]].first()
    table["n_seeds"] = groups["seed"].nunique()
    if folds:  # the means and sds are over every run of the cell: seeds × folds
        table["n_folds"] = groups["fold"].nunique()
    for metric in metrics_present:
        table[f"{metric}_mean"] = groups[metric].mean()
        table[f"{metric}_sd"] = groups[metric].std(ddof=1)
    table = table.reset_index()
    dataset_rank = {d: i for i, d in enumerate(pd.unique(metrics["dataset"]))}
    arch_rank = {a: i for i, a in enumerate(pd.unique(metrics["arch"]))}
    order = sorted(
        table.index,
        key=lambda i: (
            dataset_rank[table.at[i, "dataset"]],
            arch_rank[table.at[i, "arch"]],
            PROTOCOLS.index(table.at[i, "protocol"]) if table.at[i, "protocol"] in PROTOCOLS else len(PROTOCOLS),
            init_sort_key(table.at[i, "init"]),
            table.at[i, "fraction"],
        ),
    )
    return table.loc[order, columns].reset_index(drop=True)


def _mean_sd(mean: float, sd: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if sd is None or math.isnan(sd):
        return f"{mean:.3f}"  # one seed: no spread to report (n seeds says so)
    return f"{mean:.3f} ± {sd:.3f}"


def to_markdown(table: pd.DataFrame) -> str:
    """GitHub table of :func:`summarise`'s output with "mean ± sd" cells (3 decimals)."""
    metrics = [c[: -len("_mean")] for c in table.columns if c.endswith("_mean")]
    folds = "n_folds" in table.columns  # a cross-validated study: one more count column
    header = ["dataset", "arch", "protocol", "init", "fraction", "n seeds"] + (["n folds"] if folds else [])
    header += [metric_label(m) for m in metrics]
    over = "seeds × folds" if folds else "seeds"
    lines = [
        f"Mean ± sd (sample sd, ddof=1) over {over}; a single value means one {'run' if folds else 'seed'}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 5 + ["---:"] * (1 + folds + len(metrics))) + "|",
    ]
    for row in table.itertuples(index=False):
        row = row._asdict()
        cells = [str(row["dataset"]), str(row["arch"]), str(row["protocol"]), str(row["init"]),
                 f"{row['fraction']:g}"]
        cells.append(str(int(row["n_seeds"])))
        if folds:
            cells.append(str(int(row["n_folds"])))
        cells += [_mean_sd(row[f"{m}_mean"], row[f"{m}_sd"]) for m in metrics]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if table.empty:
        lines.append("| " + " | ".join(["no data"] + [""] * (len(header) - 1)) + " |")
    return "\n".join(lines) + "\n"


def frame_markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """Any tidy frame as a GitHub table; floats to ``digits`` decimals, NaN as "–"."""
    def cell(value) -> str:
        if isinstance(value, float):
            return "–" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "|".join(["---"] * len(frame.columns)) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def summary_table(metrics_csv: str | Path, out_csv: str | Path, out_md: str | Path) -> pd.DataFrame:
    """Summarise metrics.csv over seeds (see :func:`summarise`); write ``out_csv`` (full
    precision) and ``out_md`` (a GitHub table), each atomically. Returns the table."""
    metrics = with_protocol(read_results(metrics_csv, RUN_COLUMNS + ("test_auc", "test_acc", "val_auc",
                                                                     "train_seconds")))
    check_unique(metrics, RUN_KEY + ("protocol",), metrics_csv)
    table = summarise(metrics)
    write_text(out_csv, table.to_csv(index=False))
    write_text(out_md, to_markdown(table))
    return table
