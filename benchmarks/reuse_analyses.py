"""What the feature-reuse analyses cost: weight drift, filters, re-initialisation and layer-wise k-NN.

1. On the demo's runs (``--demo DIR``: a work dir where ``snakemake --cores 2`` ran config.yaml,
   default the current one): each analysis over all its runs in this process (the work itself),
   and the cost of one job's process start (``python -c "import <the analysis module>"``), which
   the workflow pays once per job.
2. On a 10,000-image target: a synthetic ``lesion_presence`` cache (10,000 train, 500 val, 2,000
   test images, 28 px gray) and one run of the lead's study architecture (ResNet-18 (28) at a
   quarter width), whose final.pt is its init.pt perturbed (no training: the analyses' cost does
   not depend on the weights). Each analysis runs as the workflow runs it, one ``medtransfer``
   job in a subprocess; wall seconds include the process start, peak RSS is the job's own.

Run from the repository root (PYTHONPATH=src):

    python benchmarks/reuse_analyses.py --demo /path/to/demo/workdir --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from medtransfer import paths
from medtransfer.study import Study

MODULES = {"weight drift": "medtransfer.analysis.weights", "filters": "medtransfer.analysis.filters",
           "re-initialisation": "medtransfer.analysis.reinit", "layer-wise k-NN": "medtransfer.analysis.layer_knn"}


def import_seconds(module: str, repeats: int = 3) -> float:
    """Median wall seconds of a fresh interpreter importing ``module`` (a job's fixed cost)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}, medtransfer.cli"], check=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def demo(workdir: Path) -> None:
    from medtransfer.analysis.filters import filter_kernels_table, filters_table
    from medtransfer.analysis.layer_knn import layer_knn_table
    from medtransfer.analysis.reinit import reinit_table
    from medtransfer.analysis.weights import weight_drift_table

    os.chdir(workdir)
    study = Study(yaml.safe_load(Path("config.yaml").read_text()))
    cpu = torch.device("cpu")
    groups = study.reuse_groups("weight_drift")
    work = {
        "weight drift": lambda: [weight_drift_table(study.weight_drift_spec(*g)) for g in groups],
        "filters": lambda: ([filters_table(study.filters_spec(*g)) for g in groups],
                            filter_kernels_table(study.filter_kernels_spec())),
        "re-initialisation": lambda: [reinit_table(study.reuse_group_spec("reinit", *g), cpu) for g in groups],
        "layer-wise k-NN": lambda: [layer_knn_table(study.reuse_group_spec("layer_knn", *g), cpu) for g in groups],
    }
    runs = len(study.single_backbone_runs())
    print(f"Demo ({runs} runs, {len(groups)} groups, cbr_tiny at width 0.25, 32 px, 600 test images):\n")
    print("| analysis | work, all runs (s) | per run (s) | process start per job (s) | jobs (job: run / group) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, function in work.items():
        start = time.perf_counter()
        function()
        seconds = time.perf_counter() - start
        per_run_jobs = name in ("re-initialisation", "layer-wise k-NN")
        jobs = f"{runs} / {len(groups)}" if per_run_jobs else f"{len(groups)}" + (" + 1" if name == "filters" else "")
        print(f"| {name} | {seconds:.1f} | {seconds / runs:.2f} | {import_seconds(MODULES[name]):.1f} | {jobs} |")
    print()


def ten_thousand(folder: Path, threads: int) -> None:
    from medtransfer.data import build_cache
    from medtransfer.training.stage import initialised_model

    os.chdir(folder)
    config = {
        "datasets": {"big": {"format": "synthetic", "task": "lesion_presence", "n_train": 10_000, "n_val": 500,
                             "n_test": 2_000, "size": 28}},
        "architectures": {"resnet18_28": {"width": 0.25}},
        "study": {"targets": ["big"], "architectures": ["resnet18_28"], "inits": ["RI"], "fractions": [1.0],
                  "seeds": [0]},
        "train": {"normalize": {"mean": 0.5, "std": 0.5}, "num_workers": 0},
    }
    study = Study(config)
    start = time.perf_counter()
    build_cache("big", study.datasets["big"], paths.dataset_cache("big"))
    print(f"10,000-image target (synthetic cache built in {time.perf_counter() - start:.0f} s; "
          "ResNet-18 (28) width 0.25, 10 blocks; 2,000 test images; memory = all 10,000 train images):\n")
    run = study.single_backbone_runs()[0]
    spec = study.run_spec(run)
    model, record, create_kwargs = initialised_model(spec, 2)
    saved = {"arch": spec["arch"], "num_classes": 2, "create_kwargs": create_kwargs, "init": spec["init"]}
    run_dir = Path(paths.run_dir(run))
    run_dir.mkdir(parents=True, exist_ok=True)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": init_state, **saved}, run_dir / "init.pt")
    generator = torch.Generator().manual_seed(0)
    final_state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                   for k, v in init_state.items()}
    torch.save({"state_dict": final_state, **saved}, run_dir / "final.pt")
    (run_dir / "metrics.json").write_text(json.dumps({"run": run.id, "task": "binary", "test": {}, "spec": spec}))
    group = (run.dataset, run.arch, run.fraction)
    jobs = {
        "weight drift": ("weight-drift", study.weight_drift_spec(*group)),
        "filters": ("filters", study.filters_spec(*group)),
        "re-initialisation": ("reinit", study.reinit_spec(run)),
        "layer-wise k-NN (init + final)": ("layer-knn", study.layer_knn_spec(run)),
    }
    print("| analysis (one run, one job) | wall s (job) | peak RSS (MB) |")
    print("| --- | ---: | ---: |")
    for name, (command, job) in jobs.items():
        (folder / "spec.json").write_text(json.dumps(job))
        start = time.perf_counter()
        # the job in a child that reports its own peak resident set (ru_maxrss of itself, in kB)
        child = subprocess.run([sys.executable, "-c", _JOB, command, str(threads)], check=True,
                               capture_output=True, text=True)
        seconds = time.perf_counter() - start
        peak_kb = int(child.stdout.strip().splitlines()[-1])
        print(f"| {name} | {seconds:.1f} | {peak_kb / 1024:.0f} |")
    print()


_JOB = """
import resource, sys
from medtransfer.cli import main
code = main([sys.argv[1], "--spec", "@spec.json", "--threads", sys.argv[2], "--device", "cpu"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path.cwd(), help="work dir of a finished demo run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads\n")
    if not args.skip_demo:
        demo(args.demo.resolve())
    with tempfile.TemporaryDirectory() as tmp:
        ten_thousand(Path(tmp), args.threads)


if __name__ == "__main__":
    main()
