"""DDP scaling on the CPU: one fine-tuning job in 1 process or in 2 (train.gpus_per_job: 2, gloo).

Runs the real ``medtransfer finetune`` of one synthetic run, as the rule does, in the same run:

- 1 process with 1 thread (the per-core reference);
- 1 process with 2 threads (``threads: 2``, one job on both cores);
- 2 processes of 1 thread each under ``torchrun`` (``gpus_per_job: 2``): DDP with gloo, global
  batch unchanged (per process half), BatchNorm synchronised.

Throughput is training images per second of the epochs (train split x epochs / the job's
``train_seconds``, which includes a small validation after every epoch; val is kept small).
Each setting runs ``--repeats`` times, interleaved, and the best is reported (the machine may be
shared). Run from the repository root:

    python benchmarks/ddp_scaling.py --arch cbr_small --size 32 --n-train 2048 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from medtransfer.data.streaming import build_cache_resumable
from medtransfer.study import Study

#: name -> (processes, --threads of the job, shared out among its processes)
SETTINGS = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2),
            "2 processes x 1 thread (DDP, gloo)": (2, 2)}


def study_config(arch: str, size: int, n_train: int, epochs: int, batch: int, processes: int) -> dict:
    return {
        "datasets": {"lesions": {"format": "synthetic", "task": "lesion_presence", "n_train": n_train, "n_val": 64,
                                 "n_test": 64, "size": size}},
        "sources": {},
        "study": {"targets": ["lesions"], "architectures": [arch], "inits": ["RI"], "fractions": [1.0], "seeds": [0]},
        "train": {"epochs": epochs, "batch_size": batch, "num_workers": 0, "gpus_per_job": processes,
                  "augment": {"hflip": True, "crop_padding": 2}},
        "analysis": {"pairs": []},
    }


def run(workdir: Path, spec: dict, cache: Path, processes: int, threads: int) -> float:
    """Training images per second of one ``medtransfer finetune`` job."""
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / spec["cache"]).parent.mkdir(parents=True)
    os.link(cache, workdir / spec["cache"])
    (workdir / "spec.json").write_text(json.dumps(spec))
    command = ["-m", "medtransfer.cli", "finetune", "--spec", "@spec.json", "--threads", str(threads),
               "--device", "cpu", "--no-progress"]
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *command]
    result = subprocess.run([sys.executable, *command], cwd=workdir, capture_output=True, text=True,
                            env={**os.environ, "MEDTRANSFER_DEVICE": "cpu"})
    if result.returncode != 0:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
    metrics = json.loads((workdir / spec["run_dir"] / "metrics.json").read_text())
    return metrics["num_train"] * metrics["epochs"] / metrics["train_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="cbr_small")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ddp_scaling_"))
    specs, cache = {}, root / "lesions.h5"
    for processes in (1, 2):
        study = Study(study_config(args.arch, args.size, args.n_train, args.epochs, args.batch, processes))
        (one_run,) = study.runs
        specs[processes] = study.run_spec(one_run)
    entry = study.preprocess_spec("lesions")
    build_cache_resumable(entry["name"], entry["entry"], cache, progress=False)

    best: dict[str, float] = {}
    for repeat in range(args.repeats):
        for name, (processes, threads) in SETTINGS.items():
            rate = run(root / f"{processes}x{threads}", specs[processes], cache, processes, threads)
            best[name] = max(best.get(name, 0.0), rate)
            print(f"  repeat {repeat + 1}: {name}: {rate:.0f} img/s", flush=True)
    shutil.rmtree(root)

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.arch} at {args.size} px, "
          f"global batch {args.batch}, {args.n_train} images x {args.epochs} epochs; best of {args.repeats}")
    reference = best["1 process x 1 thread"]
    print("| setting | img/s | vs 1 process x 1 thread |\n|---|---:|---:|")
    for name, rate in best.items():
        print(f"| {name} | {rate:.0f} | {rate / reference:.2f}x |")


if __name__ == "__main__":
    main()
