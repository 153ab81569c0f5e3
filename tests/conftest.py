"""Shared fixtures: where the repository and ../shared/data are, and a tiny study config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

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


def run_snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Snakemake on the repository's Snakefile in ``workdir``, as users run it."""
    # rules call the `medtransfer` command: find the one installed beside this Python
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def segmentation_target(config: dict) -> dict:
    """tiny_config() with a second target: synthetic lesion masks (a segmentation target)."""
    config["datasets"]["lesion-masks"] = {"format": "synthetic", "task": "lesion_segmentation", "n_train": 128,
                                          "n_val": 64, "n_test": 64, "size": 16}
    config["study"]["targets"] = [*config["study"]["targets"], "lesion-masks"]
    return config


#: The tiny study's name: HTML that would run script if the report embedded it unescaped.
TINY_STUDY_NAME = "tiny <img src=x onerror=\"document.title='pwned'\"> study"


@pytest.fixture(scope="session")
def tiny_study_run(tmp_path_factory) -> Path:
    """The working directory of the tiny study run end to end (minutes), once per test session:
    the workflow test and the report's browser test both read it rather than each running it."""
    workdir = tmp_path_factory.mktemp("tiny_study")
    config = segmentation_target(tiny_config())  # a classification and a segmentation target
    config["analysis"]["layer_knn"] = {"job": "group"}  # reinit keeps the default, a job per run
    config["study"]["name"] = TINY_STUDY_NAME  # markup in a name must reach the report as text
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(workdir, "--cores", "2", "--resources", "gpu=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir
