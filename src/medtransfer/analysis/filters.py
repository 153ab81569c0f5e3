"""First-layer filters (Raghu et al. 2019; Juodelyte et al.): the kernels of a network's first
convolution at init and after fine-tuning, and how much they changed.

The first convolution is the one timm records as ``pretrained_cfg["first_conv"]`` (``conv1`` of
ResNets, ``block1.conv`` of CBR, ``patch_embed.proj`` of ViT / Swin, ``Conv2d_1a_3x3.conv`` of
Inception-v3), else the first ``nn.Conv2d`` in module order. Its weight has shape
[out_channels, in_channels, kh, kw].

- filters.csv, one row per run: ``layer`` (its module name), ``n_weights``, ``mean_abs_change``
  = mean |W_final − W_init| over every weight of the kernel (bias excluded), ``init_mean_abs`` =
  mean |W_init| and ``relative_change`` = mean_abs_change / init_mean_abs (NaN when the init
  kernel is all zeros).
- filter_kernels.csv, for the runs of one cell (every init of one target, architecture, fraction
  and seed): the raw weights of the first ``max_filters`` kernels, one row per weight (``state``,
  ``filter``, ``channel``, ``row``, ``col``, ``value``), which the ``filters`` figure draws.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from medtransfer.analysis.runfiles import build_model, read_checkpoint
from medtransfer.columns import FILTER_KERNEL_COLUMNS, RUN_COLUMNS
from medtransfer.errors import DataError

#: Columns of filter_kernels.csv after the run columns.
KERNEL_COLUMNS = FILTER_KERNEL_COLUMNS[len(RUN_COLUMNS):]


def first_conv(model: nn.Module) -> str:
    """Module name of the first convolution of ``model`` (see the module docstring)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv") if isinstance(cfg, Mapping) else getattr(cfg, "first_conv", None)
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    modules = dict(model.named_modules())
    if name and isinstance(modules.get(name), nn.Conv2d):
        return name
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return module_name
    raise DataError(f"{type(model).__name__} has no convolution, so it has no first-layer filters; "
                    "set analysis.filters: false for this study")


def kernel_change(init_weight: torch.Tensor, final_weight: torch.Tensor) -> dict[str, float]:
    """n_weights, mean_abs_change, init_mean_abs, relative_change of one kernel tensor (float64)."""
    before, after = init_weight.detach().double(), final_weight.detach().double()
    if before.shape != after.shape:
        raise ValueError(f"kernels of different shapes: {tuple(before.shape)} and {tuple(after.shape)}")
    change = float((after - before).abs().mean())
    scale = float(before.abs().mean())
    return {"n_weights": before.numel(), "mean_abs_change": change, "init_mean_abs": scale,
            "relative_change": change / scale if scale > 0 else float("nan")}


def kernel_rows(weight: torch.Tensor, max_filters: int) -> pd.DataFrame:
    """Long rows (filter, channel, row, col, value) of the first ``max_filters`` kernels [O, C, kh, kw]."""
    values = weight.detach().float()[:max_filters].numpy()
    filters, channels, rows, cols = np.indices(values.shape).reshape(4, -1)
    return pd.DataFrame({"filter": filters, "channel": channels, "row": rows, "col": cols,
                         "value": values.reshape(-1)})


def _conv1(run_dir: str | Path, run: str) -> tuple[str, dict[str, torch.Tensor]]:
    """(first conv name, {state: its weight}) of one run."""
    weights, layer = {}, None
    for state in ("init", "final"):
        saved = read_checkpoint(run_dir, state, run)
        if layer is None:
            layer = first_conv(build_model(saved, run, Path(run_dir) / f"{state}.pt"))
        weights[state] = saved["state_dict"][f"{layer}.weight"]
    return layer, weights


def filters_table(spec: dict) -> pd.DataFrame:
    """filters.csv rows (:data:`medtransfer.columns.FILTERS_COLUMNS`) of ``spec["runs"]`` (each ``{"run",
    "run_dir", "columns"}``)."""
    rows = []
    for entry in spec["runs"]:
        layer, weights = _conv1(entry["run_dir"], entry["run"])
        rows.append({**entry["columns"], "run": entry["run"], "layer": layer,
                     **kernel_change(weights["init"], weights["final"])})
    return pd.DataFrame(rows)


def filter_kernels_table(spec: dict) -> pd.DataFrame:
    """filter_kernels.csv: the init and final kernels of each run of ``spec["runs"]`` (one cell)."""
    frames = []
    for entry in spec["runs"]:
        layer, weights = _conv1(entry["run_dir"], entry["run"])
        for state, weight in weights.items():
            frame = kernel_rows(weight, int(spec["max_filters"]))
            frames.append(frame.assign(**entry["columns"], run=entry["run"], layer=layer, state=state))
    table = pd.concat(frames, ignore_index=True)
    first = [c for c in table.columns if c not in KERNEL_COLUMNS]
    return table[first + list(KERNEL_COLUMNS)]
