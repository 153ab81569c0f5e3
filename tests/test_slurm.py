"""The workflow on a real SLURM cluster through workflow/profiles/slurm (``pytest -m slurm``).

Needs the single-node cluster of ../shared/slurm/start-slurm.sh (partition ``debug``, two fake
GPUs, no accounting daemon); every test skips when ``sinfo`` is missing or does not answer.
The real profile is used as is; a test-only profile layered on top (``--profile`` twice, the
later wins) only adds what this cluster needs: the squeue status command and short polling.
Partition and account reach the jobs through SBATCH_PARTITION / SBATCH_ACCOUNT, as documented.

What SLURM was asked for is read from its own job records (``scontrol show job``, kept for
MinJobAge = 600 s after a job ends): they hold the GPU request (TresPerJob), time limit,
memory, partition, account, exit state and the rule (the plugin's ``--comment``), whatever the
plugin logs, and they survive the plugin deleting the logs of successful jobs. A stand-in
``medtransfer`` first on the jobs' PATH (sbatch exports the environment) notes the
CUDA_VISIBLE_DEVICES that SLURM gave each job and makes chosen attempts fail; the library has
no test hooks. The four Snakemake runs start together and the tests read their results.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_config
from medtransfer import paths
from medtransfer.study import Study

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PARTITION = "debug"  # the test cluster's partition (../shared/slurm/start-slurm.sh)
RUN_TIMEOUT_S = 600
GPU_RULES = {"pretrain", "finetune", "activations", "reinit", "layer_knn", "fid_stats"}
CPU_RULES = {"preprocess", "similarity_init_final", "weight_drift", "filters", "filter_kernels",
             "prediction_similarity"}

# Only what this cluster needs beyond the real profile (../shared/slurm/README.md).
TEST_PROFILE = {
    "jobs": 4,
    "latency-wait": 5,
    "seconds-between-status-checks": 2,
    "slurm-status-command": "squeue",  # no slurmdbd here: sacct never answers
    "slurm-init-seconds-before-status-checks": 1,
}

WRAPPER = """#!/bin/sh
# Test-only stand-in for medtransfer: note the job's GPUs, fail chosen attempts, run the real CLI.
echo "$1 ${{SLURM_JOB_ID:-none}} ${{CUDA_VISIBLE_DEVICES:-none}}" >> "$MT_TEST_DIR/calls.txt"
if [ "$1" = preprocess ]; then
  case "$*" in
    *"data/$MT_TEST_FAIL_DATASET.h5"*)
      # one token per attempt that must fail
      for token in "$MT_TEST_DIR"/fail-tokens/*; do
        if [ -e "$token" ]; then rm -f "$token"; echo "test: this attempt fails on purpose" >&2; exit 1; fi
      done;;
  esac
fi
exec {real} "$@"
"""


def one_cell_study() -> dict:
    """tiny_config() cut to one grid cell that still runs every cluster rule: a WT init (so a
    pretrain job), one fraction and one seed; no init pairs (they need a second init)."""
    config = tiny_config()
    source = next(iter(config["sources"]))
    config["study"].update(inits=[{"WT": source}], fractions=[1.0], seeds=[0])
    config.setdefault("analysis", {})["pairs"] = []
    return config


def cluster_answers() -> str | None:
    """None when a SLURM with the test partition answers, else why not."""
    for tool in ("sinfo", "sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        result = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if result.returncode != 0:
        return f"sinfo failed: {result.stderr.strip()}"
    partitions = dict(line.split()[:2] for line in result.stdout.splitlines() if len(line.split()) >= 2)
    if partitions.get(PARTITION) != "up" and partitions.get(PARTITION + "*") != "up":
        return f"no partition {PARTITION!r} up (sinfo: {partitions})"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    return None


def job_records(workdir: Path) -> list[dict[str, str]]:
    """SLURM's records of the jobs submitted from ``workdir``, oldest first, with ``rule`` added."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=30).stdout
    records = []
    for line in out.splitlines():
        record = dict(re.findall(r"(\w+)=(\S*)", line))
        if record.get("WorkDir") and os.path.realpath(record["WorkDir"]) == os.path.realpath(workdir):
            match = re.match(r"rule_(.+?)(?:_wildcards_|$)", record.get("Comment", ""))
            record["rule"] = match.group(1) if match else "?"
            records.append(record)
    return sorted(records, key=lambda r: int(r["JobId"]))


def minutes(limit: str) -> int:
    """SLURM's [days-]hh:mm:ss time limit in minutes."""
    days, _, clock = limit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days) if days else 0) * 1440 + h * 60 + m + (1 if s else 0)


def megabytes(memory: str) -> int:
    value, unit = re.fullmatch(r"(\d+)([MGT]?)", memory).groups()
    return int(value) * {"": 1, "M": 1, "G": 1024, "T": 1024**2}[unit]


@dataclass
class SnakemakeRun:
    """One ``snakemake --profile workflow/profiles/slurm`` in its own directory, running in the
    background; ``result()`` waits for it (within RUN_TIMEOUT_S) and returns (code, stdout+stderr)."""

    workdir: Path
    process: subprocess.Popen
    log: Path
    started: float
    returncode: int | None = None

    def result(self) -> tuple[int, str]:
        if self.returncode is None:
            try:
                self.returncode = self.process.wait(timeout=max(1.0, RUN_TIMEOUT_S - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                self.stop()
                pytest.fail(f"snakemake in {self.workdir} did not finish within {RUN_TIMEOUT_S} s; "
                            f"log: {self.log}")
        return self.returncode, self.log.read_text()

    def stop(self) -> None:
        """Stop Snakemake (on SIGINT it cancels its SLURM jobs; SIGTERM would wait for them),
        then cancel any job it left behind."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        left = [r["JobId"] for r in job_records(self.workdir) if r.get("JobState") in ("PENDING", "RUNNING")]
        if left:
            subprocess.run(["scancel", *left], timeout=30)


def start_snakemake(root: Path, name: str, config: dict, *targets: str, fail_attempts: int = 0,
                    env: dict[str, str] | None = None) -> SnakemakeRun:
    workdir = root / name
    (workdir / "fail-tokens").mkdir(parents=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    for i in range(fail_attempts):
        (workdir / "fail-tokens" / str(i)).touch()
    wrapper_dir = root / "bin"
    if not wrapper_dir.exists():
        wrapper_dir.mkdir()
        real = shutil.which("medtransfer", path=str(Path(sys.executable).parent)) or shutil.which("medtransfer")
        assert real, "the medtransfer CLI is not installed beside this Python"
        (wrapper_dir / "medtransfer").write_text(WRAPPER.format(real=real))
        (wrapper_dir / "medtransfer").chmod(0o755)
    profile = root / "test-profile"
    if not profile.exists():
        profile.mkdir()
        (profile / "config.yaml").write_text(yaml.safe_dump(TEST_PROFILE))

    run_env = {k: v for k, v in os.environ.items()
               if not k.startswith("SBATCH_") and k not in ("CUDA_VISIBLE_DEVICES", "MEDTRANSFER_GPU_MODEL")}
    run_env.update({
        "PATH": os.pathsep.join([str(wrapper_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "SBATCH_PARTITION": PARTITION,
        "SBATCH_ACCOUNT": "medtransfer-test",
        "MT_TEST_DIR": str(workdir),
        "MT_TEST_FAIL_DATASET": config["study"]["targets"][0],
        **(env or {}),
    })
    log = root / f"{name}.log"
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
               "--profile", str(REPO / "workflow" / "profiles" / "slurm"), "--profile", str(profile), *targets]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=run_env,
                                   start_new_session=True)
    return SnakemakeRun(workdir, process, log, time.monotonic())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The five cluster runs of this file, started at once (the cluster runs them side by side)."""
    reason = cluster_answers()
    if reason:
        pytest.skip(f"no SLURM cluster: {reason}")
    root = tmp_path_factory.mktemp("slurm")
    config = one_cell_study()
    target = config["study"]["targets"][0]
    cache = paths.dataset_cache(target)
    study = Study(config)
    source, arch = study.pretrain_jobs()[0]
    # gpu_model: a pretrain job whose input exists (a placeholder: sbatch refuses the job before it runs)
    for name in ("gpu_model", "two_gpus"):
        placeholder = root / name / study.pretrain_spec(source, arch)["cache"]
        placeholder.parent.mkdir(parents=True)
        placeholder.touch()
    two_gpus = copy.deepcopy(config)
    two_gpus["pretrain"]["gpus_per_job"] = 2  # one DDP job of 2 processes (train.batch_size 32 divides)
    started: dict[str, SnakemakeRun] = {}
    try:
        # the whole study, where the first attempt of one preprocess job fails
        started["study"] = start_snakemake(root, "study", config, fail_attempts=1)
        # one job whose two attempts fail
        started["fails_twice"] = start_snakemake(root, "fails_twice", config, cache, fail_attempts=2)
        started["bad_partition"] = start_snakemake(root, "bad_partition", config, cache,
                                                   env={"SBATCH_PARTITION": "no-such-partition"})
        started["gpu_model"] = start_snakemake(root, "gpu_model", config, paths.pretrain_model(source, arch),
                                               env={"MEDTRANSFER_GPU_MODEL": "nosuchgpu"})
        started["two_gpus"] = start_snakemake(root, "two_gpus", two_gpus, paths.pretrain_model(source, arch),
                                              env={"MEDTRANSFER_GPU_MODEL": "nosuchgpu"})
        yield started
    finally:
        for run in started.values():
            run.stop()


def test_the_tiny_study_runs_on_slurm_with_partition_and_account_from_the_environment(runs):
    run = runs["study"]
    code, log = run.result()
    assert code == 0, log[-5000:]
    study = Study(yaml.safe_load((run.workdir / "config.yaml").read_text()))
    expected = [paths.run_file(cell, name) for cell in study.runs for name in paths.RUN_FILES]
    expected += [paths.table("summary", "csv"), paths.table("summary", "md")]
    expected += [paths.figure(name, ext) for name in study.figure_names() for ext in ("pdf", "png")]
    missing = [p for p in expected if not (run.workdir / p).is_file() or (run.workdir / p).stat().st_size == 0]
    assert not missing, missing
    assert not list((run.workdir / "results").rglob("checkpoint.pt")), "a finished job left its checkpoint"
    # and every other output of the plan: Snakemake itself finds nothing left to do
    plan = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(run.workdir),
                           "-n", "--cores", "1"], capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0 and "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout[-3000:]

    records = job_records(run.workdir)
    assert {r["rule"] for r in records} == GPU_RULES | CPU_RULES, "figures, tables, collects run on the login node"
    assert {r["Partition"] for r in records} == {PARTITION}
    assert {r["Account"] for r in records} == {"medtransfer-test"}


def test_gpu_rules_get_gpus_and_cpu_rules_none(runs):
    run = runs["study"]
    assert run.result()[0] == 0
    records = job_records(run.workdir)
    for record in records:
        requested = " ".join(record.get(key, "") for key in ("TresPerJob", "TresPerNode", "TresPerTask", "Gres"))
        if record["rule"] in GPU_RULES:
            # --gpus=1 is recorded as a per-job GPU request (--gres would be per node)
            assert re.search(r"gres[:/]gpu:1$", record.get("TresPerJob", "")), record
        else:
            assert "gpu" not in requested, record
    # and the jobs saw what SLURM gave them: a GPU in CUDA_VISIBLE_DEVICES only in the GPU jobs
    rule_of_job = {r["JobId"]: r["rule"] for r in records}
    calls = [line.split() for line in (run.workdir / "calls.txt").read_text().splitlines()]
    devices_of_job = {job: devices for _, job, devices in calls if job in rule_of_job}  # not login-node rules
    assert set(devices_of_job) == set(rule_of_job)
    for job, devices in devices_of_job.items():
        if rule_of_job[job] in GPU_RULES:
            assert re.fullmatch(r"\d+", devices), (rule_of_job[job], job, devices)
        else:
            assert devices == "none", (rule_of_job[job], job, devices)


def test_a_failed_job_is_retried_with_twice_the_time_and_memory(runs):
    run = runs["study"]
    code, log = run.result()
    assert code == 0, log[-5000:]
    target = yaml.safe_load((run.workdir / "config.yaml").read_text())["study"]["targets"][0]
    base = Study(yaml.safe_load((run.workdir / "config.yaml").read_text())).resources_for("preprocess")
    attempts = [r for r in job_records(run.workdir)
                if r["rule"] == "preprocess" and r["Comment"].endswith(f"_wildcards_{target}")]
    assert [r["JobState"] for r in attempts] == ["FAILED", "COMPLETED"], attempts
    first, second = attempts
    assert minutes(first["TimeLimit"]) == base["runtime"] and megabytes(first["MinMemoryNode"]) == base["mem_mb"]
    assert minutes(second["TimeLimit"]) == 2 * base["runtime"]
    assert megabytes(second["MinMemoryNode"]) == 2 * base["mem_mb"]
    assert not list((run.workdir / "fail-tokens").iterdir())


def test_a_second_failure_fails_the_run_naming_the_job_log(runs):
    run = runs["fails_twice"]
    code, log = run.result()
    assert code != 0
    attempts = job_records(run.workdir)
    assert [r["JobState"] for r in attempts] == ["FAILED", "FAILED"], attempts
    # the message names SLURM's log of the last attempt, which is kept, and the rule's own log
    last_log = re.search(rf"\S*/slurm_logs/rule_preprocess/\S+/{attempts[-1]['JobId']}\.log", log)
    assert last_log, log[-5000:]
    assert "Error in rule preprocess" in Path(last_log.group(0)).read_text()
    rule_log = paths.log("preprocess", yaml.safe_load((run.workdir / "config.yaml").read_text())["study"]["targets"][0])
    assert rule_log in log and "fails on purpose" in (run.workdir / rule_log).read_text()
    assert "Exiting because a job execution failed" in log


def test_sbatch_partition_chooses_the_partition(runs):
    code, log = runs["bad_partition"].result()
    assert code != 0
    assert "-p no-such-partition" in log and "invalid partition" in log.lower(), log[-3000:]
    assert job_records(runs["bad_partition"].workdir) == []


def test_a_job_of_several_processes_asks_slurm_for_as_many_gpus(runs):
    """train.gpus_per_job (here pretrain's) is the job's gpu resource, so sbatch gets --gpus=N."""
    code, log = runs["two_gpus"].result()
    assert code != 0  # the model name makes sbatch refuse the request before the job runs
    assert "--gpus=nosuchgpu:2" in log, log[-3000:]


def test_the_gpu_model_reaches_gpu_rules_only(runs):
    run = runs["gpu_model"]
    code, log = run.result()
    assert code != 0  # the test cluster's GPUs have no model name: sbatch refuses the request
    assert "--gpus=nosuchgpu:1" in log, log[-3000:]
    # a dry run of the whole study: the model is set on GPU rules and on no other rule
    env = {**os.environ, "MEDTRANSFER_GPU_MODEL": "nosuchgpu",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    plan = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(run.workdir),
                           "--profile", str(REPO / "workflow" / "profiles" / "slurm"), "-n", "--forceall"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    rules_with_model = set()
    for block in re.split(r"\n\s*\n", plan.stdout + plan.stderr):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if rule and "gpu_model=nosuchgpu" in block:
            rules_with_model.add(rule.group(1))
    assert rules_with_model == GPU_RULES
