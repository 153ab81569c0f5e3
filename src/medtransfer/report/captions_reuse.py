"""Captions of the feature-reuse and cross-run figures (figures/reuse.py, figures/domain.py).

Each is a :class:`~medtransfer.report.caption_tools.Caption` named in its figure's catalog row
(:mod:`medtransfer.figures.catalog`). Same conventions (:mod:`medtransfer.report.caption_tools`):
each gets the figure's tidy CSV and returns one bullet per panel of the figure, means ± sample sd
over seeds with the seed count.

The "What the paper found" paragraphs keep to what REFERENCES.md (the shared reference facts) records; a finding
taken from elsewhere (the analysis modules' docstrings) is marked second-hand, as that file asks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from medtransfer.columns import (
    FID_GAIN_CAPTION_COLUMNS,
    FILTER_KERNEL_COLUMNS,
    LAYER_KNN_READ_COLUMNS,
    PREDICTION_SIMILARITY_READ_COLUMNS,
    REINIT_READ_COLUMNS,
    REPRESENTATION_GAIN_RUNS_READ_COLUMNS,
    WEIGHT_DRIFT_READ_COLUMNS,
)
from medtransfer.figures.reuse import METRIC_NAMES
from medtransfer.figures.style import measure_label, metric_label, sort_inits
from medtransfer.report.caption_tools import (
    baseline_init,
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

# The figures draw test AUC unless told otherwise (plot_reinit / plot_layer_knn: metric="auc").
DRAWN_METRIC = "auc"
# plot_representation_gain's default measure when the workflow names none.
DRAWN_MEASURE = "linear_cka_debiased"
PANEL = ("dataset", "arch", "fraction")


def _metric_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Rows of the metric the figure draws (AUC, else the first metric in the CSV)."""
    if frame.empty:
        return frame, DRAWN_METRIC
    metric = DRAWN_METRIC if (frame["metric"] == DRAWN_METRIC).any() else str(frame["metric"].iloc[0])
    return frame[frame["metric"] == metric].dropna(subset=["value"]), metric


def _metric_text(rows: pd.DataFrame, metric: str) -> str:
    """'test AUC': the split the rows were scored on (a ``split`` column, test when absent) and
    the metric, as the figure's axis names them."""
    split = str(rows["split"].iloc[0]) if "split" in rows.columns and len(rows) else "test"
    return f"{split} {METRIC_NAMES.get(metric, metric.replace('_', ' '))}"


def _per_block(runs: pd.DataFrame, value: str) -> pd.DataFrame:
    """mean and seed count of ``value`` per block of one init, in block order."""
    grouped = runs.groupby(["block_index", "block"])[value]
    table = pd.DataFrame({"mean": grouped.mean(), "n": grouped.count()}).reset_index()
    return table.sort_values("block_index", kind="stable").reset_index(drop=True)


def _block_text(runs: pd.DataFrame, value: str, block_index: int) -> str:
    """'block2 0.120 ± 0.010': one init's seeds at one block."""
    rows = runs[runs["block_index"] == block_index]
    return f"{rows['block'].iloc[0]} {mean_sd(rows[value])}"


def _seed_count(rows: pd.DataFrame) -> str:
    """'2 seeds per initialisation' from the seeds each init has in ``rows``."""
    return seeds_text(rows.groupby("init")["seed"].nunique()) + " per initialisation"


# ---- feature reuse (figures/reuse.py) ---------------------------------------------------------


@caption(
    columns=WEIGHT_DRIFT_READ_COLUMNS,
    shows="""How far fine-tuning moved each canonical block's weights: the relative L2 drift
    ‖θ_final − θ_init‖₂ / ‖θ_init‖₂ over the block's learnable parameters (BatchNorm running
    statistics left out), blocks from input to head on x, one line per initialisation (mean over
    seeds, band ± sample sd), one panel per target, fraction and architecture. A log axis when the
    means span more than 30×; blocks with an all-zero init (no scale) are left out.""",
    paper="""Matsoukas et al. 2022 measure the L2 distance of each layer's weights from their
    initialisation to see where WT's weights are kept and where they are relearned; Raghu et al.
    2019 found that large models move less from their initialisation and that pretrained and
    randomly initialised networks' representations differ most in the lowest layers.""",
)
def weight_drift(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame = frame.dropna(subset=["relative"])
    lines = []
    for (dataset, arch, fraction), rows in panel_groups(frame, PANEL):
        inits = sort_inits(rows["init"])
        base = baseline_init(inits)
        base_blocks = _per_block(rows[rows["init"] == base], "relative").set_index("block_index")["mean"]
        lines.append(f"{panel(dataset, arch, fraction)}, relative drift ({_seed_count(rows)}):")
        for init in inits:
            runs = rows[rows["init"] == init]
            blocks = _per_block(runs, "relative")
            least = blocks.loc[blocks["mean"].idxmin(), "block_index"]
            most = blocks.loc[blocks["mean"].idxmax(), "block_index"]
            text = (f"  {lit(init)}: least {_block_text(runs, 'relative', least)}, "
                    f"most {_block_text(runs, 'relative', most)}")
            if init != base:
                # compared block by block with the baseline's seed means, on the blocks both have
                shared = blocks.set_index("block_index")["mean"].align(base_blocks, join="inner")
                if len(shared[0]):
                    below = int((shared[0] < shared[1]).sum())
                    text += (f"; less than {lit(base)} in {below} of {len(shared[0])} blocks (mean over blocks "
                             f"{num(shared[0].mean())} vs {num(shared[1].mean())})")
            lines.append(text)
    return lines or ["no weight-drift rows with a relative drift"]


@caption(
    columns=REINIT_READ_COLUMNS,
    shows="""Re-initialisation robustness: the drop of the test metric (AUC) when one block at a
    time is set back to its initial weights and BatchNorm statistics while the others stay
    fine-tuned, blocks from input to head on x, one line per initialisation (mean over seeds, band
    ± sample sd); the last point of each panel, apart, resets every block at once. A large drop
    means the network needs what fine-tuning did to that block; near 0 the block did not need to
    change.""",
    paper="""Matsoukas et al. 2022 test each layer's robustness to re-initialisation (after Zhang,
    Bengio & Singer 2019, "Are all layers created equal?") to find which layers the fine-tuned
    network depends on (its critical layers).""",
)
def reinit(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame, metric = _metric_rows(frame)
    frame = frame[frame["block"] != "none"].dropna(subset=["drop"])  # `none` is the fine-tuned network itself
    lines = []
    for (dataset, arch, fraction), rows in panel_groups(frame, PANEL):
        lines.append(f"{panel(dataset, arch, fraction)}, drop in {_metric_text(rows, metric)} "
                     f"({_seed_count(rows)}):")
        for init in sort_inits(rows["init"]):
            runs = rows[rows["init"] == init]
            single, every = runs[runs["block"] != "all"], runs[runs["block"] == "all"]
            parts = []
            if len(single):
                blocks = _per_block(single, "drop")
                parts.append(", ".join(_block_text(single, "drop", i) for i in blocks["block_index"]))
                top = blocks.loc[blocks["mean"].idxmax()]
                parts.append(f"largest {top['block']} ({num(top['mean'])})")
            if len(every):
                parts.append(f"all blocks at once {mean_sd(every['drop'])}")
            lines.append(f"  {lit(init)}: " + "; ".join(parts))
    return lines or ["no re-initialisation rows"]


@caption(
    columns=LAYER_KNN_READ_COLUMNS,
    shows="""Layer-wise k-NN: each block's output, globally average-pooled, scored by the weighted
    k-NN classifier of the k-NN protocol (cosine, votes exp(cos / T)) with the run's training
    subset as memory and the test split as queries; blocks from input to head on x, one colour per
    initialisation, solid after fine-tuning and dashed at init (mean over seeds, band ± sample
    sd). A block that scores well at init already carries features the target can use.""",
    paper="""Matsoukas et al. 2022 run a layer-wise k-NN (k = 200) on the features of every layer
    to see at which depth the transferred features become useful for the target; the dashed lines
    add what each initialisation gave before any fine-tuning.""",
)
def layer_knn(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame, metric = _metric_rows(frame)
    names = {"init": "at init", "final": "fine-tuned"}
    lines = []
    for (dataset, arch, fraction), rows in panel_groups(frame, PANEL):
        lines.append(f"{panel(dataset, arch, fraction)}, k-NN {_metric_text(rows, metric)} "
                     f"({_seed_count(rows)}):")
        for init in sort_inits(rows["init"]):
            runs = rows[rows["init"] == init]
            last = int(runs["block_index"].max())
            states = [s for s in ("init", "final") if (runs["state"] == s).any()]
            ends = " → ".join(f"{mean_sd(runs.loc[(runs['state'] == s) & (runs['block_index'] == last), 'value'])} "
                              f"{names[s]}" for s in states)
            parts = [f"{runs.loc[runs['block_index'] == last, 'block'].iloc[0]} {ends}"]
            for state in reversed(states):  # the fine-tuned peak first: what the solid line shows
                at_state = runs[runs["state"] == state]
                blocks = _per_block(at_state, "value")
                top = blocks.loc[blocks["mean"].idxmax(), "block_index"]
                parts.append(f"peak {names[state]} at {_block_text(at_state, 'value', top)}")
            lines.append(f"  {lit(init)}: " + "; ".join(parts))
    return lines or ["no layer-wise k-NN rows"]


@caption(
    columns=FILTER_KERNEL_COLUMNS,
    shows="""The kernels of the first convolution of one cell's runs (one target, architecture,
    fraction and seed; every initialisation a row), at init (left) and after fine-tuning (right),
    RGB for 3 input channels else gray, each kernel min-max normalised on its own: the figure shows
    each kernel's pattern, not its scale; the change in scale is given below.""",
    paper="""Raghu et al. 2019 found that pretrained and randomly initialised networks' representations
    differ most in the lowest layers and that large models move less from their initialisation;
    the first convolution is where both can be seen directly (Raghu et al. and Juodelyte et al.
    look at its filters, as the filters analysis cites them; second-hand).""",
)
def filters(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    if frame.empty:
        return ["no first-layer kernel rows"]
    # the cell the figure draws: that of the first row (plot_filters does the same)
    cell = frame.iloc[0]
    frame = frame[(frame["dataset"] == cell["dataset"]) & (frame["arch"] == cell["arch"])
                  & (frame["fraction"] == cell["fraction"]) & (frame["seed"] == cell["seed"])]
    weight = ["filter", "channel", "row", "col"]
    parts, changes = [], {}
    for init in sort_inits(frame["init"]):
        runs = frame[frame["init"] == init]
        start, end = runs[runs["state"] == "init"], runs[runs["state"] == "final"]
        paired = start[weight + ["value"]].merge(end[weight + ["value"]], on=weight, suffixes=("_init", "_final"))
        if paired.empty:
            parts.append(f"{lit(init)} has no pair of init and fine-tuned kernels")
            continue
        # the analysis's own definition (filters.csv), on the kernels the figure draws; imported
        # here so the other figure jobs do not pay torch's import
        import torch

        from medtransfer.analysis.filters import kernel_change

        stats_ = kernel_change(torch.from_numpy(paired["value_init"].to_numpy()),
                               torch.from_numpy(paired["value_final"].to_numpy()))
        change, scale = stats_["mean_abs_change"], stats_["init_mean_abs"]
        changes[init] = change
        relative = f" ({100 * stats_['relative_change']:.1f} % of mean ``|W_init|`` {num(scale)})" if scale > 0 else ""
        parts.append(f"{lit(init)} {num(change)}{relative}")
    n_filters = frame["filter"].nunique()
    head = (f"{panel(cell['dataset'], cell['arch'], cell['fraction'])}, seed {int(cell['seed'])} (1 seed), "
            f"{lit(cell['layer'])}, {n_filters} kernels drawn: mean ``|W_final − W_init|`` ")
    text = head + "; ".join(parts)
    if len(changes) > 1:
        least, most = min(changes, key=changes.get), max(changes, key=changes.get)
        text += f"; least changed {lit(least)}, most {lit(most)}"
    return [text]


# ---- cross-run analyses (figures/domain.py) ---------------------------------------------------


def _fid_panels(frame: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """The FID figures' panels: architecture (rows) × fraction (columns)."""
    return panel_groups(frame, ("arch", "fraction"))


def _fid_title(arch: str, fraction: float) -> str:
    return f"**{arch} · {pct(fraction)} data**"


def _fid_pair(row) -> str:
    """'``lesions`` from ``natural``, FID(``shapes``, ``lesions``) 68.9': a point of the FID figures."""
    return (f"{lit(row.dataset)} from {lit(row.source)}, FID({lit(row.source_dataset)}, {lit(row.dataset)}) "
            f"{num(row.fid, 1)}")


def _rank_text(fid: pd.Series, value: pd.Series, what: str) -> str:
    """The direction of ``value`` with FID over a panel's (source, target) pairs; two pairs rank
    trivially (ρ = ±1), so a trend is stated from three."""
    ok = fid.notna() & value.notna()
    fid, value = fid[ok], value[ok]
    if len(fid) == 2:
        return "; 2 pairs: too few for a trend with FID"
    if len(fid) < 2 or fid.nunique() < 2 or value.nunique() < 2:
        return ""
    rho = stats.spearmanr(fid, value).statistic
    trend = "falls" if rho < 0 else "rises"
    return f"; {what} {trend} as FID grows (Spearman ρ = {rho:+.2f}, n = {len(fid)} pairs)"


@caption(
    columns=FID_GAIN_CAPTION_COLUMNS,
    shows="""The gain of weight transfer over random init (WT − RI, test metric, mean ± sample sd
    over seeds) against the Fréchet distance (FID) between the dataset the source was pretrained
    on and the target, one point per (target, source), colour the source and marker the target;
    panels are architectures (rows) and fractions of the training data (columns). FIDs compare
    within a study (the embedder is named on the x axis), not with published values.""",
    paper="""Matsoukas et al. 2022 found the gain of WT over RI growing as the domain distance
    (FID) between source and target shrinks, that is falling as the FID grows (and growing as the
    dataset shrinks).""",
)
def fid_gain(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame = frame.dropna(subset=["fid"])
    lines = []
    for (arch, fraction), rows in _fid_panels(frame):
        metric = metric_label(rows["metric"].iloc[0])
        parts, notes = [], []
        for row in rows.sort_values("fid", kind="stable").itertuples(index=False):
            where = _fid_pair(row)
            if np.isfinite(row.wt_gain_mean):
                spread = f" ± {num(row.wt_gain_sd)}" if int(row.n_wt) > 1 else ""
                parts.append(f"{where}: {signed(row.wt_gain_mean)}{spread} "
                             f"({int(row.n_wt)} WT, {int(row.n_ri)} RI seeds)")
            else:
                notes.append(f"{where}: {row.note or 'no gain'}")
        text = f"{_fid_title(arch, fraction)}, WT − RI in {metric}: " + ("; ".join(parts) or "no gain to draw")
        text += _rank_text(rows["fid"], rows["wt_gain_mean"], "the gain")
        lines.append(text)
        lines += [f"  {note}" for note in notes]
    return lines or ["no (source, target) pairs with an FID"]


@caption(
    columns=FID_GAIN_CAPTION_COLUMNS,
    shows="""The share of WT's gain over RI that the weight statistics alone do not explain,
    (WT − ST) / (WT − RI) from the seed means, against the FID between the source's pretraining
    dataset and the target: 1 means ST is no better than RI (the gain is in the weights
    themselves), 0 means ST recovers all of it. One point per (target, source); panels are
    architectures and fractions; a pair without RI, WT or ST runs, or where WT does not beat RI,
    is named instead of drawn.""",
    paper="""Matsoukas et al. 2022 separate the scale of the pretrained weights (ST, each tensor
    redrawn from the source tensor's mean and sd) from their features (WT) and relate the gain of
    transfer to the domain distance: it grows as the FID shrinks.""",
)
def fid_st_share(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame = frame.dropna(subset=["fid"])
    lines = []
    for (arch, fraction), rows in _fid_panels(frame):
        parts, notes = [], []
        for row in rows.sort_values("fid", kind="stable").itertuples(index=False):
            where = _fid_pair(row)
            if np.isfinite(row.st_share):
                parts.append(f"{where}: {num(row.st_share, 2)} (WT − RI {signed(row.wt_gain_mean)}, "
                             f"ST − RI {signed(row.st_gain_mean)}; {int(row.n_wt)} WT, {int(row.n_st)} ST, "
                             f"{int(row.n_ri)} RI seeds)")
            else:
                notes.append(f"{where}: {row.note or 'no share'}")
        text = f"{_fid_title(arch, fraction)}, (WT − ST) / (WT − RI): " + ("; ".join(parts) or "no share to draw")
        text += _rank_text(rows["fid"], rows["st_share"], "the share")
        lines.append(text)
        lines += [f"  {note}" for note in notes]
    return lines or ["no (source, target) pairs with an FID"]


def _agreement_text(rows: pd.DataFrame) -> str:
    """'agreement 0.800 ± 0.020, κ 0.600 ± 0.030' over a cell's seed pairs (the count of pairs is
    given beside it, so one pair is just its value)."""

    def spread(values: pd.Series) -> str:
        return num(values.iloc[0]) if len(values) == 1 else mean_sd(values)

    kappa = rows["kappa"].dropna()
    kappa_text = spread(kappa) if len(kappa) else "undefined (one class predicted)"
    return f"agreement {spread(rows['agreement'])}, κ {kappa_text}"


@caption(
    columns=PREDICTION_SIMILARITY_READ_COLUMNS,
    shows="""How alike two fine-tuned runs predict on the test set: per target, architecture and
    fraction, init × init heatmaps of the share of images with the same predicted class
    (agreement) and of Cohen's κ (agreement corrected for chance), mean over seeds; off the
    diagonal two initialisations at the same seed, on it two consecutive seeds of one
    initialisation, the noise floor a pair of inits is read against. κ is n/a where both runs
    predict one class for every image.""",
    paper="""Juodelyte et al. compare ImageNet, RadImageNet and random initialisation of fine-tuned
    ResNet-50s beyond their test AUC (e.g. chest X-ray 98.7 / 98.8 / 82.5 %), including how alike
    the networks' predictions are (second-hand, from this project's analysis notes: confirm against
    the paper). Two initialisations agree meaningfully less than two seeds of one only when they sit
    below the seed noise floor.""",
)
def prediction_similarity(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame = frame.dropna(subset=["agreement"])
    lines = []
    for (dataset, arch, fraction), rows in panel_groups(frame, PANEL):
        floors = rows[rows["kind"] == "seeds"]
        floor = {init: floors[floors["init_a"] == init] for init in sort_inits(floors["init_a"])}
        lines.append(f"{panel(dataset, arch, fraction)}:")
        for (init_a, init_b), pairs in rows[rows["kind"] == "inits"].groupby(["init_a", "init_b"], sort=False):
            text = f"  {lit(init_a)} vs {lit(init_b)} ({seeds_text([len(pairs)])}): {_agreement_text(pairs)}"
            levels = [floor[i]["agreement"].mean() for i in (init_a, init_b) if i in floor]
            if levels:
                below = pairs["agreement"].mean() < min(levels)
                text += (f"; {'below' if below else 'not below'} the seed noise floor"
                         f"{'s' if len(levels) > 1 else ''} ({', '.join(num(v) for v in levels)})")
            lines.append(text)
        for init, pairs in floor.items():
            pairs_text = seeds_text([len(pairs)]).replace("seed", "seed pair")
            lines.append(f"  noise floor {lit(init)}, two seeds of it ({pairs_text}): {_agreement_text(pairs)}")
    return lines or ["no pairs of runs with an agreement"]


@caption(
    columns=REPRESENTATION_GAIN_RUNS_READ_COLUMNS,
    shows="""Each fine-tuning run's similarity of a block between init and final state against its
    gain over random init (its test metric minus the mean of the RI runs of the same target,
    architecture and fraction), one panel per block and target × architecture, colour the
    initialisation, with the Spearman correlation over the panel's runs (inits, fractions and
    seeds pooled; RI runs left out unless ``include_ri``).""",
    paper="""Juodelyte et al. relate how much of a source's representation a fine-tuned network
    keeps to how much it gains; the analysis follows their report of no correlation between the
    two (second-hand, from this project's analysis notes: confirm against the paper).""",
)
def representation_gain(frame: pd.DataFrame, measure: str | None = None) -> list[str]:
    frame = frame.dropna(subset=["similarity", "gain"])
    if frame.empty:
        return ["no runs with both a similarity and a gain over RI"]
    # the measure the figure draws: the one named (else the figure's default) when the CSV has it,
    # else the CSV's first, the same fallback as plot_representation_gain
    measure = measure or DRAWN_MEASURE
    if not (frame["measure"] == measure).any():
        measure = str(frame["measure"].iloc[0])
    frame = frame[frame["measure"] == measure]
    pooled = frame["dataset"].nunique() > 1
    panels = panel_groups(frame, ("dataset", "arch"))
    if pooled:  # pooled over targets, as Juodelyte et al. pool and representation_gain.csv does
        panels += panel_groups(frame.assign(dataset="all targets"), ("dataset", "arch"))
    lines = []
    for (dataset, arch), rows in panels:
        metric = metric_label(rows["metric"].iloc[0])
        parts, low_p = [], 0
        blocks = rows.drop_duplicates("block_index").sort_values("block_index")
        for block in blocks["block"]:
            points = rows[rows["block"] == block]
            rho, p = _spearman(points["similarity"], points["gain"])
            if np.isfinite(rho):
                parts.append(f"{block} ρ = {rho:+.2f} (p = {p:.2g}, n = {len(points)})")
                low_p += int(p < 0.05)
            else:
                parts.append(f"{block} ρ undefined (n = {len(points)})")
        lines.append(f"{panel(dataset, arch)}, Spearman ρ of {measure_label(measure)}(init, final) with the "
                     f"gain in {metric}: " + ", ".join(parts) + f"; p < 0.05 in {low_p} of {len(parts)} blocks")
    return lines


def _spearman(x: pd.Series, y: pd.Series) -> tuple[float, float]:
    """scipy's Spearman ρ and two-sided p, NaN below 3 runs or for a constant side, as the figure
    (and representation_gain.csv) treat them."""
    if len(x) < 3 or x.nunique() < 2 or y.nunique() < 2:
        return float("nan"), float("nan")
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)
