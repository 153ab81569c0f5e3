"""Segmentation figures, from the same tidy CSVs as the classification ones.

- :func:`plot_test_dice`: test Dice per init, seeds as dots with mean ± sd, per dataset ×
  architecture and data fraction (:func:`~medtransfer.figures.performance.plot_test_metric` on
  metrics.csv's ``test_dice``; classification runs have none and are left out).
- :func:`plot_convergence_dice`: validation Dice against epoch per init
  (:func:`~medtransfer.figures.convergence.plot_convergence` on history.csv's ``val_dice``).
"""

from __future__ import annotations

from pathlib import Path

from medtransfer.figures.convergence import plot_convergence
from medtransfer.figures.performance import plot_test_metric


def plot_test_dice(metrics_csv: str | Path, out_pdf: str | Path) -> Path:
    """Test Dice (foreground classes, mean over images) per init and fraction."""
    return plot_test_metric(metrics_csv, out_pdf, metric="test_dice")


def plot_convergence_dice(history_csv: str | Path, out_pdf: str | Path) -> Path:
    """Validation Dice vs epoch per init (mean over seeds, ± sd band)."""
    return plot_convergence(history_csv, out_pdf, metric="val_dice")
