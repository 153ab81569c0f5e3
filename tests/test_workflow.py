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

from conftest import REPO, segmentation_target, tiny_config
from conftest import run_snakemake as snakemake

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


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
    # feature reuse: weights per group, the network per run, the filters figure's kernels once
    assert jobs["weight_drift"] == jobs["filters"] == jobs["filter_kernels"] == 1
    assert jobs["reinit"] == jobs["layer_knn"] == runs


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
    from medtransfer.study import Study

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


@pytest.mark.parametrize("entry", [
    {"format": "dicomzz", "root": "/data/mine"},  # a typo of a format, as a new user would make it
    {"format": "imagefolder", "root": "/data/mine"},  # its size is missing
], ids=["unknown_format", "missing_size"])
def test_a_bad_dataset_entry_stops_the_dry_run_with_the_jobs_message(tmp_path, entry):
    """Found when the Snakefile loads, in the words the preprocess job itself would use."""
    job = subprocess.run(["medtransfer", "preprocess", "--spec", json.dumps(
        {"name": "mine", "entry": entry, "out": str(tmp_path / "mine.h5")})], capture_output=True, text=True,
        timeout=300, env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert job.returncode == 2
    message = job.stderr.strip().splitlines()[-1].removeprefix("medtransfer preprocess: error: ")
    assert "datasets.mine" in message
    config = tiny_config()
    config["datasets"]["mine"] = entry
    config["study"]["targets"] = ["mine"]
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "1")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and f"invalid config: {message}" in output
    assert not (tmp_path / "results").exists()


def test_a_failing_job_prints_the_end_of_its_log(tmp_path):
    """The job's own error (a folder that does not exist: only the job can know) on the console."""
    config = tiny_config()
    config["datasets"]["mine"] = {"format": "imagefolder", "root": str(tmp_path / "absent"), "size": 16}
    config["study"]["targets"] = ["mine"]
    write_config(tmp_path, config)
    assert snakemake(tmp_path, "-n", "--cores", "1").returncode == 0  # the entry itself is fine
    result = snakemake(tmp_path, "--cores", "1", "results/data/mine.h5")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "--- rule preprocess: last lines of results/logs/preprocess/mine.log ---" in output
    assert f"medtransfer preprocess: error: datasets.mine.root: folder {tmp_path / 'absent'} does not exist" in output


def test_every_feature_reuse_and_cross_run_analysis_turned_off_still_plans(tmp_path):
    config = tiny_config()
    off = ("weight_drift", "reinit", "layer_knn", "filters", "fid", "prediction_similarity", "representation_gain")
    config["analysis"].update({name: False for name in off})
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", "--cores", "1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    jobs = planned_jobs(result)
    assert jobs["finetune"] and not set(jobs) & {"weight_drift", "reinit", "layer_knn_group", "filters", "fid_stats",
                                                  "prediction_similarity", "representation_gain"}


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
def test_tiny_study_end_to_end_then_one_figure_without_retraining(tiny_study_run):
    tmp_path = tiny_study_run  # the run itself is the fixture's (shared with the report's browser test)
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
    # the feature-reuse analyses, from the runs' files
    for name in ("weight_drift", "reinit", "layer_knn", "filters"):
        assert (results / "figures" / f"{name}.png").stat().st_size > 0
    drift = pd.read_csv(results / "analysis" / "weight_drift.csv")
    assert drift.groupby("run")["block"].count().eq(n_blocks).all() and drift["run"].nunique() == len(metrics)
    reinit = pd.read_csv(results / "analysis" / "reinit.csv")
    none = reinit[(reinit["block"] == "none") & (reinit["metric"] == "auc")].merge(
        metrics, on=["dataset", "arch", "init", "fraction", "seed"])
    # re-initialisation and layer-wise k-NN score a classifier: the segmentation runs are not theirs
    assert len(none) == len(classification) and (none["value"] - none["test_auc"]).abs().max() < 1e-9
    knn = pd.read_csv(results / "analysis" / "layer_knn.csv")
    assert set(knn["state"]) == {"init", "final"} and knn["run"].nunique() == len(classification)
    assert (knn["knn_k"] == 200).all() and knn.loc[knn["metric"] == "auc", "value"].between(0, 1).all()
    assert len(pd.read_csv(results / "analysis" / "filters.csv")) == len(metrics)
    kernels = pd.read_csv(results / "analysis" / "filter_kernels.csv")
    assert set(kernels["init"]) == {"RI", "WT_natural"} and set(kernels["seed"]) == {0}
    # the cross-run analyses, from the files the runs wrote (no fine-tuning reruns)
    for name in ("fid_gain", "fid_st_share", "prediction_similarity", "representation_gain"):
        assert (results / "figures" / f"{name}.png").stat().st_size > 0
    distance = pd.read_csv(results / "analysis" / "domain_distance.csv")
    assert distance[["source", "source_dataset", "target"]].values.tolist() == [
        ["natural", "shapes", "lesion-masks"], ["natural", "shapes", "lesions"]]
    assert (distance["fid"] > 0).all() and set(distance["features"]) == {"natural@cbr_tiny"}
    assert (distance["n_source"] == 300).all() and distance["n_target"].tolist() == [128, 200]
    gain = pd.read_csv(results / "analysis" / "fid_gain.csv").set_index("dataset")
    assert "no ST_natural runs" in gain.loc["lesions", "note"]  # the tiny study has no ST: said, not a crash
    predictions = pd.read_csv(results / "analysis" / "prediction_similarity.csv")
    assert sorted(predictions["kind"]) == ["inits", "inits", "seeds", "seeds"]  # 2 seeds × 1 pair; 2 inits × (0, 1)
    assert predictions["agreement"].between(0, 1).all()
    correlation = pd.read_csv(results / "analysis" / "representation_gain.csv")
    assert set(correlation["dataset"]) == {"lesions", "all"} and (correlation["n_runs"] == 2).all()

    # Regenerate one figure: Snakemake's own plan must contain no training or extraction job.
    (results / "figures" / "test_auc.pdf").unlink()
    plan = snakemake(tmp_path, "-n", "--cores", "1", "results/figures/test_auc.pdf")
    assert plan.returncode == 0, plan.stderr
    assert planned_jobs(plan) == {"figure": 1}
    assert snakemake(tmp_path, "--cores", "1", "results/figures/test_auc.pdf").returncode == 0
    assert (results / "figures" / "test_auc.pdf").exists()
    # The HTML report with every figure, table and the provenance table (opened in a browser by
    # tests/test_report_browser.py); its pieces are made by the run itself.
    assert (results / "report" / "front.rst").stat().st_size > 0
    for name in ("summary", "runs", "pretrain", "provenance"):
        assert (results / "report" / "tables" / f"{name}.html").stat().st_size > 0
    assert "What this run found" in (results / "figures" / "test_auc.rst").read_text()
    report = snakemake(tmp_path, "--report", "results/report.html")
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert (results / "report.html").stat().st_size > 0
    # Nothing left to do: a second full run plans no job at all.
    again = snakemake(tmp_path, "-n", "--cores", "1")
    assert "Nothing to be done" in again.stdout + again.stderr


def _grid_size(config: dict) -> int:
    from medtransfer.study import Study

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
