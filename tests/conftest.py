"""Shared fixtures: where the repository and ../shared/data are, and a tiny study config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests use tiny tensors: one thread avoids oversubscription stalls on a busy 2-core machine
# (tiny ops with 2 threads were measured ~50x slower under load). Workflow subprocesses set
# their own thread count from the rule's `threads`.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

# No test may reach the network: hub and dataset downloads must fail fast instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MEDTRANSFER_OFFLINE", "1")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the repository")
    return SHARED_DATA


def tiny_config() -> dict:
    """A study small enough to train end to end in seconds on one CPU core."""
    return {
        "datasets": {
            "shapes": {"format": "synthetic", "task": "natural_shapes", "n_train": 300, "n_val": 100,
                       "n_test": 100, "size": 16},
            "lesions": {"format": "synthetic", "task": "lesion_presence", "n_train": 200, "n_val": 100,
                        "n_test": 100, "size": 16},
        },
        "sources": {"natural": {"pretrain": {"dataset": "shapes"}}},
        "architectures": {"cbr_tiny": {"width": 0.125}},
        "study": {"targets": ["lesions"], "architectures": ["cbr_tiny"], "inits": ["RI", {"WT": "natural"}],
                  "fractions": [1.0], "seeds": [0, 1]},
        "train": {"epochs": 2, "batch_size": 32, "num_workers": 0},
        "pretrain": {"epochs": 1},
        "analysis": {"probe_size": 64, "pool": 2, "measures": ["linear_cka"],
                     "pairs": [{"a": "WT_natural", "b": "RI"}],
                     "fid": {"features": "natural"}},  # offline: the source's backbone embeds the images
        "resources": {name: {"threads": 1, "mem_mb": 1000, "runtime": 5}
                      for name in ("preprocess", "pretrain", "finetune", "activations", "similarity")},
    }


@pytest.fixture
def tiny_study_config() -> dict:
    return tiny_config()
