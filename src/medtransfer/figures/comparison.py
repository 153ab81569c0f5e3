"""Sources compared the way Hosseinzadeh Taher et al. 2021 rank them: per target, protocol and
fraction, each init's test metric (mean ± sd over seeds) and an independent two-sample t-test
(Student's, equal variances) of its seeds against those of a reference init (e.g. the
supervised source, ``analysis.reference``)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from scipy import stats

from medtransfer.atomic import write_text
from medtransfer.columns import RUN_COLUMNS
from medtransfer.figures.io import RUN_KEY, check_unique, read_results, with_protocol
from medtransfer.figures.style import init_sort_key, metric_label, size_text
from medtransfer.protocols import PROTOCOLS

CELL = ("dataset", "arch", "protocol", "fraction")
#: Seed sd below this (in metric units) counts as no spread at all.
NO_SPREAD = 1e-9


def compare_to_reference(metrics: pd.DataFrame, reference: str, metric: str = "test_auc") -> pd.DataFrame:
    """One row per cell × init: ``n_seeds``, ``mean``, ``sd`` (ddof=1), ``diff`` (mean − the
    reference's mean) and ``p_value`` of the two-sided t-test against the reference's seeds (NaN
    for the reference itself, where either side has fewer than 2 seeds, and where neither side
    varies over seeds)."""
    metrics = with_protocol(metrics).dropna(subset=[metric])
    rows = []
    for cell, group in metrics.groupby(list(CELL), sort=False):
        ref = group.loc[group["init"] == reference, metric].to_numpy(float)
        for init, runs in group.groupby("init", sort=False):
            values = runs[metric].to_numpy(float)
            p_value = math.nan
            # no test where neither side varies over seeds (a frozen WT source at 100 % gives the same
            # number for every seed: the seeds are then not repeated trials, and the difference is exact)
            spread = max(values.std(ddof=1) if len(values) > 1 else 0.0, ref.std(ddof=1) if len(ref) > 1 else 0.0)
            if init != reference and len(values) > 1 and len(ref) > 1 and spread > NO_SPREAD:
                p_value = float(stats.ttest_ind(values, ref, equal_var=True).pvalue)
            rows.append({**dict(zip(CELL, cell)), "init": init, "reference": reference, "n_seeds": len(values),
                         "mean": values.mean(), "sd": values.std(ddof=1) if len(values) > 1 else math.nan,
                         "diff": values.mean() - ref.mean() if len(ref) else math.nan, "p_value": p_value})
    table = pd.DataFrame(rows, columns=[*CELL, "init", "reference", "n_seeds", "mean", "sd", "diff", "p_value"])
    if table.empty:
        return table
    protocol_rank = {p: i for i, p in enumerate(PROTOCOLS)}
    table["_order"] = [(d, a, protocol_rank.get(p, 9), f, init_sort_key(i)) for d, a, p, f, i in
                       table[["dataset", "arch", "protocol", "fraction", "init"]].itertuples(index=False)]
    return table.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


def comparison_markdown(table: pd.DataFrame, metric: str = "test_auc") -> str:
    """One GitHub table per target: rows protocol × fraction, columns inits, cells "mean ± sd (p)"."""
    if table.empty:
        return "no runs\n"
    out = [f"{metric_label(metric)}, mean ± sd over seeds; p: two-sided two-sample t-test against "
           f"{table['reference'].iloc[0]} (Student's, equal variances).", ""]
    for (dataset, arch), part in table.groupby(["dataset", "arch"], sort=False):
        inits = sorted(dict.fromkeys(part["init"]), key=init_sort_key)
        out += [f"**{dataset}** ({arch})", "", "| protocol | fraction | " + " | ".join(inits) + " |",
                "|---|---:|" + "---:|" * len(inits)]
        for (protocol, fraction), cell in part.groupby(["protocol", "fraction"], sort=False):
            by_init = cell.set_index("init")
            cells = []
            for init in inits:
                if init not in by_init.index:
                    cells.append("–")
                    continue
                row = by_init.loc[init]
                text = f"{row['mean']:.3f}" + ("" if math.isnan(row["sd"]) else f" ± {row['sd']:.3f}")
                if not math.isnan(row["p_value"]):
                    text += f" (p {row['p_value']:.2g})"
                cells.append(text)
            out.append(f"| {protocol} | {size_text(fraction)} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def comparison_table(metrics_csv: str | Path, out_csv: str | Path, out_md: str | Path, reference: str,
                     metric: str = "test_auc") -> pd.DataFrame:
    """Write :func:`compare_to_reference` of metrics.csv as CSV and Markdown (atomically)."""
    metrics = read_results(metrics_csv, RUN_COLUMNS + (metric,))
    check_unique(with_protocol(metrics), RUN_KEY + ("protocol",), metrics_csv)
    table = compare_to_reference(metrics, reference, metric)
    write_text(out_csv, table.to_csv(index=False))
    write_text(out_md, comparison_markdown(table, metric))
    return table
