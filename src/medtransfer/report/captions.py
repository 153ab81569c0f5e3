"""Captions of the performance, convergence and similarity figures, and the caption file of any
figure: what a figure shows, what the paper it follows found, and what this run found, with
numbers, seeds and spread.

A figure's caption is a :class:`~medtransfer.report.caption_tools.Caption` named in its catalog
row (:mod:`medtransfer.figures.catalog`):

    @caption(columns=(...), shows="...", paper="...")
    def weight_drift(frame: pd.DataFrame, measure: str | None) -> list[str]:
        return ["one bullet per panel of the figure, with its numbers", ...]

``frame`` is the figure's tidy CSV (the catalog row's ``input``), read with the ``columns``
checked. A figure without a caption of its own gets :func:`generic_caption`, so every figure is
in the report; :func:`missing_captions` lists those. The feature-reuse and cross-run figures'
captions are in :mod:`medtransfer.report.captions_reuse`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medtransfer.atomic import write_text
from medtransfer.columns import INIT_FINAL_COLUMNS, PAIRS_COLUMNS, RUN_COLUMNS
from medtransfer.figures.catalog import FIGURES
from medtransfer.figures.convergence import epochs_to_fraction_of_best
from medtransfer.figures.io import appearance_order, read_results, with_protocol
from medtransfer.figures.style import measure_label, parse_init, sort_inits
from medtransfer.protocols import PROTOCOLS
from medtransfer.report.caption_tools import (
    baseline_init,
    bullets,
    caption,
    lit,
    mean_sd,
    num,
    panel,
    panel_groups,
    pct,
    seeds_text,
    signed,
)


def missing_captions(names: Iterable[str] | None = None) -> list[str]:
    """Figures (of ``names``, default every figure of the catalog) that have no caption of their
    own and get the generic one."""
    return [name for name in (FIGURES if names is None else names)
            if name not in FIGURES or FIGURES[name].caption_ref is None]


def _finetune(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    frame = with_protocol(frame)
    return frame[frame["protocol"] == "finetune"].dropna(subset=[metric])


def _stats(frame: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """mean, sd (ddof=1) and n of ``value`` per ``by`` group."""
    grouped = frame.groupby(list(by), sort=False)[value]
    return pd.DataFrame({"mean": grouped.mean(), "sd": grouped.std(ddof=1), "n": grouped.count()}).reset_index()


# ---- performance ------------------------------------------------------------------------------

# What the AUC captions read of metrics.csv (its columns: medtransfer.columns.METRICS_COLUMNS).
_RUNS_WITH_TEST_AUC = RUN_COLUMNS + ("test_auc",)


@caption(
    columns=_RUNS_WITH_TEST_AUC,
    shows="""Test AUC of every fine-tuning run, one panel per target dataset and architecture: x is
    the fraction of the training data, colour the initialisation (the same colour in every figure),
    each dot a seed and the tick with whiskers the mean ± sample sd over seeds.""",
    paper="""Raghu et al. 2019 found transfer from ImageNet close to random initialisation on large
    medical sets (retina, ResNet-50: 96.4 → 96.7 AUC) and more useful with less data (5,000 retina
    images: 92.2 → 94.6); Matsoukas et al. 2022 found the gain of weight transfer (WT) over random
    init (RI) growing as the dataset shrinks.""",
)
def test_auc(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    return _test_metric(frame, "test_auc") or ["no fine-tuning runs with a test AUC"]


def _test_metric(frame: pd.DataFrame, metric: str) -> list[str]:
    """Per panel: the best init at each fraction and every init's gap to the baseline, in ``metric``."""
    frame = _finetune(frame, metric)
    lines = []
    for (dataset, arch), runs in panel_groups(frame, ("dataset", "arch")):
        stats = _stats(runs, ("init", "fraction"), metric)
        inits = sort_inits(runs["init"])
        fractions = sorted(runs["fraction"].unique())
        base = baseline_init(inits)
        lines.append(f"{panel(dataset, arch)} ({seeds_text(stats['n'])} per initialisation):")
        best = []
        for fraction in fractions:
            cell = stats[stats["fraction"] == fraction].sort_values("mean", ascending=False)
            top = cell.iloc[0]["init"]
            values = runs.loc[(runs["fraction"] == fraction) & (runs["init"] == top), metric]
            best.append(f"{lit(top)} {mean_sd(values)} at {pct(fraction)}")
        lines.append("  best: " + "; ".join(best))
        for init in inits:
            if init == base:
                continue
            gaps = []
            for fraction in fractions:
                a = runs.loc[(runs["fraction"] == fraction) & (runs["init"] == init), metric]
                b = runs.loc[(runs["fraction"] == fraction) & (runs["init"] == base), metric]
                if len(a) and len(b):
                    gaps.append((fraction, a.mean() - b.mean()))
            if not gaps:
                continue
            text = ", ".join(f"{signed(gap)} at {pct(fraction)}" for fraction, gap in gaps)
            if len(gaps) > 1 and gaps[0][1] > max(gaps[-1][1], 0.0):
                text += f" (larger with {pct(gaps[0][0])} of the data)"
            lines.append(f"  {lit(init)} − {lit(base)}: {text}")
    return lines


@caption(
    columns=RUN_COLUMNS,  # test_dice exists only once a study has a segmentation target
    shows="""Test Dice of every fine-tuning run of a segmentation target (a U-Net decoder over the
    initialised encoder; the foreground classes' mean Dice per image, averaged over images), one
    panel per target and architecture: x is the fraction of the training images, colour the
    initialisation, each dot a seed and the tick with whiskers the mean ± sample sd.""",
    paper="""Hosseinzadeh Taher et al. 2021 evaluate every source on segmentation (SIIM-ACR
    pneumothorax, DRIVE vessels, Montgomery lungs) as well as classification, and find that what
    transfers best differs between the two: fine-grained (iNat2021) pretraining is better for
    segmentation, supervised ImageNet classification for classification.""",
)
def test_dice(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    lines = _test_metric(frame, "test_dice") if "test_dice" in frame else []
    return lines or ["no fine-tuning runs with a test Dice"]


@caption(
    columns=_RUNS_WITH_TEST_AUC,
    shows="""Random initialisation (RI), weight statistics only (ST, each tensor redrawn from the
    source tensor's mean and sd, Raghu's "Mean Var") and full weight transfer (WT) side by side:
    bars are the mean test AUC over seeds from chance (0.5), whiskers ± sample sd, dots the seeds;
    rows are datasets, columns fractions of the training data.""",
    paper="""Raghu et al. 2019 found that weight statistics alone recover much of transfer's
    speed-up; Matsoukas et al. 2022 use ST to separate the scale of the pretrained weights from
    their features: the part of the RI → WT gap that ST does not close is feature reuse.""",
)
def init_comparison(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame = _finetune(frame, "test_auc")
    frame = frame[frame["init_name"].isin(["RI", "ST", "WT"])]
    lines = []
    for (dataset, arch, fraction), runs in panel_groups(frame, ("dataset", "arch", "fraction")):
        values = {init: runs.loc[runs["init"] == init, "test_auc"] for init in sort_inits(runs["init"])}
        means = ", ".join(f"{lit(init)} {mean_sd(v)}" for init, v in values.items())
        parts = [f"{panel(dataset, arch, fraction)}: {means}"]
        if "RI" in values:
            ri = values["RI"].mean()
            for init, v in values.items():
                family, source, _ = parse_init(init)
                if family != "ST":
                    continue
                wt = values.get(f"WT_{source}")
                if wt is None:
                    continue
                gap = wt.mean() - ri
                if gap > 0 and v.mean() >= ri:
                    share = (v.mean() - ri) / gap
                    parts.append(f"{lit(init)} closes {100 * share:.0f} % of the RI → {lit('WT_' + source)} "
                                 f"gap ({signed(gap)})")
                elif gap > 0:
                    parts.append(f"{lit(init)} is below RI ({signed(v.mean() - ri)}): it closes none of the "
                                 f"RI → {lit('WT_' + source)} gap ({signed(gap)})")
                else:
                    parts.append(f"{lit('WT_' + source)} does not beat RI ({signed(gap)}): no gap for ST to close")
        lines.append("; ".join(parts))
    return lines or ["no RI, ST or WT fine-tuning runs"]


@caption(
    columns=_RUNS_WITH_TEST_AUC,
    shows="""Test AUC against k, the number of lowest canonical blocks transferred from the source
    (WT-ST-k: the rest from weight statistics; WT-RI-k: the rest random), mean ± sd over seeds with
    seeds as faint dots; ST and RI sit at k = 0 and WT at k = all, each also a dashed line with its
    ± sd band.""",
    paper="""Matsoukas et al. 2022 (Fig. 3) sweep k to find where the benefit of transfer lives and
    find that reusing the early layers accounts for much of it: a curve that reaches the WT line at
    small k says the same.""",
)
def metric_vs_k(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame = _finetune(frame, "test_auc")
    partial = frame[frame["init_name"].isin(["WT-ST", "WT-RI"]) & frame["k"].notna()]
    lines = []
    for (dataset, arch, fraction), runs in panel_groups(partial, ("dataset", "arch", "fraction")):
        cell = frame[(frame["dataset"] == dataset) & (frame["arch"] == arch) & (frame["fraction"] == fraction)]
        for series, sweep in runs.groupby(runs["init_name"] + "_" + runs["source"], sort=False):
            family, source = series.split("_", 1)
            stats = _stats(sweep, ("k",), "test_auc").sort_values("k")
            curve = ", ".join(f"k = {int(k)}: {num(m)}" for k, m in zip(stats["k"], stats["mean"]))
            text = f"{panel(dataset, arch, fraction)}, {lit(family + '-k')} from {lit(source)}: {curve}"
            wt = cell.loc[cell["init"] == f"WT_{source}", "test_auc"]
            if len(wt):
                level = wt.mean() - (wt.std(ddof=1) if len(wt) > 1 else 0.0)
                reached = stats[stats["mean"] >= level]
                text += f"; WT {mean_sd(wt)}"
                if len(reached):
                    text += f", reached within its sd from k = {int(reached['k'].iloc[0])}"
                else:
                    text += ", not reached at any k"
            lines.append(text)
    return lines or ["no WT-ST-k or WT-RI-k fine-tuning runs"]


@caption(
    columns=_RUNS_WITH_TEST_AUC,
    shows="""Test AUC against the fraction of training labels (log scale), one panel per target and
    architecture (rows) and protocol (columns: fine-tuning, linear probe and k-NN on frozen
    features), one line per initialisation (mean over seeds, band ± sd).""",
    paper="""Truong et al. 2021 found self-supervised ImageNet features (SimCLR, SwAV, DINO) better
    than supervised ones under linear evaluation at small data (+14.79 % kappa on diabetic
    retinopathy, +5.4 % AUC on PCam), with smaller differences after fine-tuning.""",
)
def protocols(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame = with_protocol(frame).dropna(subset=["test_auc"])
    lines = []
    for (dataset, arch), runs in panel_groups(frame, ("dataset", "arch")):
        lines.append(f"{panel(dataset, arch)}:")
        protocols = [p for p in PROTOCOLS if p in set(runs["protocol"])]
        for protocol in protocols:
            rows = runs[runs["protocol"] == protocol]
            stats = _stats(rows, ("init", "fraction"), "test_auc")
            parts = []
            for fraction in sorted(rows["fraction"].unique()):
                cell = stats[stats["fraction"] == fraction].sort_values("mean", ascending=False)
                top = cell.iloc[0]["init"]
                text = (f"at {pct(fraction)} best {lit(top)} "
                        f"{mean_sd(rows.loc[(rows['fraction'] == fraction) & (rows['init'] == top), 'test_auc'])}")
                ri = rows.loc[(rows["fraction"] == fraction) & (rows["init"] == "RI"), "test_auc"]
                if top != "RI" and len(ri):
                    text += f" (RI {mean_sd(ri)})"
                parts.append(text)
            lines.append(f"  {protocol} ({seeds_text(stats['n'])}): " + "; ".join(parts))
    return lines or ["no runs with a test AUC"]


# ---- convergence ------------------------------------------------------------------------------

# What the AUC captions read of history.csv (its columns: medtransfer.columns.HISTORY_COLUMNS).
_EPOCHS_WITH_VAL_AUC = RUN_COLUMNS + ("epoch", "val_auc")


@caption(
    columns=_EPOCHS_WITH_VAL_AUC,
    shows="""Validation AUC after every epoch of fine-tuning, one line per initialisation (mean over
    seeds, band ± sample sd), one panel per dataset, fraction of the training data and
    architecture. Lines that rise earlier converge faster; compare where they flatten, not only
    where they end.""",
    paper="""Raghu et al. 2019 found that pretrained weights speed up convergence, and that weight
    statistics alone (Mean-Var) recover much of that speed-up.""",
)
def convergence(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    return _convergence_of(frame, "val_auc", "validation AUC") or ["no validation AUC in the history"]


def _convergence_of(frame: pd.DataFrame, metric: str, label: str) -> list[str]:
    """Per panel: each init's mean ``metric`` at the first and the last epoch."""
    frame = frame.dropna(subset=[metric])
    lines = []
    for (dataset, arch, fraction), runs in panel_groups(frame, ("dataset", "arch", "fraction")):
        first, last = int(runs["epoch"].min()), int(runs["epoch"].max())
        parts = []
        for init in sort_inits(runs["init"]):
            rows = runs[runs["init"] == init]
            start = rows.loc[rows["epoch"] == first, metric]
            end = rows.loc[rows["epoch"] == last, metric]
            parts.append(f"{lit(init)} {num(start.mean())} → {num(end.mean())}")
        n = runs.groupby("init")["seed"].nunique()
        lines.append(f"{panel(dataset, arch, fraction)}, mean {label} at epoch {first} → epoch {last} "
                     f"({seeds_text(n)}): " + ", ".join(parts))
    return lines


@caption(
    columns=RUN_COLUMNS + ("epoch",),  # val_dice likewise
    shows="""Validation Dice after every epoch of fine-tuning a segmentation target, one line per
    initialisation (mean over seeds, band ± sample sd), one panel per dataset, fraction of the
    training images and architecture.""",
    paper="""Raghu et al. 2019 found that pretrained weights speed up convergence of classifiers;
    this asks the same of an encoder under a randomly initialised decoder.""",
)
def convergence_dice(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    lines = _convergence_of(frame, "val_dice", "validation Dice") if "val_dice" in frame else []
    return lines or ["no validation Dice in the history"]


@caption(
    columns=_EPOCHS_WITH_VAL_AUC,
    shows="""Epochs each run needed to first reach 95 % of its own best validation AUC, per
    initialisation; x is the fraction of the training data, colour the initialisation, dots the
    seeds, tick and whiskers the mean ± sample sd. Fewer epochs is faster convergence, whatever
    the level reached.""",
    paper="""This is the convergence-speed measure of Raghu et al. 2019, where pretrained weights and
    Mean-Var statistics both reach it in fewer epochs than random initialisation.""",
)
def epochs_to_95(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    table = epochs_to_fraction_of_best(frame, 0.95) if not frame.empty else pd.DataFrame()
    lines = []
    for (dataset, arch, fraction), runs in panel_groups(table, ("dataset", "arch", "fraction")):
        parts = [f"{lit(init)} {mean_sd(runs.loc[runs['init'] == init, 'epochs_to_target'], digits=1)}"
                 for init in sort_inits(runs["init"])]
        stats = _stats(runs, ("init",), "epochs_to_target").sort_values("mean", kind="stable")
        lines.append(f"{panel(dataset, arch, fraction)}, epochs: " + ", ".join(parts)
                     + f"; fastest {lit(stats.iloc[0]['init'])}")
    return lines or ["no validation AUC in the history"]


# ---- representation similarity ----------------------------------------------------------------


def _measure_rows(frame: pd.DataFrame, measure: str | None) -> tuple[pd.DataFrame, str]:
    """Rows of the measure the figure draws (the first one in the CSV when none is named)."""
    if frame.empty:
        return frame, measure or "linear_cka"
    measure = measure or str(frame["measure"].iloc[0])
    return frame[frame["measure"] == measure].dropna(subset=["value"]), measure


@caption(
    columns=INIT_FINAL_COLUMNS,
    shows="""Similarity (the first of ``analysis.measures``) between each canonical block at
    initialisation and the same block after fine-tuning, on the shared probe set: one line per
    initialisation (mean over seeds, band ± sample sd), blocks from input to head. Near 1 the block
    barely changed (its features were reused); low values mean it was relearned.""",
    paper="""Raghu et al. 2019 (SVCCA) found that large models move little from their
    initialisation and that the lower layers change least; Matsoukas et al. 2022 measure the same
    with CKA to show where WT's features are reused.""",
)
def similarity_init_final(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame, measure = _measure_rows(frame, measure)
    lines = []
    for (dataset, arch, fraction), rows in panel_groups(frame, ("dataset", "arch", "fraction")):
        n = rows.groupby("init")["seed"].nunique()
        lines.append(f"{panel(dataset, arch, fraction)}, {measure_label(measure)} ({seeds_text(n)}):")
        for init in sort_inits(rows["init"]):
            runs = rows[rows["init"] == init]
            stats = runs.groupby(["block_index", "block"])["value"].agg(["mean", "std"]).reset_index()
            stats = stats.sort_values("block_index")
            first, last = stats.iloc[0], stats.iloc[-1]
            text = (f"  {lit(init)}: {first['block']} {mean_sd(runs.loc[runs['block_index'] == first['block_index'], 'value'])}"
                    f" … {last['block']} {mean_sd(runs.loc[runs['block_index'] == last['block_index'], 'value'])}")
            body = stats.iloc[1:-1]  # the head changes most under every init; where below it?
            if len(body):
                low = body.loc[body["mean"].idxmin()]
                text += f"; lowest below the head: {low['block']} {num(low['mean'])}"
            lines.append(text)
    return lines or [f"no {measure} rows"]


def _diagonal(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["block_a_index"] == frame["block_b_index"]]


@caption(
    columns=PAIRS_COLUMNS,
    shows="""Block × block similarity between two fine-tuned networks of different initialisations
    (e.g. WT vs RI), averaged over seed pairs: cell (i, j) compares block i of the first network (y
    axis) with block j of the second (x axis), block 0 at the lower left. The last columns compare
    two seeds of the same initialisation, the noise floor against which a pair is read.""",
    paper="""Layer-by-layer CKA maps as in Kornblith et al. 2019; Raghu et al. 2019 found that
    pretrained and randomly initialised networks differ most in the lowest layers, and Matsoukas et
    al. 2022 compare WT with ST the same way.""",
)
def similarity_pairs_heatmap(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame, measure = _measure_rows(frame, measure)
    diagonal = _diagonal(frame)
    lines = []
    for (dataset, arch, fraction), rows in panel_groups(diagonal, ("dataset", "arch", "fraction")):
        floors = rows[rows["kind"] == "noise_floor"]
        floor_means = {init: floors.loc[floors["init_a"] == init, "value"].mean() for init in sort_inits(floors["init_a"])}
        parts = []
        for pair, runs in rows[rows["kind"] != "noise_floor"].groupby("pair", sort=False):
            per_seed = runs.groupby(["seed_a", "seed_b"])["value"].mean()
            parts.append(f"{lit(pair)} {mean_sd(per_seed)} ({seeds_text([len(per_seed)]).replace('seed', 'seed pair')})")
        text = f"{panel(dataset, arch, fraction)}, mean {measure_label(measure)} of matching blocks: " + ", ".join(parts)
        if floor_means:
            text += "; noise floors " + ", ".join(f"{lit(init)} {num(v)}" for init, v in floor_means.items())
        lines.append(text)
    return lines or [f"no {measure} rows"]


@caption(
    columns=PAIRS_COLUMNS,
    shows="""The diagonal of the block × block similarity: block i of one network against block i
    of the other, one line per pair of initialisations (mean ± sample sd over seed pairs). Shaded
    bands are the seed noise floor of each initialisation (two seeds of it, mean ± sd): a pair
    inside the band is as similar as two reruns of one initialisation; below both bands, the two
    initialisations left that block genuinely different.""",
    paper="""Raghu et al. 2019 found that pretrained and randomly initialised networks differ most
    in the lowest layers; Matsoukas et al. 2022 compare WT and ST block by block with CKA.""",
)
def similarity_pairs_blocks(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame, measure = _measure_rows(frame, measure)
    diagonal = _diagonal(frame)
    lines = []
    for (dataset, arch, fraction), rows in panel_groups(diagonal, ("dataset", "arch", "fraction")):
        floors = rows[rows["kind"] == "noise_floor"]
        # lower edge (mean − sd) of each init's noise-floor band per block, as the figure shades it
        edge = floors.groupby(["init_a", "block_a_index"])["value"].agg(["mean", "std"])
        edge = (edge["mean"] - edge["std"].fillna(0.0)).to_dict()
        for pair, runs in rows[rows["kind"] != "noise_floor"].groupby("pair", sort=False):
            init_a, init_b = runs["init_a"].iloc[0], runs["init_b"].iloc[0]
            stats = runs.groupby(["block_a_index", "block_a"])["value"].mean().reset_index().sort_values("block_a_index")
            apart = []
            for row in stats.itertuples(index=False):
                edges = [edge.get((init, row.block_a_index)) for init in (init_a, init_b)]
                edges = [e for e in edges if e is not None and np.isfinite(e)]
                if edges and row.value < min(edges):
                    apart.append(f"{row.block_a} {num(row.value)} (band from {num(min(edges))})")
            head = f"{panel(dataset, arch, fraction)}, {lit(pair)}: "
            if apart:
                lines.append(head + f"below the noise-floor bands in {len(apart)} of {len(stats)} blocks: " + ", ".join(apart))
            else:
                lines.append(head + f"within a noise floor in every block (mean {measure_label(measure)} "
                             f"{num(stats['value'].mean())})")
    return lines or [f"no {measure} rows"]


# ---- the caption file -------------------------------------------------------------------------


def generic_caption(name: str, frame: pd.DataFrame, csv_path: str | Path) -> str:
    """The caption of a figure without one of its own: what it is drawn from, with counts."""
    facts = [f"{len(frame)} rows"]
    for column, what in (("dataset", "datasets"), ("arch", "architectures"), ("init", "initialisations"),
                         ("fraction", "fractions"), ("seed", "seeds")):  # fmt: skip
        if column in frame.columns and len(frame):
            values = appearance_order(frame[column].dropna())
            shown = [pct(v) if column == "fraction" else str(v) for v in values]
            facts.append(f"{what}: " + ", ".join(lit(v) for v in shown))
    if "value" in frame.columns and frame["value"].notna().any():
        facts.append(f"values from {num(frame['value'].min())} to {num(frame['value'].max())}")
    return (f"**Figure** {lit(name)}, drawn from {lit(csv_path)}. It has no caption of its own yet "
            f"(register one in ``medtransfer.report.captions``).\n\n"
            f"**What this run has.** " + "; ".join(facts) + ".\n")  # fmt: skip


def caption_text(name: str, csv_path: str | Path, measure: str | None = None) -> str:
    """The reStructuredText caption of figure ``name`` drawn from ``csv_path``."""
    figure = FIGURES.get(name)
    spec = figure.caption if figure else None
    if spec is None:
        return generic_caption(name, read_results(csv_path, ()), csv_path)
    frame = read_results(csv_path, spec.columns)
    found = spec.found(frame, measure)
    return (f"**What it shows.** {spec.shows}\n\n"
            f"**What the paper found.** {spec.paper}\n\n"
            f"**What this run found.**\n\n{bullets(found)}\n"
            f"Drawn from {lit(csv_path)} ({len(frame)} rows).\n")  # fmt: skip


def write_caption(name: str, csv_path: str | Path, out: str | Path, measure: str | None = None) -> str:
    """Write the caption of figure ``name`` to ``out`` atomically; return its text."""
    text = caption_text(name, csv_path, measure)
    write_text(out, text)
    return text
