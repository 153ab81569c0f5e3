"""Prediction similarity: do two runs of the same target *predict* alike (Juodelyte et al.)?

For a pair of runs of one target, arch and fraction — two inits at the same seed, or two seeds of
one init (the noise floor) — on the same split (test by default), in the cache's order:

- ``agreement``: share of images whose predicted class is the same. Predicted classes come from the
  scores predictions.h5 stores (medtransfer.training.metrics.scores_from_logits): binary tasks
  threshold the class-1 softmax score at 0.5 (the same as argmax of the two classes but for exact
  ties), multi-class and ordinal tasks take the argmax, multi-label tasks threshold each label's
  sigmoid at 0.5 and average the agreement over labels (every image counts, also where its label is
  unknown: predictions exist there).
- ``kappa``: Cohen's (unweighted) kappa of the two runs' predicted classes, the agreement corrected
  for what the two class frequencies give by chance; per label and averaged for multi-label. It is
  NaN when both runs predict one and the same class for every image (chance agreement is then 1).
- ``pearson`` / ``spearman``: correlation of the scores, computed per class (per label) and
  averaged over the classes where both runs' scores vary. Per class rather than flattened over
  classes: flattening mixes the between-class level of the scores (a class that is rarely
  predicted has low scores in both runs) into the correlation and makes it high for any two
  calibrated models. Binary tasks use the class-1 score alone (the class-0 score is 1 − it).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from medtransfer.columns import PREDICTION_SIMILARITY_COLUMNS
from medtransfer.errors import DataError


def read_predictions(path: str | Path, split: str, run: str) -> dict:
    """{"scores" float64 [N, K], "labels", "task"} of one split of a run's predictions.h5."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"run {run}: {path} does not exist; the prediction similarity needs the run's "
                        f"predictions (rerun its finetune job: snakemake {path})")
    with h5py.File(path, "r") as handle:
        if split not in handle:
            raise DataError(f"run {run}: {path} has no {split!r} split (it has {', '.join(handle)}); "
                            "set analysis.prediction_similarity.split to one of those")
        return {"scores": handle[split]["scores"][()].astype(np.float64), "labels": handle[split]["labels"][()],
                "task": str(handle.attrs["task"])}


def predicted_classes(task: str, scores: np.ndarray) -> np.ndarray:
    """Predicted classes from scores [N, K]: [N] for single-label tasks, bool [N, K] for multi-label."""
    scores = np.asarray(scores)
    if task == "multilabel":
        return scores >= 0.5
    if task == "binary":
        positive = scores[:, 1] if scores.shape[1] == 2 else scores[:, 0]
        return (positive >= 0.5).astype(np.int64)
    return scores.argmax(axis=1)


def _score_columns(task: str, scores: np.ndarray) -> np.ndarray:
    """The score columns that carry information: binary tasks only the class-1 score."""
    if task == "binary" and scores.shape[1] == 2:
        return scores[:, 1:]
    return scores


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa; NaN (not sklearn's warning) when chance agreement is 1 (one shared class)."""
    if len(np.unique(np.concatenate([a, b]))) < 2:
        return float("nan")
    return float(cohen_kappa_score(a, b))


def _mean_correlation(x: np.ndarray, y: np.ndarray, function) -> float:
    values = [function(x[:, j], y[:, j])[0] for j in range(x.shape[1])
              if np.ptp(x[:, j]) > 0 and np.ptp(y[:, j]) > 0]
    return float(np.mean(values)) if values else float("nan")


def prediction_similarity(task: str, scores_a: np.ndarray, scores_b: np.ndarray) -> dict[str, float]:
    """agreement, kappa, pearson, spearman of two runs' scores [N, K] of the same images (in the
    same order) and task; see the module docstring for each."""
    scores_a, scores_b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if scores_a.shape != scores_b.shape or scores_a.ndim != 2:
        raise ValueError(f"scores must both be [N, K] of one shape, got {scores_a.shape} and {scores_b.shape}")
    pred_a, pred_b = predicted_classes(task, scores_a), predicted_classes(task, scores_b)
    if task == "multilabel":
        agreement = float((pred_a == pred_b).mean())
        kappas = [_kappa(pred_a[:, j], pred_b[:, j]) for j in range(pred_a.shape[1])]
        kappa = float(np.nanmean(kappas)) if not np.isnan(kappas).all() else float("nan")
    else:
        agreement = float((pred_a == pred_b).mean())
        kappa = _kappa(pred_a, pred_b)
    x, y = _score_columns(task, scores_a), _score_columns(task, scores_b)
    return {"agreement": agreement, "kappa": kappa, "pearson": _mean_correlation(x, y, stats.pearsonr),
            "spearman": _mean_correlation(x, y, stats.spearmanr)}


def compare_runs(a: dict, b: dict, split: str, kind: str) -> dict:
    """One row of prediction_similarity.csv for the runs ``a`` and ``b`` ({"run", "predictions",
    "columns"}, as ``medtransfer.study.Study.prediction_similarity_spec`` lists them)."""
    ca, cb = a["columns"], b["columns"]
    if ca["dataset"] != cb["dataset"]:
        raise DataError(f"runs {a['run']} and {b['run']} are of different targets ({ca['dataset']} and "
                        f"{cb['dataset']}); predictions can only be compared on the same images")
    pa, pb = read_predictions(a["predictions"], split, a["run"]), read_predictions(b["predictions"], split, b["run"])
    if pa["scores"].shape != pb["scores"].shape or pa["task"] != pb["task"]:
        raise DataError(f"runs {a['run']} and {b['run']} have {split} predictions of different shapes or tasks "
                        f"({pa['task']} {pa['scores'].shape} vs {pb['task']} {pb['scores'].shape}); rerun the older one")
    if not np.array_equal(pa["labels"], pb["labels"], equal_nan=True):
        raise DataError(f"runs {a['run']} and {b['run']} were evaluated on different {split} images (their labels "
                        "differ); the dataset cache changed between them, rerun the older one")
    return {"run_a": a["run"], "run_b": b["run"], "dataset": ca["dataset"], "arch": ca["arch"],
            "fraction": float(ca["fraction"]), "init_a": ca["init"], "init_b": cb["init"], "seed_a": int(ca["seed"]),
            "seed_b": int(cb["seed"]), "kind": kind, "split": split, "task": pa["task"],
            "n_examples": int(len(pa["scores"])), **prediction_similarity(pa["task"], pa["scores"], pb["scores"]),
            **({"fold": int(ca["fold"])} if "fold" in ca else {})}


def prediction_similarity_table(spec: dict) -> pd.DataFrame:
    """prediction_similarity rows for every comparison of ``spec`` ({"split", "runs": {run id: {"run",
    "predictions", "columns"}}, "comparisons": [{"kind", "a": run id, "b": run id}]})."""
    runs = spec["runs"]
    rows = [compare_runs(runs[c["a"]], runs[c["b"]], spec["split"], c["kind"]) for c in spec["comparisons"]]
    folds = ("fold",) if any("fold" in row for row in rows) else ()  # cross-validated studies only
    return pd.DataFrame(rows, columns=list(PREDICTION_SIMILARITY_COLUMNS) + list(folds))
