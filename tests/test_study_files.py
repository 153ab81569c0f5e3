"""A study file is exactly what runs: `snakemake --configfile <study>` plans the study alone.

Snakemake merges every --configfile over the Snakefile's own `configfile:`; if the demo's
config.yaml were always loaded, every key a study leaves out would silently be the demo's
(its quarter-width CBR-Tiny, its synthetic FID embedder, its small resources). The Snakefile
loads config.yaml only when no file is named, so planning a shipped study with --configfile,
from a folder that holds the demo's config.yaml as the repository does, must give exactly the
jobs it plans alone: those of the committed plan snapshot (tests/test_plan_snapshot.py).
"""

from __future__ import annotations

import gzip
import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from conftest import REPO
from medtransfer.study.defaults import DEFAULT_RESOURCES
from conftest import run_snakemake as snakemake
from test_plan_snapshot import SNAPSHOT, parse_dry_run

STUDIES = sorted((REPO / "workflow" / "studies").glob("*.yaml"))
DEMO = yaml.safe_load((REPO / "config.yaml").read_text())


def plan_with_configfile(study, root):
    workdir = root / study.stem
    workdir.mkdir()
    shutil.copy(REPO / "config.yaml", workdir / "config.yaml")  # the demo beside it, as in the repository
    result = snakemake(workdir, "-n", "-p", "--cores", "8", "--resources", "gpu=4", "--configfile", str(study))
    assert result.returncode == 0, f"{study.stem}: {result.stderr[-3000:]}"
    return parse_dry_run(result.stdout)


def without_front_page_spec(jobs: dict) -> dict:
    # the front page's spec names the config files the run was started with: those differ by design
    return {key: {**job, "spec": None} if key.endswith("report/front.rst") else job for key, job in jobs.items()}


@pytest.mark.slow
def test_a_study_named_with_configfile_plans_exactly_as_alone_with_no_demo_key(tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        plans = dict(zip((s.stem for s in STUDIES), pool.map(lambda s: plan_with_configfile(s, tmp_path), STUDIES)))
    with gzip.open(SNAPSHOT, "rt") as handle:
        alone = json.load(handle)
    for name, jobs in plans.items():
        assert without_front_page_spec(jobs) == without_front_page_spec(alone[name]), name
        study = yaml.safe_load((REPO / "workflow" / "studies" / f"{name}.yaml").read_text())
        # and, read directly: no demo dataset or source the study does not define itself
        foreign = (set(DEMO["datasets"]) - set(study["datasets"])) | (set(DEMO["sources"]) - set(study.get("sources") or {}))
        paths = {path for job in jobs.values() for path in job["output"] + job["input"]}
        leaked = sorted(p for p in paths for n in foreign if f"/{n}/" in p or p.endswith(f"/{n}.h5"))
        assert leaked == [], f"{name}: demo names in its plan: {leaked[:5]}"
        specs = [json.loads(job["spec"]) for job in jobs.values() if job["spec"]]
        # no demo architecture option (its quarter-width CBR-Tiny) where the study sets none
        for arch, options in DEMO["architectures"].items():
            if arch not in (study.get("architectures") or {}):
                assert all(s.get("arch_options") in (None, {}) for s in specs if s.get("arch") == arch), (name, arch)
        # no demo loader setting: streaming jobs get workers unless the study says otherwise
        if "num_workers" not in (study.get("train") or {}):
            assert all(s["training"]["num_workers"] > 0 for s in specs if "training" in s), name
        # no demo resource: a rule the study leaves alone runs with the package's defaults
        for job in jobs.values():
            rule = job["log"][0].split("/logs/")[1].split("/")[0] if job["log"] else None
            if rule in DEMO["resources"] and rule not in (study.get("resources") or {}):
                asked = {k: job["resources"].get(k) for k in ("mem_mb", "runtime")}
                default = {k: str(DEFAULT_RESOURCES[rule][k]) for k in asked}
                assert asked == default, f"{name}: {job['output'][0]} runs with {asked}, not the defaults {default}"


def test_without_a_configfile_the_demo_is_the_study(tmp_path):
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    result = snakemake(tmp_path, "-n", "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "results/data/lesions.h5" in result.stdout and "results/data/grades.h5" in result.stdout
