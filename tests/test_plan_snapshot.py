"""What the workflow plans, frozen: every job of the demo and of every shipped study, with its spec.

A job's spec feeds ``spec_hash`` (checkpoint resume), its params feed Snakemake's rerun triggers,
and its inputs, outputs and resources are the DAG a cluster runs. A refactoring of the planner
must leave all of them byte-identical, so this test plans each study the way users do (a dry run
of the repository's Snakefile, the study file as the whole config) and compares every job with
the committed snapshot ``tests/snapshots/plans.json.gz``.

The snapshot records, per job: its outputs, inputs and log (sorted), its threads and the
resources the project sets (mem_mb, runtime, gpu), and the exact ``--spec`` JSON string of its
command. Rule names and the rest of the command line are left out on purpose: renaming a rule
or a CLI subcommand is not a change of what runs.

A change that is meant to change plans regenerates the snapshot and says so in its commit:
``MEDTRANSFER_UPDATE_PLAN_SNAPSHOT=1 python -m pytest tests/test_plan_snapshot.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO
from conftest import run_snakemake as snakemake

SNAPSHOT = REPO / "tests" / "snapshots" / "plans.json.gz"
STUDIES = {"demo": REPO / "config.yaml"} | {
    path.stem: path for path in sorted((REPO / "workflow" / "studies").glob("*.yaml"))
}
KEPT_RESOURCES = ("mem_mb", "runtime", "gpu")
UPDATE = os.environ.get("MEDTRANSFER_UPDATE_PLAN_SNAPSHOT") == "1"


def _paths(value: str) -> list[str]:
    return sorted(part.strip() for part in value.split(",") if part.strip())


def parse_dry_run(stdout: str) -> dict[str, dict]:
    """Jobs of ``snakemake -n -p`` output, keyed by their sorted outputs (or ``rule:<name>``)."""
    jobs: dict[str, dict] = {}
    current: dict | None = None
    rule = ""

    def close() -> None:
        if current is None:
            return
        key = ",".join(current["output"]) or f"rule:{rule}"
        assert key not in jobs, f"two jobs write {key}"
        jobs[key] = current

    for line in stdout.splitlines():
        stripped = line.strip()
        if not line.startswith(" ") and stripped.endswith(":") and stripped.split()[0] in ("rule", "localrule"):
            close()
            rule = stripped.split()[1].rstrip(":")
            current = {"output": [], "input": [], "log": [], "threads": 1, "resources": {}, "spec": None}
        elif current is None:
            continue
        elif line.startswith("    input: "):
            current["input"] = _paths(line[len("    input: "):])
        elif line.startswith("    output: "):
            current["output"] = _paths(line[len("    output: "):])
        elif line.startswith("    log: "):
            current["log"] = _paths(line[len("    log: "):])
        elif line.startswith("    threads: "):
            current["threads"] = int(stripped.split()[1])
        elif line.startswith("    resources: "):
            pairs = (item.split("=", 1) for item in line[len("    resources: "):].split(", "))
            current["resources"] = {k: v for k, v in pairs if k in KEPT_RESOURCES}
        elif line.startswith("Shell command: "):
            words = shlex.split(line[len("Shell command: "):])
            if "--spec" in words:
                current["spec"] = words[words.index("--spec") + 1]
    close()
    return jobs


def plan(name: str, config: Path, root: Path) -> dict[str, dict]:
    workdir = root / name
    workdir.mkdir(parents=True)
    shutil.copy(config, workdir / "config.yaml")
    result = snakemake(workdir, "-n", "-p", "--cores", "8", "--resources", "gpu=4")
    assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    jobs = parse_dry_run(result.stdout)
    assert jobs, f"{name}: no job parsed from the dry run"
    return jobs


def _write(snapshot: dict) -> None:
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(snapshot, sort_keys=True, indent=0).encode()
    with open(SNAPSHOT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as out:
        out.write(text)


def _differences(name: str, want: dict[str, dict], got: dict[str, dict], most: int = 5) -> list[str]:
    lines = []
    for key in sorted(set(want) - set(got))[:most]:
        lines.append(f"{name}: job no longer planned: {key}")
    for key in sorted(set(got) - set(want))[:most]:
        lines.append(f"{name}: new job: {key}")
    for key in sorted(set(want) & set(got)):
        for field in want[key]:
            if want[key][field] != got[key].get(field) and len(lines) < 3 * most:
                lines.append(f"{name}: {key}: {field} was {want[key][field]!r}, now {got[key].get(field)!r}")
    return lines


@pytest.mark.slow
def test_every_study_plans_exactly_the_snapshot(tmp_path):
    # Two dry runs at a time: each is one mostly single-threaded Snakemake process.
    with ThreadPoolExecutor(max_workers=2) as pool:
        plans = dict(zip(STUDIES, pool.map(lambda item: plan(*item, tmp_path), STUDIES.items())))
    if UPDATE:
        _write(plans)
    with gzip.open(SNAPSHOT, "rt") as handle:
        snapshot = json.load(handle)
    assert sorted(snapshot) == sorted(plans), "a study was added or removed: regenerate the snapshot"
    problems = [line for name in plans for line in _differences(name, snapshot[name], plans[name])]
    assert not problems, "\n".join(problems)
    for name, jobs in plans.items():
        assert jobs == snapshot[name], name  # every field, every job


def test_the_parser_reads_a_job_block():
    stdout = """Building DAG of jobs...
[Mon Dec  7 23:16:17 2026]
rule finetune:
    input: b.h5, a.h5
    output: r/x.pt, r/m.json
    log: l.log
    jobid: 3
    threads: 2
    resources: tmpdir=/tmp, runtime=30, gpu=1, mem_mb=2000, mem=2 GB, mem_mib=1908
Shell command: medtransfer finetune --spec '{"a":"it'"'"'s"}' --threads 2 > l.log 2>&1

[Mon Dec  7 23:16:17 2026]
localrule all:
    input: r/m.json
    jobid: 0
"""
    jobs = parse_dry_run(stdout)
    assert jobs["r/m.json,r/x.pt"] == {"output": ["r/m.json", "r/x.pt"], "input": ["a.h5", "b.h5"],
                                       "log": ["l.log"], "threads": 2,
                                       "resources": {"runtime": "30", "gpu": "1", "mem_mb": "2000"},
                                       "spec": '{"a":"it\'s"}'}
    assert jobs["rule:all"]["input"] == ["r/m.json"] and jobs["rule:all"]["spec"] is None
