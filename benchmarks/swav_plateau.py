"""Diagnostic (not a timing): does SwAV leave its uniform-code plateau in the first steps?

Trains the pretrain stage's SwAV (``medtransfer.training.ssl``, lightly's loss and prototypes,
kornia views) for a few dozen steps on the first batches of a cache and prints, every 10 steps,
the loss (ln K = uniform predictions over K prototypes), the mean entropy of the Sinkhorn codes
of the first global view (at most ln K) and the mean per-dimension std of the normalised
projections over the batch. Codes whose entropy climbs to ln K while the projections contract
are the trivial fixed point docs/real-checks.md describes for the CIFAR-10 real check. Run from the
repository root on the CIFAR-10 cache of ``workflow/studies/ssl_cifar.yaml``:

    python benchmarks/swav_plateau.py --cache results/data/cifar10.h5
"""

from __future__ import annotations

import argparse
import math

import h5py
import torch
from lightly.loss.swav_loss import sinkhorn

from medtransfer.models import create
from medtransfer.training import ssl
from medtransfer.training.ssl.options import resolve_options

VARIANTS: dict[str, tuple[dict, float]] = {  # name -> (SwAV options, SGD lr)
    "defaults (no multi-crop)": ({"local_crops": 0}, 0.06),
    "epsilon 0.02": ({"local_crops": 0, "sinkhorn_epsilon": 0.02}, 0.06),
    "temperature 0.2": ({"local_crops": 0, "temperature": 0.2}, 0.06),
    "lr 0.3": ({"local_crops": 0}, 0.3),
    "64 prototypes": ({"local_crops": 0, "n_prototypes": 64}, 0.06),
}


def run(images: torch.Tensor, options: dict, lr: float, *, width: float, steps: int, batch: int) -> list[str]:
    torch.manual_seed(0)
    resolved = resolve_options("swav", {"freeze_prototypes_epochs": 0, "queue_size": 0, **options}, "diagnostic")
    method = ssl.build("swav", create("resnet18_28", 10, width=width), resolved,
                       steps_per_epoch=max(1, len(images) // batch), epochs=10)
    views = ssl.Views(resolved, size=images.shape[-1], gray=False, mean=[0.5] * 3, std=[0.5] * 3)
    optimizer = torch.optim.SGD(method.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    ln_k = math.log(int(resolved["n_prototypes"]))
    rows = []
    for step in range(steps):
        start = (step * batch) % max(1, len(images) - batch + 1)
        batch_views = views(images[start:start + batch])
        loss = method.loss(batch_views, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 10 == 0:
            with torch.no_grad():
                z = torch.nn.functional.normalize(method.projection(method.embed(batch_views[0])), dim=1)
                codes = sinkhorn(method.prototypes(z, step), 3, resolved["sinkhorn_epsilon"])
                entropy = float(-(codes * codes.clamp_min(1e-12).log()).sum(1).mean())
            rows.append(f"{step + 1}: loss {float(loss):.3f} / ln K {ln_k:.2f}, code entropy {entropy:.2f}, "
                        f"z std {float(z.std(0).mean()):.4f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default="results/data/cifar10.h5")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with h5py.File(args.cache, "r") as handle:
        images = torch.from_numpy(handle["train/images"][: 8 * args.batch]).float() / 255
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    for name, (options, lr) in VARIANTS.items():
        print(f"{name} (SGD lr {lr}): " + " | ".join(run(images, options, lr, width=args.width, steps=args.steps,
                                                        batch=args.batch)), flush=True)


if __name__ == "__main__":
    main()
