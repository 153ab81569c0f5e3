"""Weight drift: how far each canonical block's weights moved during fine-tuning (Matsoukas et
al. 2022, "L2 distance" per layer; Raghu et al. 2019: large models move less from their init).

For block b with learnable parameters θ_b (every weight and bias the optimiser updates):

- ``l2`` = ‖θ_b,final − θ_b,init‖₂, the Euclidean norm over all the block's parameters together;
- ``init_l2`` = ‖θ_b,init‖₂ and ``relative`` = l2 / init_l2, comparable across blocks of
  different sizes. A block whose parameters are all zero at init (e.g. a zero-initialised
  bias-only block) has no scale to compare with: ``relative`` is NaN there (not inf), ``l2``
  still says how far it moved;
- ``n_params``: its number of scalar parameters.

The blocks are the canonical ones of :func:`medtransfer.models.blocks` with ``head`` last, and
:func:`medtransfer.models.block_keys` assigns every state-dict entry to exactly one block, so the
rows partition all learnable parameters: Σ l2² over blocks = ‖θ_final − θ_init‖² of the whole
model and Σ n_params = its parameter count. Buffers (BatchNorm running mean / variance and batch
counters) are not parameters: they are estimated from the data, not learnt, and are left out.
Computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch

from medtransfer import models
from medtransfer.analysis.runfiles import read_states


def weight_drift(init_state: Mapping[str, torch.Tensor], final_state: Mapping[str, torch.Tensor],
                 block_keys: Mapping[str, Sequence[str]], parameters: Collection[str]) -> list[dict]:
    """One row per block (in ``block_keys`` order): block, block_index, l2, init_l2, relative, n_params.

    Args:
        init_state, final_state: state dicts of the same model (name -> tensor of any shape).
        block_keys: block name -> its state-dict keys (:func:`medtransfer.models.block_keys`).
        parameters: the names of the learnable parameters (``dict(model.named_parameters())``);
            state-dict keys not in it (buffers) are skipped.
    """
    rows = []
    for index, (block, keys) in enumerate(block_keys.items()):
        squared_change, squared_init, n_params = 0.0, 0.0, 0
        for key in keys:
            if key not in parameters:
                continue
            before = init_state[key].detach().to(torch.float64)
            after = final_state[key].detach().to(torch.float64)
            if before.shape != after.shape:
                raise ValueError(f"parameter {key} has shape {tuple(before.shape)} at init and "
                                 f"{tuple(after.shape)} after fine-tuning")
            squared_change += float(torch.sum((after - before) ** 2))
            squared_init += float(torch.sum(before**2))
            n_params += before.numel()
        l2, init_l2 = math.sqrt(squared_change), math.sqrt(squared_init)
        rows.append({"block": block, "block_index": index, "l2": l2, "init_l2": init_l2,
                     "relative": l2 / init_l2 if init_l2 > 0 else math.nan, "n_params": n_params})
    return rows


def run_weight_drift(run_dir: str | Path, run: str, columns: Mapping) -> pd.DataFrame:
    """weight_drift.csv rows of one run (:data:`medtransfer.columns.WEIGHT_DRIFT_COLUMNS`): ``columns``
    (the run columns), then the run's name and its blocks' drift."""
    model, init_state, final_state = read_states(run_dir, run)
    parameters = {name for name, p in model.named_parameters() if p.requires_grad}
    rows = weight_drift(init_state, final_state, models.block_keys(model), parameters)
    return pd.DataFrame([{**columns, "run": run, **row} for row in rows])


def weight_drift_table(spec: dict) -> pd.DataFrame:
    """The rows of every run of ``spec["runs"]`` (each ``{"run", "run_dir", "columns"}``)."""
    frames = [run_weight_drift(entry["run_dir"], entry["run"], entry["columns"]) for entry in spec["runs"]]
    return pd.concat(frames, ignore_index=True)
