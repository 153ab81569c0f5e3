"""Config errors found when the Snakefile loads (every dataset entry against its format's
registered keys), and the console report of failed jobs' logs."""

from __future__ import annotations

import copy

import pytest
import yaml

from medtransfer.data import FORMATS, check_entry, read_dataset
from medtransfer.errors import ConfigError
from medtransfer.study import Study
from medtransfer.joblogs import failed_job_logs, failure_report, report_failed_jobs

from conftest import REPO, run_snakemake, tiny_config

# The smallest entry each format accepts before reading a file, written here from the formats'
# documentation (not from their registration): what a user must give.
MINIMAL_ENTRIES = {
    "synthetic": {"task": "lesion_presence", "n_train": 10, "n_val": 5, "n_test": 5},
    "medmnist": {"flag": "breastmnist", "root": "resources/medmnist"},
    "imagefolder": {"root": "/data/mine", "size": 64},
    "csv": {"root": "/data/mine", "file": "labels.csv", "path_column": "path", "label_column": "label",
            "size": 64},
    "npz": {"root": "/data", "file": "mine.npz"},
    "chexpert": {"root": "/data/CheXpert-v1.0-small", "size": 224},
    "aptos2019": {"root": "/data/aptos", "size": 224},
    "isic2019": {"root": "/data/isic", "size": 224},
    "pcam": {"root": "/data/pcam"},
    "cbis_ddsm": {"root": "/data/cbis", "size": 224},
    "masks": {"root": "/data/lungs", "size": 256},
    "siim_acr": {"root": "/data/siim", "size": 256, "target": "segmentation"},
    "rsna_pe": {"root": "/data/rsna-str-pe", "size": 224},
    "busi": {"root": "/data/Dataset_BUSI_with_GT", "size": 224},
    "ddti": {"root": "/data/ddti", "size": 224},
    "chestxray14": {"root": "/data/ChestXray-NIHCC", "size": 224},
    "lists": {"root": "/data/shenzhen", "files": {"train": "train.txt"}, "size": 224},
    "isic2018": {"root": "/data/isic2018", "size": 224},
    "eyepacs": {"root": "/data/eyepacs", "size": 224},
}
# Keys of those entries that may be left out (defaults exist); every other one is required.
OPTIONAL = {"csv": {"label_column"}}  # one of label_column / label_columns, checked as a pair


def test_every_registered_format_has_a_minimal_entry_here():
    assert set(MINIMAL_ENTRIES) == set(FORMATS.names())


@pytest.mark.parametrize("fmt", sorted(MINIMAL_ENTRIES))
def test_each_required_key_is_checked_without_reading_a_file(fmt):
    entry = {"format": fmt, **MINIMAL_ENTRIES[fmt]}
    check_entry("mine", entry)  # no file exists at these roots: nothing was read
    for key in set(MINIMAL_ENTRIES[fmt]) - OPTIONAL.get(fmt, set()):
        broken = {k: v for k, v in entry.items() if k != key}
        with pytest.raises(ConfigError, match=f"datasets.mine: missing key '{key}'"):
            check_entry("mine", broken)


def test_a_masks_entry_with_a_gray_value_per_class_missing_is_caught_before_reading():
    entry = {"format": "masks", "root": "/data/lungs", "size": 256, "classes": ["background", "left", "right"],
             "mask_values": [0, 255]}
    with pytest.raises(ConfigError, match=r"datasets.mine.mask_values: one distinct gray value"):
        check_entry("mine", entry)


def test_read_dataset_stops_with_the_same_message_before_reading():
    entry = {"format": "imagefolder", "root": "/nonexistent"}
    with pytest.raises(ConfigError) as planned:
        check_entry("mine", entry)
    with pytest.raises(ConfigError) as job:
        read_dataset("mine", entry)
    assert str(planned.value) == str(job.value) == (
        "datasets.mine: missing key 'size' (images are resized to size x size)")


@pytest.mark.parametrize("entry,message", [
    ({"format": "dicomzz", "root": "/x"}, "unknown dataset format 'dicomzz' (config key datasets.mine.format); "
                                          "allowed: " + ", ".join(FORMATS.names())),
    ({"root": "/x"}, "datasets.mine: missing key 'format'"),
    ({"format": "medmnist", "flag": "breastmnistt", "root": "/x"}, "datasets.mine.flag is 'breastmnistt'"),
    ({"format": "medmnist", "flag": "breastmnist", "root": "/x", "size": 32}, "datasets.mine.size is 32"),
    ({"format": "synthetic", **MINIMAL_ENTRIES["synthetic"], "task": "tumours"}, "datasets.mine.task is 'tumours'"),
    ({"format": "synthetic", **MINIMAL_ENTRIES["synthetic"], "n_val": 0}, "datasets.mine.n_val must be >= 1"),
    ({"format": "csv", **MINIMAL_ENTRIES["csv"], "label_columns": ["a", "b"]}, "exactly one of 'label_column'"),
    ({"format": "imagefolder", "root": "/x", "size": 64, "channels": 2}, "datasets.mine.channels is 2"),
    ({"format": "imagefolder", "root": "/x", "size": 64, "resize": "lanczos"}, "datasets.mine.resize is 'lanczos'"),
])
def test_values_a_format_rejects_are_found_before_reading(entry, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_entry("mine", entry)


def test_study_checks_every_dataset_entry_used_or_not():
    config = tiny_config()
    Study(config).check_dataset_entries()
    config["datasets"]["unused"] = {"format": "dicomzz", "root": "/x"}
    study = Study(config)  # the light constructor (every cluster job builds it) does not import formats
    with pytest.raises(ConfigError, match="datasets.unused.format"):
        study.check_dataset_entries()


@pytest.mark.parametrize("path", sorted((REPO / "workflow" / "studies").glob("*.yaml")) + [REPO / "config.yaml"],
                         ids=lambda p: p.stem)
def test_shipped_studies_pass_the_dataset_checks(path):
    Study(yaml.safe_load(path.read_text())).check_dataset_entries()


@pytest.mark.parametrize("fmt", ["aptos2019", "isic2019", "chexpert", "cbis_ddsm", "chestxray14", "isic2018",
                                 "eyepacs"])
def test_a_dataset_entry_without_size_is_refused_by_the_entry_check(fmt):
    entry = {"format": fmt, "root": "/data/mine"}
    with pytest.raises(ConfigError, match=r"^datasets.mine: missing key 'size' \(images are resized to size x size\)$"):
        check_entry("mine", entry)


def test_an_aptos_entry_without_size_stops_the_dry_run_before_any_job(tmp_path):
    """It passed ``snakemake -n`` and failed in the preprocess job (issue 25)."""
    config = tiny_config()
    config["datasets"]["retina"] = {"format": "aptos2019", "root": str(tmp_path / "aptos2019")}
    config["study"]["targets"] = ["retina"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "-n", "--cores", "1")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid config: datasets.retina: missing key 'size' (images are resized to size x size)" in output
    assert "Traceback" not in output and "preprocess" not in output  # no job was planned
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------ failed job logs

MAIN_LOG = """\
Building DAG of jobs...
[Thu Dec  3 10:23:26 2026]
localrule preprocess:
    output: results/data/mine.h5
    log: results/logs/preprocess/mine.log
    jobid: 0
Error in rule preprocess:
    message: None
    jobid: 0
    output: results/data/mine.h5
    log: results/logs/preprocess/mine.log (check log file(s) for error details)
    shell:
        medtransfer preprocess --spec '{}' > results/logs/preprocess/mine.log 2>&1
        (command exited with non-zero exit code)
Trying to restart job 0.
Error in rule finetune:
    jobid: 4
    log: results/logs/finetune/a.log, results/logs/finetune/b.log (check log file(s) for error details)
Error in rule preprocess:
    jobid: 0
    log: results/logs/preprocess/mine.log (check log file(s) for error details)
Error in rule no_log:
    jobid: 7
Shutting down, this might take some time.
"""


def test_failed_job_logs_reads_each_error_block_once():
    assert failed_job_logs(MAIN_LOG) == [
        ("preprocess", ["results/logs/preprocess/mine.log"]),  # once, though it failed on its retry too
        ("finetune", ["results/logs/finetune/a.log", "results/logs/finetune/b.log"]),
    ]  # the running job's "log:" line and the block without a log give nothing


def test_failure_report_shows_the_end_of_each_log(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # Snakemake runs the handler in the working directory
    (tmp_path / "results/logs/preprocess").mkdir(parents=True)
    (tmp_path / "results/logs/finetune").mkdir(parents=True)
    lines = [f"line {i}" for i in range(40)] + ["medtransfer preprocess: error: datasets.mine.root: no folder"]
    (tmp_path / "results/logs/preprocess/mine.log").write_text("\n".join(lines) + "\n")
    (tmp_path / "results/logs/finetune/a.log").write_text("Traceback ...\nRuntimeError: boom\n")
    main = tmp_path / "main.log"
    main.write_text(MAIN_LOG)
    report = failure_report([str(main)], lines=5)
    assert "--- rule preprocess: last lines of results/logs/preprocess/mine.log ---" in report
    assert report.count("line ") == 4 and "line 39" in report and "line 35" not in report
    assert "medtransfer preprocess: error: datasets.mine.root: no folder" in report
    assert "RuntimeError: boom" in report
    assert "results/logs/finetune/b.log ---\n(the job wrote no log here)" in report
    report_failed_jobs(str(main))
    assert "RuntimeError: boom" in capsys.readouterr().err
    main.write_text("Building DAG of jobs...\nNothing to be done.\n")
    report_failed_jobs(main)
    assert capsys.readouterr().err == ""  # no failed job, no report
    assert failure_report(tmp_path / "absent.log") == ""


def test_constructor_stays_light():
    """The checks that import the registries are separate: Study() alone must not load torch."""
    import subprocess
    import sys

    code = ("import sys, yaml; from medtransfer.study import Study; "
            f"Study(yaml.safe_load(open({str(REPO / 'config.yaml')!r}))); "
            "import medtransfer.joblogs; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_tiny_config_is_not_mutated_by_checks():
    config = tiny_config()
    before = copy.deepcopy(config)
    Study(config).check_dataset_entries()
    assert config == before


@pytest.mark.parametrize("name", ["tiny\n\n.. raw:: html\n\n   <script>alert(1)</script>", "tab\there", "esc\x1b[31m"])
def test_a_study_name_with_a_control_character_stops_the_plan(name):
    config = tiny_config()
    config["study"]["name"] = name
    with pytest.raises(ConfigError, match=r"config key study\.name: .*control character"):
        Study(config)
    config["study"]["name"] = "tiny <b>markup</b> is shown as text, not refused"
    Study(config)
