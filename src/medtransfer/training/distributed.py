"""One training job on several processes: PyTorch's DistributedDataParallel under ``torchrun``.

The workflow launches a job with ``gpus_per_job: N > 1`` as ``torchrun --standalone
--nproc_per_node N -m medtransfer.cli ...``; torchrun starts the N processes and sets ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous address. This module turns those into a
:class:`World` (NCCL on CUDA, gloo on CPU), and gives the epoch loop what it needs:

- :func:`wrap_loss`: the objective's loss behind ``DistributedDataParallel`` (gradients averaged
  over processes during backward) with BatchNorm synchronised across processes;
- :meth:`World.sum`, :meth:`World.barrier`, :meth:`World.gather`: the few collectives the loop
  itself needs (the global training loss, one decision per step about checkpointing and SIGTERM,
  every process's RNG states for rank 0's checkpoint, waiting for that checkpoint);
- :meth:`World.seed_streams`: RNG streams of each process's own.

Each process reads its share of every global batch from the HDF5 cache itself
(``medtransfer.data.make_loader(world=(rank, size))``: DistributedSampler's split, per batch).

Without torchrun's variables (or with ``WORLD_SIZE=1``) :func:`start` returns the one-process
world and nothing here changes a single operation of the training: the trainer has one code path.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from medtransfer.devices import select_device

__all__ = ["CPUSyncBatchNorm", "World", "joined", "start", "stop", "wrap_loss", "world_size_from_env"]

log = logging.getLogger(__name__)

#: How long a collective may wait for a slow or dead peer before the job fails (torch's default
#: is 10 minutes for gloo and NCCL; an epoch-end validation on rank 0 is shorter than that).
TIMEOUT = dt.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` processes, ``local_rank`` on this node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "nccl" / "gloo"; None in a one-process job

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, metrics and models."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def record(self) -> dict:
        """What provenance records about the job's processes."""
        return {"world_size": self.size, "backend": self.backend}

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over every process (float64; identity in a 1-process job)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def seed_streams(self) -> None:
        """Give each process RNG streams of its own, derived from the job's seed and the rank, so
        dropout masks and SSL views are independent across processes (with the same streams the
        i-th image of every process would get the same mask and the same crop). Call after the
        model is built (its init must be the same everywhere); no-op for one process."""
        if not self.distributed:
            return
        seed = int(np.random.SeedSequence([torch.initial_seed(), self.rank]).generate_state(1, np.uint32)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


def joined() -> bool:
    """True inside a process group of several processes (what the SSL losses gather across)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size_from_env() -> int:
    """The number of processes torchrun started for this job (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(requested_device: str | None = None) -> tuple[World, torch.device]:
    """This process's world and device, joining the process group when torchrun started the job.

    The device: with CUDA each process takes one GPU (``cuda:LOCAL_RANK`` under SLURM, which
    makes the job's GPUs the visible ones; else one claimed through ``devices.claim_gpu``, so
    local jobs with ``--resources gpu=K`` never share a device), backend NCCL; without CUDA the
    CPU, backend gloo. ``requested_device`` as for :func:`medtransfer.devices.select_device`.
    """
    size = world_size_from_env()
    if size <= 1:
        return World(), select_device(requested_device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(requested_device, local_rank=local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT,
                                **({"device_id": device} if device.type == "cuda" else {}))
    log.info("rank %d of %d on %s (%s)", rank, size, device, backend)
    return World(rank=rank, size=size, local_rank=local_rank, backend=backend), device


def stop(world: World) -> None:
    """Leave the process group. After this, SyncBatchNorm layers behave as plain BatchNorm, so rank
    0 alone can evaluate and write the results without waiting for peers."""
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum over processes of the gradients: each process's
    loss depends on every process's statistics, so each input receives every process's share."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ARG004 - autograd signature
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are those of the global batch, on the CPU (gloo).

    ``torch.nn.SyncBatchNorm`` runs only on accelerators (its kernels are CUDA's), so on the CPU the
    per-channel count, sum and sum of squares are summed over processes with the autograd-aware
    :class:`_AllReduceSum` (its backward sums the gradients over processes too, as SyncBatchNorm's
    does). Outside a process group, or in eval mode, it is plain BatchNorm.
    Same parameters and buffers as ``BatchNorm2d``, so state dicts are interchangeable.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        x = input.float()  # the statistics in float32 also under autocast, as SyncBatchNorm
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32)
        stats = torch.cat([count, x.sum(dims), (x * x).sum(dims)])
        stats = _AllReduceSum.apply(stats)
        n, channels = stats[0], x.shape[1]
        mean = stats[1:1 + channels] / n
        var = (stats[1 + channels:] / n - mean * mean).clamp_min(0.0)  # biased: normalises the batch
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1).clamp_min(1))
        shape = [1, channels] + [1] * (input.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by its synchronised twin, in place (parameters and
    buffers kept, so an optimizer over them stays valid): ``torch.nn.SyncBatchNorm`` on accelerators,
    :class:`CPUSyncBatchNorm` on the CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, CPUSyncBatchNorm):
            twin = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            if child.affine:
                twin.weight, twin.bias = child.weight, child.bias
            if child.track_running_stats:
                twin.running_mean, twin.running_var = child.running_mean, child.running_var
                twin.num_batches_tracked = child.num_batches_tracked
            twin.train(child.training)
            setattr(module, name, twin)
        else:
            sync_batchnorm(child, device)
    return module


class _LossModule(nn.Module):
    """The objective's loss as a module's forward, so that DDP sees every forward it must sync."""

    def __init__(self, objective) -> None:
        super().__init__()
        self.module = objective.module  # registered: DDP hooks the objective's parameters
        self._loss = objective.loss

    def forward(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        return self._loss(x, y, step)


def wrap_loss(objective, world: World, device: torch.device, *, sync_bn: bool = True,
              find_unused_parameters: bool = False) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """``loss(x, y, step)`` of ``objective`` as the epoch loop calls it.

    One process: ``objective.loss`` itself. Several: the same loss behind DistributedDataParallel
    (gradients averaged over processes in backward; rank 0's weights broadcast at the start), with
    the objective's BatchNorm layers synchronised unless ``sync_bn`` is off. Call it after the
    module is on ``device`` and before loading a checkpoint (DDP broadcasts rank 0's weights once,
    every rank then loads the same checkpoint). ``find_unused_parameters``: for objectives whose
    trainable parameters sometimes take no gradient (SwAV's prototypes in the first epoch).
    """
    if not world.distributed:
        return objective.loss
    if sync_bn:
        sync_batchnorm(objective.module, device)
    wrapped = nn.parallel.DistributedDataParallel(
        _LossModule(objective), device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters)
    return wrapped
