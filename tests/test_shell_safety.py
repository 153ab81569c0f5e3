"""Names from a config never reach a shell as code (issue 25, finding 4).

An architecture name is a path component and part of every job's command line; timm's
``is_model`` ignores what follows the first ``.``, so ``resnet18.x$(...)`` passed every check and
bash ran it when the job started. The schema now allows only path-safe characters in
architecture names, a pretrained tag must be one timm has, and every path in a rule's shell
string is quoted (``:q``).
"""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO, tiny_config
from conftest import run_snakemake as snakemake


def write(workdir, config):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize("where", ["study", "options", "init", "fusion"])
def test_an_architecture_name_with_shell_syntax_stops_the_plan_and_runs_nothing(tmp_path, where):
    marker = tmp_path / "pwned"
    arch = f"resnet18.x$(touch {marker})"
    config = tiny_config()
    if where == "study":
        config["study"]["architectures"] = [arch]
    elif where == "options":
        config["architectures"][arch] = {}
    elif where == "init":
        config["study"]["inits"][1] = {"WT": "natural", "architectures": [arch]}
    else:
        config["study"]["inits"].append({"CONCAT": ["natural", f"natural@{arch}"]})
        config["study"]["protocols"] = ["finetune", "linear"]
    write(tmp_path / "run", config)
    result = snakemake(tmp_path / "run", "--cores", "1")  # not a dry run: nothing may start
    assert result.returncode != 0
    assert arch in result.stderr + result.stdout  # the schema's message names the value it refused
    assert not marker.exists() and not (tmp_path / "run" / "results").exists()


def test_a_mistyped_pretrained_tag_stops_the_plan_naming_the_tags(tmp_path):
    config = tiny_config()
    config["study"]["architectures"] = ["resnet18.tv_in1kk"]
    write(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "1")
    output = result.stderr + result.stdout
    assert result.returncode != 0
    assert "study.architectures[0]: unknown pretrained tag 'tv_in1kk' of timm model 'resnet18'" in output
    assert "tv_in1k" in output.split("its tags:")[1]


def test_every_path_in_a_rule_shell_string_is_quoted():
    unquoted = []
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for field in re.findall(r"\{((?:input|output|log|wildcards)[^}]*)\}", line):
                if not field.endswith(":q"):
                    unquoted.append(f"{path.name}:{number}: {{{field}}}")
    assert unquoted == []
