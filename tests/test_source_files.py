"""A ``file:`` source's weights file is an input of the jobs that read it: a missing one stops the
plan naming the key and the path; a replaced one reruns those jobs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from conftest import run_snakemake, tiny_config
from medtransfer.errors import ConfigError
from medtransfer.grid import Study

RUN_DIR = Path("results/runs/lesions/cbr_tiny/WT_natural/f1/s0")
RUN_FILES = ("init.pt", "init.json", "final.pt", "history.csv", "predictions.h5", "metrics.json")


def file_source_config(path: str = "weights/natural-{arch}.pt") -> dict:
    config = tiny_config()
    config["sources"] = {"natural": {"file": path}, "unused": {"file": "nowhere.pt"}}
    config["study"].update(inits=[{"WT": "natural"}], seeds=[0])
    config["analysis"].update(fid=False, pairs=[])
    return config


def test_the_planner_names_a_missing_weights_file_by_key_and_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = Study(file_source_config())  # the planner alone never looks at files: jobs on a cluster
    with pytest.raises(ConfigError, match=r"sources\.natural\.file: the weights file 'weights/natural-cbr_tiny\.pt' "
                                          r"of source 'natural' for architecture 'cbr_tiny' does not exist"):
        study.check_source_files()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "natural-cbr_tiny.pt").write_bytes(b"")
    study.check_source_files()  # the unused source's missing file is nobody's input

    config = file_source_config()  # a per-architecture file, and one a pretraining starts from
    config["sources"] = {"natural": {"pretrain": {"dataset": "shapes", "from": "start"}},
                         "start": {"timm": True, "per_arch": {"cbr_tiny": {"file": "weights/start.pt"}}}}
    with pytest.raises(ConfigError, match=r"sources\.start\.per_arch\.cbr_tiny\.file: .*'weights/start\.pt'"):
        Study(config).check_source_files()


def test_a_dry_run_stops_on_a_missing_weights_file(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(file_source_config("weights/natral.pt")))
    result = run_snakemake(tmp_path, "-n", "--cores", "1")
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "config key sources.natural.file: the weights file 'weights/natral.pt'" in message
    assert str(tmp_path) in message  # where a relative path was looked for


@pytest.mark.slow
def test_a_replaced_weights_file_reruns_the_runs_that_read_it(tmp_path):
    """Outputs newer than the dataset cache but older than the weights: only the weights can
    make the fine-tuning job out of date."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(file_source_config("weights/natural.pt")))
    cache, weights = tmp_path / "results/data/lesions.h5", tmp_path / "weights/natural.pt"
    for path, age in [(cache, 300), *((tmp_path / RUN_DIR / name, 200) for name in RUN_FILES), (weights, 100)]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - age))
    result = run_snakemake(tmp_path, "-n", "--cores", "1", "--rerun-triggers", "mtime", "--",
                           str(RUN_DIR / "metrics.json"))
    assert result.returncode == 0, result.stderr
    assert "input: results/data/lesions.h5, weights/natural.pt" in result.stdout
    assert "updated input files" in result.stdout and "finetune        1" in result.stdout
