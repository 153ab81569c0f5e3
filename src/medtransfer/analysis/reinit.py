"""Re-initialisation robustness (Matsoukas et al. 2022; Zhang, Bengio & Singer 2019, "Are all
layers created equal?"): how much the fine-tuned network needs what fine-tuning did to each block.

For each canonical block b of a run, the block's entries of the state dict (weights, biases and
its BatchNorm running statistics) are set back to their ``init.pt`` values, every other block
keeps its ``final.pt`` values, and the network is scored on the test split. A block whose reset
costs nothing was not needed to change; a large drop means the task depends on what it learnt.

reinit.csv is long (tidy): one row per (run, block, metric) with ``value`` (the metric after
the reset) and ``drop`` = value(none) − value, for every metric the task has
(:func:`medtransfer.training.metrics.classification_metrics`: auc, acc, balanced_acc, and kappa
for ordinal tasks). Two rows per metric bracket the blocks:

- ``block = none`` (``block_index`` −1): nothing reset, the fine-tuned network; equals the run's
  own test metric in metrics.json (the same weights, loader and float32 evaluation);
- ``block = all`` (``block_index`` = number of blocks): every block reset, the network at init.

The test split is read with the run's own loader settings (``training.stage.spec_loader`` on
the spec in metrics.json) and scored by the fine-tuning's ``evaluate``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence

import pandas as pd
import torch

from medtransfer import models
from medtransfer.analysis.runfiles import read_metrics, read_states

log = logging.getLogger(__name__)

NONE, ALL = "none", "all"


def reinit_state(init_state: Mapping[str, torch.Tensor], final_state: Mapping[str, torch.Tensor],
                 keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """``final_state`` with the entries ``keys`` (parameters and buffers alike) taken from ``init_state``."""
    missing = [key for key in keys if key not in init_state]
    if missing:
        raise KeyError(f"init state lacks {missing}")
    chosen = set(keys)
    return {key: (init_state[key] if key in chosen else value) for key, value in final_state.items()}


def reinit_states(init_state: Mapping[str, torch.Tensor], final_state: Mapping[str, torch.Tensor],
                  block_keys: Mapping[str, Sequence[str]]) -> Iterator[tuple[str, int, dict[str, torch.Tensor]]]:
    """(block, block_index, state) for ``none``, each block in order, and ``all``."""
    yield NONE, -1, dict(final_state)
    for index, (block, keys) in enumerate(block_keys.items()):
        yield block, index, reinit_state(init_state, final_state, keys)
    yield ALL, len(block_keys), dict(init_state)


def reinit_rows(scores: Sequence[tuple[str, int, Mapping[str, float]]]) -> list[dict]:
    """Long rows (block, block_index, metric, value, drop) from (block, index, metrics) with ``none`` first."""
    reference = scores[0][2]
    if scores[0][0] != NONE:
        raise ValueError("the first scored state must be 'none' (the fine-tuned network)")
    return [{"block": block, "block_index": index, "metric": metric, "value": float(value),
             "drop": float(reference[metric]) - float(value)}
            for block, index, metrics in scores for metric, value in metrics.items()]


def run_reinit(spec: dict, device: torch.device) -> pd.DataFrame:
    """reinit.csv rows (:data:`medtransfer.columns.REINIT_COLUMNS`) of one run: ``spec`` has ``run``, ``run_dir``, ``columns`` and ``split``."""
    from medtransfer.training.stage import spec_loader
    from medtransfer.training.trainer import evaluate, precision_for

    run, split = spec["run"], spec["split"]
    metrics = read_metrics(spec["run_dir"], run)
    model, init_state, final_state = read_states(spec["run_dir"], run)
    run_spec = metrics["spec"]
    if run_spec.get("fold") is None:
        loader = spec_loader(run_spec, split, device)
    else:  # a fold run's val / test are its fold's rows of the pool
        from medtransfer.data.cache import POOL, read_folds
        from medtransfer.data.folds import fold_rows

        loader = spec_loader(run_spec, POOL, device, indices=fold_rows(read_folds(run_spec["cache"]),
                                                                       int(run_spec["fold"]))[split])
    precision = precision_for(device, run_spec["training"])
    model.to(device)
    scores = []
    for block, index, state in reinit_states(init_state, final_state, models.block_keys(model)):
        model.load_state_dict(state)
        scores.append((block, index, evaluate(model, loader, metrics["task"], device, precision).metrics))
    _check_against_run(scores[0][2], metrics.get(split, {}), run, split)
    rows = reinit_rows(scores)
    return pd.DataFrame([{**spec["columns"], "run": run, "split": split, **row} for row in rows])


def _check_against_run(recomputed: Mapping[str, float], recorded: Mapping[str, float], run: str, split: str) -> None:
    """The fine-tuned network must score what the run recorded; a gap means another device or a
    changed cache, so the drops would not be of the run as reported. Warn, with the numbers."""
    for metric, value in recomputed.items():
        if metric in recorded and not math.isclose(value, recorded[metric], abs_tol=1e-4):
            log.warning("run %s: %s %s recomputed as %.6f, metrics.json has %.6f (another device, or the cache "
                        "changed since fine-tuning)", run, split, metric, value, recorded[metric])


def reinit_table(spec: dict, device: torch.device) -> pd.DataFrame:
    """The rows of one run's spec, or of every run spec in ``spec["runs"]`` (a group job)."""
    return pd.concat([run_reinit(entry, device) for entry in spec.get("runs") or [spec]], ignore_index=True)
