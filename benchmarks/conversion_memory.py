"""Conversion memory: peak resident memory and images/s of ``imagefolder`` -> HDF5 cache at 224 px,
for two checkouts of medtransfer (e.g. main before the streaming change, and this one).

Each conversion runs ``build_cache`` of an ``imagefolder`` entry in a fresh interpreter, whose
peak RSS (``ru_maxrss``) is reported, beside the RSS right after the imports (torch, h5py, PIL)
and the difference: what the conversion itself held. The inputs are made here: ``--n`` smooth
random JPEGs (quality 90) of ``--source-size`` px in two class folders (as
``benchmarks/conversion.py`` makes them); the splits are made by the format (10 % val, 20 % test).
Checkouts and sizes are interleaved over ``--repeats`` and the median is reported. The caches of
all checkouts are checked to be pixel-identical. Run from the repository root, e.g.::

    git worktree add --detach /tmp/base main
    python benchmarks/conversion_memory.py --n 1000 4000 --checkout before=/tmp/base/src --checkout after=src
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from conversion import make_images  # noqa: E402  (the generator of benchmarks/conversion.py)

CONVERT = """
import json, resource, sys, time
from medtransfer.data import build_cache
import torch
torch.set_num_threads(1)
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
root, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
build_cache("bench", {"format": "imagefolder", "root": root, "size": size}, out)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "imported_kib": imported,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def convert(src: str, root: Path, out: Path, size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    run = subprocess.run([sys.executable, "-c", CONVERT, str(root), str(out), str(size)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 4000], help="images per folder")
    parser.add_argument("--checkout", action="append", required=True,
                        help="label=path of a checkout's src/ folder; give it once per checkout")
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    checkouts = dict(c.split("=", 1) for c in args.checkout)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, load average before {os.getloadavg()[0]:.2f}")
    print(f"# JPEG q90 {args.source_size} px -> {args.size} px RGB; median of {args.repeats} interleaved repeats")
    print("| checkout | images | s | images / s | peak RSS MiB | after imports MiB | conversion MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        roots = {}
        for n in args.n:
            roots[n] = tmp / f"folder{n}"
            for label in ("a", "b"):
                (roots[n] / label).mkdir(parents=True)
                make_images(roots[n] / label, n // 2, args.source_size, "jpeg", seed=ord(label))
        results: dict[tuple[str, int], list[dict]] = {(c, n): [] for c in checkouts for n in args.n}
        for _ in range(args.repeats):
            for n in args.n:
                for label, src in checkouts.items():
                    out = tmp / f"{label}{n}.h5"
                    out.unlink(missing_ok=True)
                    results[label, n].append(convert(src, roots[n], out, args.size))
        for n in args.n:
            caches = [tmp / f"{label}{n}.h5" for label in checkouts]
            with h5py.File(caches[0], "r") as first:
                for other in caches[1:]:
                    with h5py.File(other, "r") as h5:
                        for split in ("train", "val", "test"):
                            assert np.array_equal(first[split]["images"][...], h5[split]["images"][...])
        for n in args.n:
            for label in checkouts:
                runs = results[label, n]
                seconds = statistics.median(r["seconds"] for r in runs)
                peak = statistics.median(r["peak_kib"] for r in runs) / 1024
                imported = statistics.median(r["imported_kib"] for r in runs) / 1024
                print(f"| {label} | {n:,} | {seconds:.2f} | {n / seconds:,.0f} | {peak:,.0f} | {imported:,.0f} "
                      f"| {peak - imported:,.0f} |")
    print(f"# load average after {os.getloadavg()[0]:.2f}; caches pixel-identical across checkouts")


if __name__ == "__main__":
    main()
