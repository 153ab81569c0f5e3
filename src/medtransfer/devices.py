"""Which device a job uses, and how concurrent GPU jobs on one machine avoid each other.

Snakemake's ``--resources gpu=N`` only bounds how many ``gpu=1`` jobs run at once; it does not
tell a job *which* GPU is free, and it does not set CUDA_VISIBLE_DEVICES when running locally.
So a local GPU job claims a device itself: it takes an exclusive, non-blocking ``flock`` on one
lock file per visible device (in a node-local folder of the user's own, private to them: another
user can neither plant a symbolic link there nor hold the locks) and keeps it for its lifetime. The
kernel releases the lock when the process ends, even after SIGKILL, so a crashed job never leaves a
GPU marked busy. Under SLURM the scheduler already restricts CUDA_VISIBLE_DEVICES to the job's GPUs,
so the job uses the first visible device. Without CUDA everything runs on the CPU, same code.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
import time
from pathlib import Path

import torch

_held_locks: list[int] = []  # descriptors whose flock marks a claimed GPU; kept open until exit


def default_lock_dir() -> Path:
    # Node-local on purpose: two nodes sharing a home directory have different GPUs. Per user:
    # a folder shared by every user would let any of them plant links or hold every GPU.
    return Path(os.environ.get("MEDTRANSFER_GPU_LOCK_DIR",
                               Path(tempfile.gettempdir()) / f"medtransfer-gpu-locks-{os.getuid()}"))


def private_dir(path: Path) -> Path:
    """``path``, created 0700 if missing; a RuntimeError unless it is a real folder of this user
    that no other user can write (what makes its lock files trustworthy)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise RuntimeError(f"GPU lock folder {path} is not a folder (a symbolic link?); "
                           "remove it or set MEDTRANSFER_GPU_LOCK_DIR to a folder of your own")
    if info.st_uid != os.getuid():
        raise RuntimeError(f"GPU lock folder {path} is owned by user {info.st_uid}, not you ({os.getuid()}); "
                           "set MEDTRANSFER_GPU_LOCK_DIR to a folder of your own")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeError(f"GPU lock folder {path} is writable by other users (mode "
                           f"{stat.S_IMODE(info.st_mode):o}); chmod 700 it or set MEDTRANSFER_GPU_LOCK_DIR")
    return path


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file ``path``, created 0600; never through a symbolic link."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RuntimeError(f"GPU lock file {path} is a symbolic link; remove it (a lock file is never "
                               "a link, and writing through one would change its target)") from None
        raise


def claim_gpu(n_devices: int, lock_dir: str | Path | None = None, timeout_s: float = 600.0) -> int:
    """Claim the first free device index in ``range(n_devices)``; hold it until the process ends.

    Waits (polling) while all devices are claimed, up to ``timeout_s`` seconds, then raises
    RuntimeError: more GPU jobs are running than GPUs exist (``--resources gpu`` too high).
    A lock folder that is not this user's alone, or a lock file that is a symbolic link, is a
    RuntimeError too (:func:`private_dir`).
    """
    if n_devices < 1:
        raise ValueError("n_devices must be at least 1")
    lock_dir = private_dir(Path(lock_dir) if lock_dir is not None else default_lock_dir())
    deadline = time.monotonic() + timeout_s
    while True:
        for index in range(n_devices):
            descriptor = _open_lock(lock_dir / f"gpu{index}.lock")
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                continue
            # for whoever looks: the holder's pid, fixed width, so it overwrites the last one exactly
            os.pwrite(descriptor, f"{os.getpid():>10}\n".encode(), 0)
            _held_locks.append(descriptor)
            return index
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"all {n_devices} GPUs are claimed by other medtransfer jobs (locks in {lock_dir}); "
                "run with --resources gpu=N where N is at most the number of GPUs"
            )
        time.sleep(1.0)


def managed_by_scheduler() -> bool:
    """True when a batch scheduler has already restricted the visible GPUs to this job."""
    return "SLURM_JOB_ID" in os.environ and "CUDA_VISIBLE_DEVICES" in os.environ


def select_device(requested: str | None = None, local_rank: int = 0) -> torch.device:
    """The device for this job (for process ``local_rank`` on this node of a multi-process job).

    ``requested`` (or env MEDTRANSFER_DEVICE): "cpu", "cuda", "cuda:N" or None/"auto". With
    "auto" a job uses a GPU when CUDA is available: under a scheduler the visible one of its
    ``local_rank`` (SLURM's ``--gpus=N`` makes exactly the job's N GPUs visible), otherwise the
    first one no other medtransfer job (or other process of this job) on this machine holds.
    """
    requested = requested or os.environ.get("MEDTRANSFER_DEVICE") or "auto"
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda:"):
        return torch.device(requested)
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise RuntimeError("device 'cuda' was requested but CUDA is not available")
        return torch.device("cpu")
    n_devices = torch.cuda.device_count()
    if managed_by_scheduler() or n_devices == 1:
        return torch.device(f"cuda:{local_rank}")
    return torch.device(f"cuda:{claim_gpu(n_devices)}")


def configure_threads(threads: int | None) -> None:
    """Use the threads Snakemake gave the job (``{threads}``), not every core of the node: torch's,
    and those of numpy's BLAS (the similarity measures' eigen/SVD steps run there on the CPU). A job
    of several processes (torchrun sets WORLD_SIZE) shares them out, so it never oversubscribes."""
    if threads:
        processes = max(1, int(os.environ.get("WORLD_SIZE", "1")))
        per_process = max(1, int(threads) // processes)
        torch.set_num_threads(per_process)
        from threadpoolctl import threadpool_limits

        threadpool_limits(per_process)  # stays in force for the process
