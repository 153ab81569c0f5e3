"""The workflow as users run it: lint, format, dry-run plans, and a whole tiny study end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, tiny_config

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    # rules call the `medtransfer` command: find the one installed beside this Python
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def write_config(workdir: Path, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from a dry run's summary table ('rule  count' lines)."""
    counts, in_table = {}, False
    for line in result.stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts


def test_lint_is_clean():
    result = subprocess.run([*SNAKEMAKE, "--lint", "-s", "Snakefile"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations" in result.stdout + result.stderr or "Lints for" not in result.stdout


def test_snakefmt_check():
    snakefmt = shutil.which("snakefmt") or str(Path(sys.executable).with_name("snakefmt"))
    result = subprocess.run([snakefmt, "--check", "Snakefile", "workflow"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_plans_the_whole_grid(tmp_path):
    config = tiny_config()
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "1")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    runs = 1 * 1 * 2 * 1 * 2  # targets × architectures × inits × fractions × seeds
    assert jobs["finetune"] == runs and jobs["activations"] == runs
    assert jobs["similarity_init_final"] == 1  # one job per (dataset, arch, fraction) group
    assert jobs["preprocess"] == 2 and jobs["pretrain"] == 1
    assert jobs["similarity_pairs"] == 1  # one (dataset, arch, fraction) group


def test_dry_run_plans_features_once_and_one_probe_per_cell(tmp_path):
    config = tiny_config()
    config["study"]["protocols"] = ["finetune", "linear", "knn"]
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "1")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    cells = 1 * 1 * 2 * 1 * 2
    assert jobs["finetune"] == cells and jobs["probe"] == 2 * cells
    assert jobs["features"] == 3  # RI per seed, WT shared by both seeds
    from medtransfer.grid import Study

    assert jobs["figure"] == len(Study(config).figure_names())


@pytest.mark.slow
def test_a_frozen_protocol_study_end_to_end(tmp_path):
    config = tiny_config()
    config["study"]["protocols"] = ["linear", "knn"]
    config["study"]["fractions"] = [0.5, 1.0]
    config["knn"] = {"k": 20}
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "--cores", "2", "--resources", "gpu=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "results"
    assert not (results / "runs").exists(), "a frozen-feature study trains no network"
    metrics = pd.read_csv(results / "analysis" / "metrics.csv")
    assert len(metrics) == 2 * 2 * 2 * 2 and set(metrics["protocol"]) == {"linear", "knn"}
    assert metrics["test_auc"].between(0, 1).all()
    half = metrics[metrics["fraction"] == 0.5]
    assert (half["num_train"] < metrics["num_train"].max()).all()
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert len(summary) == 2 * 2 * 2  # protocols × inits × fractions, over 2 seeds
    assert (results / "figures" / "protocols.png").stat().st_size > 0
    provenance = pd.read_csv(results / "tables" / "provenance.csv")
    assert provenance["what"].str.startswith(("linear ", "knn ", "pretrain ")).all()


def test_a_bad_config_stops_before_any_job_naming_the_key(tmp_path):
    config = tiny_config()
    config["study"]["architectures"] = "cbr_tiny"  # not a list
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "1")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "study" in output and "architectures" in output
    config = tiny_config()
    config["study"]["inits"] = [{"WT": "imagenet"}]
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "1")
    assert result.returncode != 0 and "not under `sources:`" in result.stdout + result.stderr
    config = tiny_config()
    config["study"]["architectures"] = ["resnet_18"]  # a typo: timm's name is resnet18
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "1")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "study.architectures[0]: unknown architecture 'resnet_18'" in output
    assert "Traceback" not in output


def segmentation_target(config: dict) -> dict:
    """tiny_config() with a second target: synthetic lesion masks (a segmentation target)."""
    config["datasets"]["lesion-masks"] = {"format": "synthetic", "task": "lesion_segmentation", "n_train": 128,
                                          "n_val": 64, "n_test": 64, "size": 16}
    config["study"]["targets"] = [*config["study"]["targets"], "lesion-masks"]
    return config


def test_dry_run_plans_segmentation_targets_beside_classification(tmp_path):
    config = segmentation_target(tiny_config())
    config["study"]["protocols"] = ["finetune", "knn"]
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "1")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result)
    cells = 1 * 1 * 2 * 1 * 2  # per target: architectures × inits × fractions × seeds
    assert jobs["finetune"] == jobs["activations"] == 2 * cells
    assert jobs["probe"] == cells, "the k-NN protocol classifies: the segmentation target has none"
    assert jobs["similarity_init_final"] == jobs["similarity_pairs"] == 2
    assert "results/figures/test_dice.pdf" in result.stdout


@pytest.mark.slow
def test_tiny_study_end_to_end_then_one_figure_without_retraining(tmp_path):
    write_config(tmp_path, segmentation_target(tiny_config()))  # a classification and a segmentation target
    result = snakemake(tmp_path, "--cores", "2", "--resources", "gpu=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = tmp_path / "results"
    for name in ("test_auc", "convergence", "similarity_init_final", "similarity_pairs_heatmap",
                 "similarity_pairs_blocks", "test_dice", "convergence_dice"):
        assert (results / "figures" / f"{name}.pdf").stat().st_size > 0
        assert (results / "figures" / f"{name}.png").stat().st_size > 0
    summary = pd.read_csv(results / "tables" / "summary.csv")
    assert len(summary) == 2 * 2  # targets × inits × fractions, over 2 seeds
    pairs = pd.read_csv(results / "analysis" / "similarity_pairs.csv")
    assert set(pairs["kind"]) == {"pair", "noise_floor"} and set(pairs["dataset"]) == {"lesions", "lesion-masks"}
    n_blocks = pairs["block_a_index"].max() + 1
    # per target: 2 seeds of the pair + one noise-floor comparison per init, each a full block × block
    # matrix (the segmentation network's blocks: the encoder's, then the decoder as the head)
    assert len(pairs) == 2 * (2 + 2) * n_blocks**2
    metrics = pd.read_csv(results / "analysis" / "metrics.csv")
    classification, masks = metrics[metrics["dataset"] == "lesions"], metrics[metrics["dataset"] == "lesion-masks"]
    assert classification["test_auc"].between(0, 1).all() and classification["test_dice"].isna().all()
    assert masks["test_dice"].between(0, 1).all() and masks["test_iou"].between(0, 1).all()
    assert masks["task"].eq("segmentation").all() and masks["test_auc"].isna().all()
    history = pd.read_csv(results / "analysis" / "history.csv")
    assert history.loc[history["dataset"] == "lesion-masks", "val_dice"].between(0, 1).all()
    seg_cka = pd.read_csv(results / "analysis" / "similarity_init_final.csv").query("dataset == 'lesion-masks'")
    assert list(dict.fromkeys(seg_cka["block"]))[-1] == "head" and len(seg_cka)
    run_dir = results / "runs" / "lesions" / "cbr_tiny" / "WT_natural" / "f1" / "s0"
    record = json.loads((run_dir / "init.json").read_text())
    assert any(block["origin"] == "source" for block in record["blocks"])
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    # the demo asks for bf16 (the default) but not amp_on_cpu: what ran on this CPU was float32
    assert run_metrics["precision"] == {"autocast": "float32", "channels_last": True}
    provenance = run_metrics["provenance"]
    assert {"config_hash", "git_commit", "packages", "host", "device", "wall_seconds"} <= set(provenance)
    table = pd.read_csv(results / "tables" / "provenance.csv")
    assert len(table) == len(metrics) + 1  # every run and the one pretraining
    assert table["git_commit"].notna().all() and (table["device"] == "cpu").all()
    cka = pd.read_csv(results / "analysis" / "similarity_init_final.csv")
    assert cka["value"].between(-1e-6, 1 + 1e-6).all()

    # Regenerate one figure: Snakemake's own plan must contain no training or extraction job.
    (results / "figures" / "test_auc.pdf").unlink()
    plan = snakemake(tmp_path, "-n", "--cores", "1", "results/figures/test_auc.pdf")
    assert plan.returncode == 0, plan.stderr
    assert planned_jobs(plan) == {"figure": 1}
    assert snakemake(tmp_path, "--cores", "1", "results/figures/test_auc.pdf").returncode == 0
    assert (results / "figures" / "test_auc.pdf").exists()
    # The HTML report with every figure, table and the provenance table.
    report = snakemake(tmp_path, "--report", "results/report.html")
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert (results / "report.html").stat().st_size > 0
    # Nothing left to do: a second full run plans no job at all.
    again = snakemake(tmp_path, "-n", "--cores", "1")
    assert "Nothing to be done" in again.stdout + again.stderr


def _grid_size(config: dict) -> int:
    from medtransfer.grid import Study

    return len(Study(config).runs)


@pytest.mark.parametrize("study", ["transfusion", "feature_reuse", "cifar_to_medmnist", "medmnist"])
def test_published_study_dry_runs_with_the_grid_job_count(study, tmp_path):
    path = REPO / "workflow" / "studies" / f"{study}.yaml"
    config = yaml.safe_load(path.read_text())
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "8", "--resources", "gpu=4")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    study_cfg = config["study"]
    # independent count: per init entry, its k values × the architectures it applies to
    cells = sum((len(e["k"]) if isinstance(e, dict) and isinstance(e.get("k"), list) else 1)
                * len(e.get("architectures", study_cfg["architectures"]) if isinstance(e, dict)
                      else study_cfg["architectures"])
                for e in study_cfg["inits"])
    runs = len(study_cfg["targets"]) * cells * len(study_cfg["fractions"]) * len(study_cfg["seeds"])
    assert runs == _grid_size(config)
    assert jobs["finetune"] == runs and jobs["activations"] == runs
    assert jobs["preprocess"] == len(config["datasets"])


def test_the_ssl_transfer_study_plans_every_protocol(tmp_path):
    config = yaml.safe_load((REPO / "workflow" / "studies" / "ssl_transfer.yaml").read_text())
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "8", "--resources", "gpu=4")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    targets, fractions, seeds = 3, 3, 3
    singles, fusions = 5, 2  # RI + 4 WT sources; DVME and CONCAT (linear only)
    assert jobs["finetune"] == targets * singles * fractions * seeds
    assert jobs["probe"] == targets * fractions * seeds * ((singles + fusions) + singles)  # linear + knn
    assert jobs["features"] == targets * (seeds + 4)  # RI per seed, each WT once
    assert jobs["pretrain"] == 4 and jobs["comparison_table"] == jobs["summary_table"] == jobs["pretrain_table"] == 1
    # DVME fine-tuned too, one member at another architecture: its pretraining and its features
    config["study"]["inits"][5] = {"DVME": ["cifar-simclr", "cifar-byol@resnet50_28"], "finetune": True}
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "8", "--resources", "gpu=4")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    assert jobs["finetune"] == targets * (singles + 1) * fractions * seeds
    assert jobs["pretrain"] == 5 and jobs["features"] == targets * (seeds + 5)
    assert "results/pretrain/cifar-byol/resnet50_28/model.pt" in result.stdout
