"""The columns of every tidy CSV, spelled once: the stages that write a CSV and the figures,
captions and tables that read it all import its tuple from here (no torch, no pandas).

Each CSV has its ``*_COLUMNS``: the columns the stage writes, in order. Where a reader needs
fewer (CSVs it is handed by tests or older runs lack the rest), ``*_READ_COLUMNS`` names the
ones it checks for, derived from the CSV's tuple so the two cannot drift apart.
"""

from __future__ import annotations

#: One run of any protocol, in the order every per-run CSV starts with. ``fraction`` is the
#: training size as the config gives it: a fraction in (0, 1], or a count of images (> 1).
RUN_COLUMNS = ("dataset", "arch", "protocol", "init", "init_name", "source", "k", "fraction", "seed")
#: The cross-validation fold (``study.folds``): after ``seed`` in the run columns of a study with
#: folds, and absent from a study without (whose CSVs and job specs stay as they were).
FOLD_COLUMN = "fold"


def run_columns(run_spec: dict) -> dict:
    """The columns that identify a run in every tidy CSV, from its spec (``Study.run_spec``):
    :data:`RUN_COLUMNS`, plus ``fold`` for a run of a cross-validated study."""
    init = run_spec["init"]
    fold = {FOLD_COLUMN: int(run_spec["fold"])} if run_spec.get("fold") is not None else {}
    return {
        "dataset": run_spec["dataset"],
        "arch": run_spec["arch"],
        "protocol": run_spec.get("protocol", "finetune"),
        "init": init["label"],
        "init_name": init["name"],
        "source": init["source"] or "+".join(init.get("sources") or []),
        "k": "" if init["k"] is None else init["k"],
        "fraction": float(run_spec["fraction"]),
        "seed": int(run_spec["seed"]),
        **fold,
    }


def _without(columns: tuple[str, ...], *unread: str) -> tuple[str, ...]:
    """``columns`` less the ``unread`` ones (each of which must be among them), in order."""
    unknown = [column for column in unread if column not in columns]
    if unknown:
        raise ValueError(f"not columns of the CSV: {', '.join(unknown)}")
    return tuple(column for column in columns if column not in unread)


# ---- the per-run CSVs (analysis.collect gathers them) --------------------------------------------

#: metrics.csv of a classification study (from each run's metrics.json); segmentation runs add
#: their Dice and IoU columns, so readers check for the run columns and the metric they use.
METRICS_COLUMNS = RUN_COLUMNS + (
    "task", "test_auc", "test_acc", "test_kappa", "val_auc", "best_epoch", "epochs", "train_seconds",
)  # fmt: skip
#: history.csv of a classification study: one row per run and epoch. A metric that
#: ``train.select_on``, a plateau schedule or early stopping names (``val_kappa``,
#: ``val_balanced_acc``) adds its column after ``val_acc``, in that run only.
HISTORY_COLUMNS = RUN_COLUMNS + ("epoch", "train_loss", "val_loss", "val_auc", "val_acc", "lr", "seconds")

# ---- representation similarity (analysis.init_final, analysis.pairs) --------------------------

#: similarity_init_final.csv: one row per run, block and measure (the job adds n_examples and
#: n_features beside them).
INIT_FINAL_COLUMNS = RUN_COLUMNS + ("block", "block_index", "measure", "value")
#: similarity_pairs.csv: one row per compared pair of runs, block pair and measure (the job adds
#: the ``state`` compared, and ``value_sd`` under CCA subsampling).
PAIRS_COLUMNS: tuple[str, ...] = (
    "dataset", "arch", "fraction", "measure", "pair", "kind", "init_a", "seed_a", "init_b", "seed_b",
    "block_a", "block_a_index", "block_b", "block_b_index", "value",
)  # fmt: skip

# ---- feature reuse (analysis.weights, reinit, layer_knn, filters) -----------------------------

#: weight_drift.csv: one row per run and canonical block.
WEIGHT_DRIFT_COLUMNS = RUN_COLUMNS + ("run", "block", "block_index", "l2", "init_l2", "relative", "n_params")
#: What the weight-drift figure and caption read.
WEIGHT_DRIFT_READ_COLUMNS = _without(WEIGHT_DRIFT_COLUMNS, "init_l2")
#: reinit.csv: one row per run, block reset (``none``: no block, ``all``: every block) and metric.
REINIT_COLUMNS = RUN_COLUMNS + ("run", "split", "block", "block_index", "metric", "value", "drop")
#: What the re-initialisation figure and caption read.
REINIT_READ_COLUMNS = _without(REINIT_COLUMNS, "split")
#: layer_knn.csv: one row per run, state, block and metric; ``knn_k`` is the neighbours of the
#: k-NN (the run's own ``k``, the blocks a WT-ST / WT-RI run transferred, stays beside it).
LAYER_KNN_COLUMNS = RUN_COLUMNS + ("run", "state", "split", "block", "block_index", "metric", "value", "knn_k",
                                   "n_memory", "n_query", "n_features")  # fmt: skip
#: What the layer-wise k-NN figure and caption read.
LAYER_KNN_READ_COLUMNS = _without(LAYER_KNN_COLUMNS, "split", "knn_k", "n_memory", "n_query", "n_features")
#: filters.csv: one row per run (the change of its first convolution).
FILTERS_COLUMNS = RUN_COLUMNS + ("run", "layer", "n_weights", "mean_abs_change", "init_mean_abs", "relative_change")
#: filter_kernels.csv: one row per run, state and kernel weight of the first convolution.
FILTER_KERNEL_COLUMNS = RUN_COLUMNS + ("run", "layer", "state", "filter", "channel", "row", "col", "value")

# ---- cross-run analyses (analysis.fid, fid_gain, predictions, representation_gain) ------------

#: domain_distance.csv: one row per (source, target), the FID between their datasets.
DOMAIN_DISTANCE_COLUMNS = ("source", "source_dataset", "target", "features", "size", "split", "n_source",
                           "n_target", "n_features", "fid")  # fmt: skip
#: fid_gain.csv: one row per (target, architecture, fraction, source).
FID_GAIN_COLUMNS = ("dataset", "arch", "fraction", "source", "source_dataset", "features", "fid", "metric",
                    "n_ri", "n_wt", "n_st", "ri_mean", "wt_mean", "st_mean", "wt_gain_mean", "wt_gain_sd",
                    "st_gain_mean", "st_gain_sd", "st_share", "note")  # fmt: skip
#: What the two FID figures draw.
FID_GAIN_FIGURE_COLUMNS = _without(FID_GAIN_COLUMNS, "n_ri", "n_wt", "n_st", "ri_mean", "wt_mean", "st_mean",
                                   "st_gain_mean", "st_gain_sd")  # fmt: skip
#: What their captions read: the figures' columns, the seed counts and ST's gain.
FID_GAIN_CAPTION_COLUMNS = _without(FID_GAIN_COLUMNS, "ri_mean", "wt_mean", "st_mean", "st_gain_sd")
#: prediction_similarity.csv: one row per compared pair of runs.
PREDICTION_SIMILARITY_COLUMNS = (
    "run_a", "run_b", "dataset", "arch", "fraction", "init_a", "init_b", "seed_a", "seed_b", "kind", "split",
    "task", "n_examples", "agreement", "kappa", "pearson", "spearman",
)  # fmt: skip
#: What the prediction-similarity figure and caption read.
PREDICTION_SIMILARITY_READ_COLUMNS = _without(PREDICTION_SIMILARITY_COLUMNS, "run_a", "run_b", "split", "task",
                                              "n_examples", "pearson", "spearman")  # fmt: skip
#: representation_gain.csv: one Spearman correlation per (target or ``all``, arch, block, measure).
REPRESENTATION_GAIN_COLUMNS = ("dataset", "arch", "block", "block_index", "measure", "metric", "spearman",
                               "p_value", "n_runs", "note")  # fmt: skip
#: representation_gain_runs.csv: the points behind it, one per (run, block, measure).
REPRESENTATION_GAIN_RUNS_COLUMNS = ("dataset", "arch", "init", "init_name", "fraction", "seed", "block",
                                    "block_index", "measure", "similarity", "metric", "gain")  # fmt: skip
#: What the representation-gain figure and caption read.
REPRESENTATION_GAIN_RUNS_READ_COLUMNS = _without(REPRESENTATION_GAIN_RUNS_COLUMNS, "init_name")
