"""Pretraining throughput: images/s of each self-supervised method against the supervised step of
the same model, in the same run, and the share of each step spent making the views.

One step of a method is what the pretrain stage runs per batch: the kornia views on the device
(``medtransfer.training.ssl.Views``, the method's own recipe: 2 global views, plus the local crops
of DINO / SwAV), the method's loss (lightly heads and losses), backward, the SGD step and the
method's after-step hook (EMA of the teacher / target, MoCo's queue). The supervised step is
forward, cross-entropy, backward and the SGD step of the same backbone on the un-augmented batch
(what ``method: supervised`` costs per image before its light flip/crop augmentation).
"images/s" counts the images of the batch, not the views, so the numbers say how long an epoch
of a dataset takes. Run from the repository root:

    python benchmarks/pretrain_throughput.py                       # resnet18_28 width 0.25, 28 px
    python benchmarks/pretrain_throughput.py --width 1 --size 32 --bf16
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from medtransfer.models import create
from medtransfer.training import ssl
from medtransfer.training.precision import Precision, autocast, cpu_has_bf16_units
from medtransfer.training.ssl.options import METHOD_DEFAULTS, resolve_options

CPU = torch.device("cpu")


def _timed(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def supervised_rate(args, precision: Precision) -> float:
    torch.manual_seed(0)
    model = create(args.arch, 10, width=args.width)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)
    x = torch.rand(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(CPU, precision):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()

    times = _timed(step, args.steps, args.warmup)
    return args.batch / (sum(times) / len(times))


def method_rate(name: str, args, precision: Precision) -> tuple[float, float, int]:
    """(images/s, share of the step spent on views, number of views)."""
    torch.manual_seed(0)
    backbone = create(args.arch, 10, width=args.width)
    options = resolve_options(name, {}, "benchmark")
    method = ssl.build(name, backbone, options, steps_per_epoch=100, epochs=10)
    if precision.channels_last:
        method = method.to(memory_format=torch.channels_last)
    views = ssl.Views(options, size=args.size, gray=False, mean=[0.5] * 3, std=[0.25] * 3)
    # the pretrain stage's own objective (views, channels_last, autocast, loss, EMA hooks)
    objective = ssl.SSLObjective(method, views, device=CPU, precision=precision, monitor=None)
    view_seconds: list[float] = []

    def timed_views(x: torch.Tensor) -> list[torch.Tensor]:
        start = time.perf_counter()
        out = views(x)
        view_seconds.append(time.perf_counter() - start)
        return out

    objective.views = timed_views
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.06, momentum=0.9)
    x, y = torch.rand(args.batch, 3, args.size, args.size), torch.zeros(args.batch, dtype=torch.long)
    counter = {"step": 0}

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        objective.loss(x, y, counter["step"]).backward()
        objective.before_step(counter["step"])
        optimizer.step()
        objective.after_step(counter["step"])
        counter["step"] += 1

    times = _timed(step, args.steps, args.warmup)
    share = sum(view_seconds[args.warmup:]) / sum(times)
    return args.batch / (sum(times) / len(times)), share, len(views(x[:2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18_28")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (as train.amp_on_cpu: true)")
    parser.add_argument("--methods", nargs="*", default=list(METHOD_DEFAULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.bf16 and not cpu_has_bf16_units():
        print("note: this CPU has no bf16 units; bf16 is emulated and slower")
    precision = Precision(torch.bfloat16 if args.bf16 else None, True)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.arch} width {args.width}, {args.size} px, batch {args.batch}, "
          f"{'bf16 autocast' if args.bf16 else 'float32'}, channels_last, {args.steps} timed steps\n")
    base = supervised_rate(args, precision)
    print("| method | views | images / s | vs supervised step | views share of step |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| supervised | 1 | {base:,.0f} | 1.00x | – |")
    for name in args.methods:
        rate, share, n_views = method_rate(name, args, precision)
        print(f"| {name} | {n_views} | {rate:,.0f} | {rate / base:.2f}x | {100 * share:.0f} % |", flush=True)


if __name__ == "__main__":
    main()
