"""Training throughput on the CPU: how to spend the cores on fine-tuning jobs.

Times Adam training steps (forward, cross-entropy, backward, step) of one architecture on random
batches, in the same run:

- one process using all ``--threads`` cores (what ``threads: 2`` per job gives), contiguous and
  channels_last memory format;
- ``--threads`` processes of one thread each, started together (``threads: 1`` per job with
  ``--cores 2 --resources gpu=2``: two jobs at once), summed;
- one process with bf16 autocast (``train.amp_on_cpu: true``), when the CPU has bf16 units
  (AMX or AVX512-BF16); without them bf16 is emulated and slower.

Ratios are against the first row. It also turns the best rate into the time one MedMNIST v2
protocol run (100 epochs of the train split) needs, to plan a study. Run from the repository root:

    python benchmarks/train_throughput.py --arch resnet18_28
    python benchmarks/train_throughput.py --arch resnet18_28 --width 0.25
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import time

import torch

from medtransfer.models import create
from medtransfer.training.trainer import cpu_has_bf16_units

# MedMNIST v2 train split sizes (Yang et al. 2023, Table 1), for the planning lines
MEDMNIST_TRAIN = {"breastmnist": 546, "retinamnist": 1080, "pneumoniamnist": 4708}


def steps_per_second(arch: str, width: float | None, size: int, batch: int, threads: int,
                     channels_last: bool, steps: int, warmup: int, bf16: bool = False) -> float:
    """Images per second of training steps in this process with ``threads`` torch threads
    (``bf16``: the forward pass and loss under bf16 autocast, as the trainer does)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create(arch, num_classes=2, **({"width": width} if width else {}))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def _worker(args: tuple, queue: mp.Queue) -> None:
    queue.put(steps_per_second(*args))


def parallel(processes: int, args: tuple) -> float:
    """Summed images per second of ``processes`` single-thread processes running at once."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(args, queue)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    rates = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18_28")
    parser.add_argument("--width", type=float, default=None)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(f"# {platform.machine()}, {args.threads} cores used, torch {torch.__version__}, "
          f"load average before {os.getloadavg()[0]:.2f}")
    print(f"# {args.arch}{f' width {args.width}' if args.width else ''}, {args.size} px, batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup}")
    common = (args.arch, args.width, args.size, args.batch)
    timing = (args.steps, args.warmup)
    one, many = f"1 process x {args.threads} threads", f"{args.threads} processes x 1 thread (sum)"
    rows = [
        (one, "contiguous", "float32", steps_per_second(*common, args.threads, False, *timing)),
        (one, "channels_last", "float32", steps_per_second(*common, args.threads, True, *timing)),
        (many, "contiguous", "float32", parallel(args.threads, (*common, 1, False, *timing))),
        (many, "channels_last", "float32", parallel(args.threads, (*common, 1, True, *timing))),
    ]
    has_bf16_units = cpu_has_bf16_units()
    if has_bf16_units:
        rows.append((one, "channels_last", "bf16 autocast",
                     steps_per_second(*common, args.threads, True, *timing, bf16=True)))
    base = rows[0][3]
    print("| layout | memory format | precision | images / s | vs first row |")
    print("| --- | --- | --- | ---: | ---: |")
    for layout, memory, precision, rate in rows:
        print(f"| {layout} | {memory} | {precision} | {rate:,.1f} | {rate / base:.2f}x |")
    if not has_bf16_units:
        print("# no bf16 units (AMX / AVX512-BF16) on this CPU: bf16 autocast row skipped")
    print(f"# load average after {os.getloadavg()[0]:.2f}")
    print("# 100 epochs of a MedMNIST train split at the best rate (training steps only; "
          "validation adds ~5-15 %):")
    for precision in dict.fromkeys(row[2] for row in rows):
        best = max(rate for *_, p, rate in rows if p == precision)
        times = ", ".join(f"{name} {100 * n / best / 60:.0f} min" for name, n in MEDMNIST_TRAIN.items())
        print(f"#   {precision}: {times} of the whole machine")


if __name__ == "__main__":
    main()
