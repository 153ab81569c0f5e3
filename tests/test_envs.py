"""envs/medtransfer.yaml (for `--sdm conda`) must ask for what pyproject.toml asks for."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO

# PyPI name -> conda-forge name where they differ
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base", "seaborn": "seaborn-base",
               "snakemake": "snakemake-minimal"}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", requirement)
    return match.group(1).lower(), match.group(2).replace(" ", "")


def test_conda_env_matches_the_package_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {CONDA_NAMES.get(name, name): spec for name, spec in map(_split, project["dependencies"])}
    env = yaml.safe_load((REPO / "envs" / "medtransfer.yaml").read_text())
    conda = dict(_split(dep) for dep in env["dependencies"] if isinstance(dep, str))
    conda.pop("python"), conda.pop("pip")
    assert conda == wanted
    pip_section = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    assert "-e .." in pip_section, "the env must install the workflow's own library"


def test_every_rule_names_the_conda_env_and_a_log():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        rules = re.findall(r"^rule (\w+):", text, flags=re.M)
        for rule, body in zip(rules, re.split(r"^rule \w+:", text, flags=re.M)[1:]):
            assert "conda:" in body and "log:" in body, f"{smk.name}: rule {rule} lacks conda: or log:"
            assert "threads:" in body and "mem_mb=" in body and "runtime=" in body and "gpu=" in body, \
                f"{smk.name}: rule {rule} lacks threads or resources"


def test_the_floors_load_checkpoints_weights_only():
    """torch 2.6: weights_only with safe_globals; timm 1.0.26: its checkpoint loader is weights_only
    by default (issue 25): below these, a pickled checkpoint could run code."""
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = {name: Version(spec.removeprefix(">=")) for name, spec in map(_split, project["dependencies"])
              if spec.startswith(">=")}
    assert floors["torch"] >= Version("2.6") and floors["timm"] >= Version("1.0.26")
