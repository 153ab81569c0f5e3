"""Conversion throughput: image files (PNG, JPEG) -> HDF5 cache at 224 px.

Both paths convert the same files, in the same run, to uint8 [N, C, 224, 224] in an HDF5 file
chunked by image:

- PIL loop: one process, one image at a time: ``Image.open`` -> ``convert`` -> ``resize`` (bilinear)
  -> ``numpy`` -> write the row into HDF5. What a conversion script without parallelism does.
- decode only: the same decode + resize in a plain thread pool of ``--workers`` threads, results
  thrown away: no HDF5, no statistics. The ceiling any converter with that many threads can reach
  on this machine (PNG inflation scales worse across cores than JPEG decoding here).
- medtransfer: :class:`medtransfer.data.images.DecodedImages` (``--workers`` decoding threads)
  written by :func:`medtransfer.data.streaming.write_cache` (chunks of ~64 MB, the next chunk
  decoded while the current one is written, resumable, train mean/std accumulated), with the
  given worker count and with 1 worker.

The inputs are made here: ``--n`` smooth random images of ``--source-size`` px (a low-frequency
field plus noise, so that they compress like photographs, not like flat colour), saved as JPEG
(quality 90) and PNG. The two outputs are checked to be pixel-identical. The machine's load
average is printed before and after, and each row's CPU seconds and cores kept busy (CPU / wall):
on a shared CPU the speed-up is bounded by the cores the other jobs leave free.
Run from the repository root:

    python benchmarks/conversion.py --n 500 --repeats 3
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from medtransfer.data.images import DecodedImages, available_cores, default_decode_threads, load_image
from medtransfer.data.raw import RawDataset
from medtransfer.data.streaming import write_cache


def make_images(folder: Path, n: int, size: int, fmt: str, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        coarse = rng.random((size // 32, size // 32, 3)) * 255
        field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC))
        pixels = np.clip(field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8)
        path = folder / f"img{i:05d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        Image.fromarray(pixels).save(path, **({"quality": 90} if fmt == "jpeg" else {}))
        paths.append(path)
    return paths


def pil_loop(paths: list[Path], out: Path, size: int, channels: int) -> None:
    with h5py.File(out, "w") as h5:
        target = h5.create_dataset("images", (len(paths), channels, size, size), np.uint8,
                                   chunks=(1, channels, size, size))
        for i, path in enumerate(paths):
            with Image.open(path) as img:
                img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
                array = np.asarray(img)
            target[i] = array[None] if channels == 1 else array.transpose(2, 0, 1)


def decode_only(paths: list[Path], size: int, channels: int, workers: int) -> None:
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(lambda path: load_image(path, size, channels, "bilinear"), paths):
            pass


def ours(paths: list[Path], out: Path, size: int, channels: int, workers: int) -> None:
    empty = DecodedImages([], size, channels)
    images = DecodedImages(paths, size, channels, "bilinear", workers=workers)
    raw = RawDataset({"train": (images, np.zeros(len(paths), np.int64)), "val": (empty, np.zeros(0, np.int64)),
                      "test": (empty, np.zeros(0, np.int64))}, "binary", ["a", "b"], "benchmark", "-")
    write_cache("benchmark", {"size": size}, raw, out, resume=False, progress=False)


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per format")
    parser.add_argument("--source-size", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--workers", type=int, default=default_decode_threads(),
                        help="decoding threads (default: the library's, usable cores + 1)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    parser.add_argument("--formats", nargs="+", default=["jpeg", "png"], choices=("jpeg", "png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores ({available_cores()} usable), "
          f"python {platform.python_version()}, load average before {os.getloadavg()[0]:.2f}")
    print(f"# {args.n} images per format, {args.source_size} px -> {args.size} px, {args.channels} channel(s)")
    print(f"# median of {args.repeats} interleaved repeats; 'each repeat' = PIL loop median s / that repeat's s")
    print("| format | converter | workers | s | images / s | vs PIL loop | each repeat | CPU s | cores busy |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fmt in args.formats:
            folder = tmp / fmt
            folder.mkdir()
            paths = make_images(folder, args.n, args.source_size, fmt)
            converters = [
                ("PIL loop", 1, lambda: pil_loop(paths, tmp / f"{fmt}_pil.h5", args.size, args.channels)),
                ("decode only (ceiling)", args.workers,
                 lambda: decode_only(paths, args.size, args.channels, args.workers)),
            ]
            for workers in sorted({1, args.workers}):
                converters.append(("medtransfer write_cache", workers, functools.partial(
                    ours, paths, tmp / f"{fmt}_ours{workers}.h5", args.size, args.channels, workers)))
            # interleaved repeats, median per converter: a shared VM's speed drifts by 10-20 %
            times: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(converters))}
            for _ in range(args.repeats):
                for i, (_, _, run) in enumerate(converters):
                    times[i].append(timed(run))
            for workers in sorted({1, args.workers}):
                with h5py.File(tmp / f"{fmt}_pil.h5", "r") as a, h5py.File(tmp / f"{fmt}_ours{workers}.h5") as b:
                    assert np.array_equal(a["images"][...], b["train/images"][...]), "outputs differ"
            base = statistics.median(t for t, _ in times[0])
            for i, (name, workers, _) in enumerate(converters):
                seconds = statistics.median(t for t, _ in times[i])
                cpu = statistics.median(c for _, c in times[i])
                spread = ", ".join(f"{base / t:.2f}" for t, _ in times[i])
                print(f"| {fmt} | {name} | {workers} | {seconds:.2f} | {args.n / seconds:,.0f} | {base / seconds:.2f}x "
                      f"| {spread} | {cpu:.2f} | {cpu / seconds:.2f} |")
    print(f"# load average after {os.getloadavg()[0]:.2f}; outputs pixel-identical")


if __name__ == "__main__":
    main()
