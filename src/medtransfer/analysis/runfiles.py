"""Reading a fine-tuning run's files for the feature-reuse analyses, with one clear error per
missing or unreadable file (the run, the file and the fix) instead of a traceback.

A run directory (``medtransfer.paths.run_dir``) holds ``init.pt`` and ``final.pt`` (dicts with
``state_dict``, ``arch``, ``num_classes``, ``create_kwargs``, ``init``) and ``metrics.json``
(test / val metrics and the run's spec).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from medtransfer.errors import DataError


def run_file(run_dir: str | Path, name: str, run: str) -> Path:
    """``run_dir / name``, or a DataError naming the run, the file and how to make it."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise DataError(
            f"run {run}: {path} is missing; the analysis needs the run's {name}. Fine-tune the run first "
            f"(snakemake {Path(run_dir) / 'metrics.json'}), or turn the analysis off under `analysis:`"
        )
    return path


def read_checkpoint(run_dir: str | Path, state: str, run: str) -> dict[str, Any]:
    """The saved dict of ``{state}.pt`` (state: init or final), checked for the keys we read."""
    path = run_file(run_dir, f"{state}.pt", run)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a truncated or foreign file: say which one
        raise DataError(f"run {run}: {path} cannot be read ({type(error).__name__}: {error}); "
                        "delete it and fine-tune the run again") from None
    missing = [key for key in ("state_dict", "arch", "num_classes", "create_kwargs") if key not in saved]
    if missing:
        raise DataError(f"run {run}: {path} lacks {', '.join(missing)}; it is not a medtransfer fine-tuning "
                        "checkpoint (or one from an older version): fine-tune the run again")
    return saved


def build_model(saved: dict[str, Any], run: str, path: str | Path) -> torch.nn.Module:
    """The model a checkpoint was saved from, with its weights (as ``analysis.activations.load_state``)."""
    from medtransfer.analysis.activations import network_of

    model = network_of(saved)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as error:
        raise DataError(f"run {run}: the weights in {path} do not fit {saved['arch']} ({error})") from None
    return model


def read_states(run_dir: str | Path, run: str) -> tuple[torch.nn.Module, dict[str, torch.Tensor],
                                                         dict[str, torch.Tensor]]:
    """(model with the final weights, init state dict, final state dict) of one run.

    Both checkpoints must be of the same architecture (one run), else a DataError.
    """
    init, final = read_checkpoint(run_dir, "init", run), read_checkpoint(run_dir, "final", run)
    if (init["arch"], init["num_classes"], init["create_kwargs"]) != (
            final["arch"], final["num_classes"], final["create_kwargs"]):
        raise DataError(f"run {run}: init.pt ({init['arch']}) and final.pt ({final['arch']}) in {run_dir} are "
                        "of different models; fine-tune the run again")
    model = build_model(final, run, Path(run_dir) / "final.pt")
    return model, init["state_dict"], final["state_dict"]


def read_metrics(run_dir: str | Path, run: str) -> dict[str, Any]:
    """The run's metrics.json (test and val metrics, its spec)."""
    path = run_file(run_dir, "metrics.json", run)
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"run {run}: {path} is not valid JSON ({error}); fine-tune the run again") from None
    if "spec" not in metrics or "test" not in metrics:
        raise DataError(f"run {run}: {path} has no spec or test metrics; fine-tune the run again")
    return metrics
