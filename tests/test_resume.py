"""Nothing lost when a job dies: kill real ``medtransfer finetune`` processes and rerun them.

A killed run (SIGKILL: node failure, OOM killer) or a preempted one (SIGTERM: SLURM preemption
or time limit) must, when rerun, end with exactly the weights and metrics of a run that was never
interrupted (CPU, same seed). The run uses dropout, augmentation and learning-rate milestones,
and the kill lands in the middle of its third epoch, so every piece of restored state matters:
RNG states, optimizer, scheduler, data order, position in the epoch, history and best weights.
``checkpoint_minutes`` is tiny, so the job checkpoints after every batch. Partial outputs must
never look finished; and every metrics.json records where its number came from (provenance).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, tiny_config
from medtransfer.errors import DataError
from medtransfer.specs import spec_hash
from medtransfer.study import Study
from medtransfer.training.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MEDTRANSFER = shutil.which("medtransfer", path=str(BIN)) or shutil.which("medtransfer")
ENV = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "MEDTRANSFER_DEVICE": "cpu"}
TIMEOUT_S = 300
KILL_EPOCH = 2  # 0-based: the kill lands in the third of four epochs, after the first LR milestone


def resume_config() -> dict:
    """tiny_config() with one RI run that trains long enough to be killed mid-epoch, with state
    that a resume must restore (dropout, augmentation, LR milestones) and a checkpoint after
    every batch."""
    config = tiny_config()
    target, arch = config["study"]["targets"][0], config["study"]["architectures"][0]
    config["datasets"][target]["n_train"] = 600
    config["architectures"][arch] = {**config["architectures"].get(arch, {}), "drop_rate": 0.3}
    config["train"].update(epochs=4, augment={"hflip": True, "crop_padding": 2}, checkpoint_minutes=1e-6,
                           schedule={"name": "multistep", "milestones": [2, 3], "gamma": 0.1})
    config["study"].update(inits=["RI"], fractions=[1.0], seeds=[0])
    config.setdefault("analysis", {})["pairs"] = []
    return config


@dataclass
class Scenario:
    """The run's config and spec, and its dataset cache made once by ``medtransfer preprocess``."""

    root: Path
    config: dict
    spec: dict
    cache: Path

    def workdir(self, name: str) -> Path:
        """A fresh working directory as the workflow lays it out: config.yaml, the cache, spec.json."""
        workdir = self.root / name
        (workdir / self.spec["cache"]).parent.mkdir(parents=True)
        shutil.copyfile(self.cache, workdir / self.spec["cache"])
        (workdir / "config.yaml").write_text(yaml.safe_dump(self.config))
        (workdir / "spec.json").write_text(json.dumps(self.spec))
        return workdir

    def run_dir(self, workdir: Path) -> Path:
        return workdir / self.spec["run_dir"]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    assert MEDTRANSFER, "the medtransfer CLI is not installed beside this Python"
    root = tmp_path_factory.mktemp("resume")
    config = resume_config()
    study = Study(config)
    (run,) = study.runs
    spec = study.run_spec(run)
    preprocess = root / "preprocess"
    preprocess.mkdir()
    result = subprocess.run([MEDTRANSFER, "preprocess", "--spec", json.dumps(study.preprocess_spec(run.dataset))],
                            cwd=preprocess, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    return Scenario(root, config, spec, preprocess / spec["cache"])


@dataclass
class Finetune:
    """A ``medtransfer finetune --spec @spec.json`` process in ``workdir``, its output in ``log``."""

    workdir: Path
    log: Path
    process: subprocess.Popen = field(repr=False)
    started: float = 0.0
    wall_seconds: float | None = None

    def wait(self) -> int:
        code = self.process.wait(timeout=TIMEOUT_S)
        if self.wall_seconds is None:
            self.wall_seconds = time.monotonic() - self.started
        return code

    def output(self) -> str:
        return self.log.read_text()


def start_finetune(workdir: Path, log_name: str = "finetune.log") -> Finetune:
    log = workdir / log_name
    with open(log, "w") as handle:
        process = subprocess.Popen([MEDTRANSFER, "finetune", "--spec", "@spec.json", "--threads", "1",
                                    "--device", "cpu", "--no-progress"],
                                   cwd=workdir, env=ENV, stdout=handle, stderr=subprocess.STDOUT)
    return Finetune(workdir, log, process, time.monotonic())


def wait_for_checkpoint(job: Finetune, checkpoint: Path, epoch: int) -> None:
    """Return once the job has checkpointed inside 0-based ``epoch`` (earlier epochs are then in its
    history and best weights, and the LR schedule has moved)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        if checkpoint.exists():
            try:  # written by rename, so always whole; it may be replaced while we look
                state = torch.load(checkpoint, map_location="cpu", weights_only=False)
            except (OSError, RuntimeError, EOFError):
                state = None
            if state is not None and state["epoch"] >= epoch and state["batch"] > 0:
                return
        if job.process.poll() is not None:
            pytest.fail(f"the job ended (code {job.process.returncode}) before a checkpoint in epoch "
                        f"{epoch + 1}:\n{job.output()}")
        if time.monotonic() > deadline:
            job.process.kill()
            pytest.fail(f"no checkpoint in epoch {epoch + 1} after {TIMEOUT_S} s:\n{job.output()}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def references(scenario) -> list[Finetune]:
    """Two uninterrupted runs of the same spec, started side by side (the tests wait for them)."""
    jobs = [start_finetune(scenario.workdir(name)) for name in ("reference_a", "reference_b")]
    yield jobs
    for job in jobs:
        if job.process.poll() is None:
            job.process.kill()
            job.process.wait()


def finished(scenario: Scenario, job: Finetune) -> Path:
    """The run directory of ``job`` once it has ended well."""
    assert job.wait() == 0, job.output()
    return scenario.run_dir(job.workdir)


def assert_same_results(expected: Path, actual: Path) -> None:
    """Bit-identical final weights, predictions, per-epoch history and metrics (not timings)."""
    want = torch.load(expected / "final.pt", map_location="cpu", weights_only=False)
    got = torch.load(actual / "final.pt", map_location="cpu", weights_only=False)
    assert want["best_epoch"] == got["best_epoch"]
    assert want["state_dict"].keys() == got["state_dict"].keys()
    for key, value in want["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), f"final.pt {key} differs"
    with h5py.File(expected / "predictions.h5") as a, h5py.File(actual / "predictions.h5") as b:
        for split in ("val", "test"):
            assert np.array_equal(a[split]["scores"][...], b[split]["scores"][...]), split
    history = [pd.read_csv(d / "history.csv").drop(columns="seconds") for d in (expected, actual)]
    pd.testing.assert_frame_equal(*history, check_exact=True)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (expected, actual)]
    for key in ("test", "val", "best_epoch", "epochs", "num_train", "spec"):
        # as JSON text: NaN equals NaN, 0.1 must be the same double
        assert json.dumps(metrics[0][key], sort_keys=True) == json.dumps(metrics[1][key], sort_keys=True), key
    assert metrics[0]["provenance"]["config_hash"] == metrics[1]["provenance"]["config_hash"]


def test_sigkill_mid_training_then_the_workflow_reruns_and_resumes_to_identical_results(scenario, references):
    workdir = scenario.workdir("sigkill")
    run_dir = scenario.run_dir(workdir)
    job = start_finetune(workdir)
    wait_for_checkpoint(job, run_dir / "checkpoint.pt", epoch=KILL_EPOCH)
    job.process.send_signal(signal.SIGKILL)
    assert job.wait() == -signal.SIGKILL

    # what the kill left does not look finished: no metrics.json (written last), no final.pt
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "final.pt").exists()
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert KILL_EPOCH <= state["epoch"] < scenario.spec["training"]["epochs"], "killed after training had finished"

    # Snakemake sees the missing outputs and reruns the job, which resumes from the checkpoint
    rerun = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                            "--cores", "1", str(Path(scenario.spec["run_dir"]) / "metrics.json")],
                           env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "rule finetune:" in rerun.stdout + rerun.stderr
    job_log = (workdir / "results" / "logs" / "finetune" / f"{scenario.spec['run']}.log").read_text()
    assert f"at epoch {state['epoch'] + 1} batch {state['batch']}" in job_log, job_log
    assert not (run_dir / "checkpoint.pt").exists(), "a finished run keeps no checkpoint"
    assert_same_results(finished(scenario, references[0]), run_dir)


def test_sigterm_saves_exits_preempted_and_the_rerun_resumes_to_identical_results(scenario, references):
    workdir = scenario.workdir("sigterm")
    run_dir = scenario.run_dir(workdir)
    job = start_finetune(workdir)
    wait_for_checkpoint(job, run_dir / "checkpoint.pt", epoch=KILL_EPOCH)
    job.process.send_signal(signal.SIGTERM)
    assert job.wait() == 3, job.output()  # the CLI's "preempted" status
    assert "preempted: SIGTERM" in job.output() and "checkpoint saved" in job.output()
    assert not (run_dir / "metrics.json").exists()
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert KILL_EPOCH <= state["epoch"] < scenario.spec["training"]["epochs"]

    rerun = start_finetune(workdir, "rerun.log")
    assert rerun.wait() == 0, rerun.output()
    assert f"at epoch {state['epoch'] + 1} batch {state['batch']}" in rerun.output(), rerun.output()
    assert_same_results(finished(scenario, references[0]), run_dir)


def test_a_truncated_checkpoint_is_set_aside_and_training_starts_over(scenario, references):
    workdir = scenario.workdir("truncated_checkpoint")
    run_dir = scenario.run_dir(workdir)
    run_dir.mkdir(parents=True)
    # a checkpoint of this very spec, cut in half (a disk that filled up, a copy that died)
    checkpoint = run_dir / "checkpoint.pt"
    save_checkpoint(checkpoint, {"spec_hash": spec_hash(scenario.spec), "model": {"w": torch.randn(1000)},
                                 "epoch": 1, "batch": 3})
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])

    job = start_finetune(workdir)
    assert job.wait() == 0, job.output()
    assert "resumed" not in job.output()
    assert (run_dir / "checkpoint.corrupt").exists() and not checkpoint.exists()
    assert_same_results(finished(scenario, references[0]), run_dir)


def test_a_truncated_cache_is_a_clear_data_error_not_a_result(scenario, tmp_path):
    from medtransfer.training.finetune import finetune

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(scenario.cache.read_bytes()[: scenario.cache.stat().st_size // 2])
    spec = {**scenario.spec, "cache": str(truncated), "run_dir": str(tmp_path / "run")}
    with pytest.raises(DataError, match=r"truncated\.h5.*delete it and rerun the preprocess rule"):
        finetune(spec, device="cpu", progress=False)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_two_runs_with_the_same_config_and_seed_give_identical_metrics_and_full_provenance(scenario, references):
    run_dirs = [finished(scenario, job) for job in references]
    assert_same_results(*run_dirs)
    in_git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True).returncode == 0
    for run_dir, job in zip(run_dirs, references):
        provenance = json.loads((run_dir / "metrics.json").read_text())["provenance"]
        assert provenance["config_hash"] == spec_hash(scenario.spec)
        assert provenance["seed"] == scenario.spec["seed"]
        if in_git:  # a commit of this repository (HEAD may have moved on since the run)
            commit = provenance["git_commit"].removesuffix("+dirty")
            kind = subprocess.run(["git", "cat-file", "-t", commit], cwd=REPO, capture_output=True, text=True)
            assert len(commit) == 40 and kind.stdout.strip() == "commit", provenance["git_commit"]
        else:
            assert provenance["git_commit"] == "unknown"
        assert provenance["packages"]["torch"] == importlib.metadata.version("torch")
        assert provenance["packages"]["python"] == ".".join(map(str, sys.version_info[:3]))
        assert {"medtransfer", "numpy", "h5py", "timm", "scikit-learn"} <= set(provenance["packages"])
        assert provenance["host"] == socket.gethostname()
        assert provenance["device"] == "cpu"
        assert 0 < provenance["wall_seconds"] <= job.wall_seconds


def test_the_recorded_commit_is_the_one_the_job_started_with(scenario, tmp_path, monkeypatch):
    """A checkout that moves on while a run trains (hours, on a cluster) must not relabel it."""
    from medtransfer import provenance
    from medtransfer.training import finetune as finetune_module

    commits = iter(["commit-at-start", "commit-at-end"])
    monkeypatch.setattr(finetune_module, "git_commit", lambda: next(commits))
    monkeypatch.setattr(provenance, "git_commit", lambda: "commit-at-end")
    training = {**scenario.spec["training"], "epochs": 1, "checkpoint_minutes": 60.0}
    spec = {**scenario.spec, "cache": str(scenario.cache), "run_dir": str(tmp_path / "run"), "training": training}
    metrics = finetune_module.finetune(spec, device="cpu", progress=False)
    assert metrics["provenance"]["git_commit"] == "commit-at-start"
