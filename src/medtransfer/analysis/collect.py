"""Gather per-run outputs into the tidy CSVs the figures read (one row per measurement)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from medtransfer.columns import RUN_COLUMNS, run_columns


def collect_metrics(metrics_files: list[str]) -> pd.DataFrame:
    """metrics.csv: run columns (``protocol`` included) + task, test_auc, test_acc, test_kappa, test_balanced_acc, val_auc,
    best_epoch, epochs, num_train, train_seconds, precision (training autocast dtype; empty for
    runs from before it was recorded), config_hash, git_commit; then test_dice, test_iou,
    test_dice_global, val_dice (segmentation runs; empty for classification, whose AUC columns are
    empty for segmentation)."""
    rows = []
    for path in metrics_files:
        metrics = json.loads(Path(path).read_text())
        row = run_columns(metrics["spec"])
        row["task"] = metrics["task"]
        for name in ("auc", "acc", "kappa", "balanced_acc"):
            row[f"test_{name}"] = metrics["test"].get(name, np.nan)
        # frozen-feature protocols (linear, knn) have no epochs; their cost is fit_seconds
        row.update(val_auc=metrics["val"].get("auc", np.nan), best_epoch=metrics.get("best_epoch", np.nan),
                   epochs=metrics.get("epochs", np.nan), num_train=metrics["num_train"],
                   train_seconds=metrics.get("train_seconds", metrics.get("fit_seconds")),
                   precision=metrics.get("precision", {}).get("autocast"),
                   config_hash=metrics["provenance"]["config_hash"],
                   git_commit=metrics["provenance"]["git_commit"])
        for name in ("dice", "iou", "dice_global"):
            row[f"test_{name}"] = metrics["test"].get(name, np.nan)
        row["val_dice"] = metrics["val"].get("dice", np.nan)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else list(RUN_COLUMNS))
    if rows and (frame["fraction"] > 1).any():
        # absolute training sizes (study.fractions > 1): n_train beside them, as metrics.json names
        # it (num_train is the same number; a study of fractions only keeps its columns as they were)
        frame.insert(frame.columns.get_loc("num_train") + 1, "n_train", frame["num_train"])
    return frame


def collect_history(metrics_files: list[str]) -> pd.DataFrame:
    """history.csv: run columns + the per-epoch rows of each run's history.csv (beside metrics.json)."""
    frames = []
    for path in metrics_files:
        columns = run_columns(json.loads(Path(path).read_text())["spec"])
        history = pd.read_csv(Path(path).with_name("history.csv"))
        frames.append(history.assign(**columns)[list(columns) + list(history.columns)])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(RUN_COLUMNS))


def collect_csvs(csv_files: list[str]) -> pd.DataFrame:
    """Concatenate the parts of one tidy CSV (per run or per group; they already carry the run columns)."""
    frames = [pd.read_csv(path, keep_default_na=False, na_values=[""]) for path in csv_files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def collect_provenance(json_files: list[str]) -> pd.DataFrame:
    """provenance.csv: one row per metrics.json / meta.json with what produced it (config hash,
    seed, git commit, host, device, precision, wall time, finish time, one version_<package> column each)."""
    rows = []
    for path in json_files:
        record = json.loads(Path(path).read_text())
        provenance = record["provenance"]
        what = record.get("run") or f"pretrain {record.get('source')}/{record.get('arch')}"
        if record.get("protocol"):  # a linear / k-NN run shares its run id with the fine-tuning run
            what = f"{record['protocol']} {what}"
        row = {"what": what, **{k: provenance.get(k) for k in ("config_hash", "seed", "git_commit", "host", "device")},
               # the autocast dtype that actually ran (float32 on a CPU without amp_on_cpu)
               "precision": (record.get("precision") or {}).get("autocast"),
               **{k: provenance.get(k) for k in ("wall_seconds", "finished_utc")}}
        row.update({f"version_{name}": version for name, version in provenance["packages"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def collect_pretrain(meta_files: list[str]) -> pd.DataFrame:
    """pretrain.csv: one row per source model (meta.json): source, arch, dataset, method, from
    (the source it continued from, or empty), epochs, knn_acc (weighted k-NN, k = 200, on the
    test split with the train split as memory), knn_random_init_acc (the same architecture at its
    random init), knn_start_acc (at its starting weights, continual pretraining only),
    embedding_spread (1 = spread, 0 = collapsed), last_monitor_knn_acc (k = 20 on val after the
    last epoch; SSL only), collapsed_epochs, train_seconds, precision, git_commit."""
    rows = []
    for path in meta_files:
        meta = json.loads(Path(path).read_text())
        knn, history = meta.get("knn", {}), meta.get("history", [])
        start = meta.get("from") or {}
        rows.append({
            "source": meta["source"], "arch": meta["arch"], "dataset": meta["dataset"],
            "method": meta.get("method", "supervised"),
            "from": start.get("path") or start.get("arch") or "" if start else "",
            "epochs": len(history), "knn_acc": knn.get("acc", np.nan),
            "knn_random_init_acc": knn.get("random_init_acc", np.nan),
            "knn_start_acc": knn.get("start_acc", np.nan),
            "embedding_spread": knn.get("embedding_spread", np.nan),
            "last_monitor_knn_acc": history[-1].get("knn_acc", np.nan) if history else np.nan,
            "collapsed_epochs": " ".join(str(e) for e in meta.get("collapsed_epochs", [])),
            "train_seconds": meta.get("train_seconds", np.nan),
            "precision": meta.get("precision", {}).get("autocast"),
            "git_commit": meta["provenance"]["git_commit"],
        })
    return pd.DataFrame(rows)


COLLECTORS: dict[str, Callable[[list[str]], pd.DataFrame]] = {
    "pretrain": collect_pretrain,
    "provenance": collect_provenance,
    "metrics": collect_metrics,
    "history": collect_history,
    "parts": collect_csvs,
}
