"""Epoch throughput of medtransfer's loader vs a torchvision ImageFolder + PIL loader.

Both read the same images: a synthetic gray dataset (``lesion_presence``) is cached to HDF5 with
``build_cache`` and its train split is also written as PNG files in an ImageFolder tree (PNG is
lossless, so the pixels are identical). One epoch = a full pass with shuffling and normalisation
to 3-channel float32 batches, no model:

- ours: ``make_loader(..., shuffle=True, channels=3, normalize="dataset")``, in memory (the split
  fits in ``max_memory_mb``) and, for reference, streaming from HDF5 (``max_memory_mb=0``);
- torchvision: ``ImageFolder`` (PIL decode, RGB) + ``ToTensor()`` + ``Normalize`` in a
  ``DataLoader`` with shuffling, with ``--workers`` worker processes (worker start-up included, as
  in a training epoch) and with none.

Each loader runs one warm-up epoch, then the median of ``--epochs`` timed epochs is reported.
``--threads`` sets torch's intra-op threads in the main process (default 1): on a shared,
oversubscribed CPU, more threads than free cores make every small tensor op wait for the others
(a 100k-element cast then takes ~17 ms instead of ~15 us), which would hide both loaders' speed.
Run from the repository root:

    python benchmarks/loader.py --sizes 28 64 --n 5000 --epochs 3 --workers 2 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medtransfer.data import build_cache, make_loader, read_info, read_split


def time_epochs(make_iterable, epochs: int) -> float:
    """Median seconds of one full pass, after one warm-up pass."""
    times = []
    for epoch in range(epochs + 1):
        iterable = make_iterable(epoch)
        start = time.perf_counter()
        for x, _ in iterable:
            x.sum()  # touch the batch so lazy work cannot be skipped
        if epoch:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_pngs(images: np.ndarray, labels: np.ndarray, root: Path) -> None:
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{i:06d}.png")


def bench_size(size: int, n: int, epochs: int, workers: int, batch_size: int, tmp: Path) -> list[dict]:
    from torchvision import datasets, transforms

    cache = tmp / f"bench{size}.h5"
    build_cache("bench", {"format": "synthetic", "task": "lesion_presence", "n_train": n, "n_val": 1,
                          "n_test": 1, "size": size}, cache)
    images, labels = read_split(cache, "train")
    folder = tmp / f"png{size}"
    write_pngs(images, labels, folder)
    info = read_info(cache)
    mean, std = list(info.mean) * 3, list(info.std) * 3

    rows = []

    def ours(max_memory_mb: int, label: str) -> None:
        loader = make_loader(cache, "train", batch_size=batch_size, shuffle=True, channels=3,
                             max_memory_mb=max_memory_mb, num_workers=workers)

        def epoch_iter(epoch: int):
            loader.set_epoch(epoch)
            return loader

        rows.append({"size": size, "loader": label, "seconds": time_epochs(epoch_iter, epochs)})

    ours(2048, "medtransfer make_loader (in memory)")
    ours(0, f"medtransfer make_loader (streaming HDF5, {workers} workers)")
    dataset = datasets.ImageFolder(str(folder), transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(mean, std)]))
    for w in (workers, 0):
        def epoch_iter(epoch: int, w: int = w):
            generator = torch.Generator().manual_seed(epoch)
            return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=w,
                                               generator=generator)

        rows.append({"size": size, "loader": f"torchvision ImageFolder + PIL ({w} workers)",
                     "seconds": time_epochs(epoch_iter, epochs)})
    for row in rows:
        row["images_per_s"] = n / row["seconds"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 64])
    parser.add_argument("--n", type=int, default=5000, help="train images")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads of the main process (both loaders use it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}")
    print(f"n={args.n} gray images, batch {args.batch_size}, median of {args.epochs} epochs after a warm-up\n")
    print("| size | loader | s / epoch | images / s | vs ImageFolder (workers) | vs ImageFolder (0 workers) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows = bench_size(size, args.n, args.epochs, args.workers, args.batch_size, Path(tmp))
            base_workers = next(r for r in rows if r["loader"].startswith("torchvision") and "(0 " not in r["loader"])
            base_zero = next(r for r in rows if r["loader"].endswith("(0 workers)"))
            for r in rows:
                print(f"| {size} | {r['loader']} | {r['seconds']:.3f} | {r['images_per_s']:,.0f} | "
                      f"{r['images_per_s'] / base_workers['images_per_s']:.1f}x | "
                      f"{r['images_per_s'] / base_zero['images_per_s']:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
