"""GPU assignment for concurrent local jobs, tested with processes and fake device counts."""

from __future__ import annotations

import multiprocessing as mp
import os

import torch

from medtransfer.devices import claim_gpu, select_device


def _claim(lock_dir, n_devices, barrier, queue):
    index = claim_gpu(n_devices, lock_dir, timeout_s=5)
    queue.put(index)
    barrier.wait()  # hold the claim until every process has one


def test_concurrent_jobs_get_different_gpus(tmp_path):
    context = mp.get_context("spawn")
    n = 4
    barrier, queue = context.Barrier(n), context.Queue()
    processes = [context.Process(target=_claim, args=(tmp_path, n, barrier, queue)) for _ in range(n)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert sorted(queue.get(timeout=5) for _ in range(n)) == list(range(n))


def test_a_claim_is_released_when_its_process_dies(tmp_path):
    context = mp.get_context("spawn")
    barrier, queue = context.Barrier(1), context.Queue()
    process = context.Process(target=_claim, args=(tmp_path, 1, barrier, queue))
    process.start()
    process.join(30)
    assert queue.get(timeout=5) == 0
    # the first process has exited (as after a SIGKILL, the kernel dropped its flock)
    assert claim_gpu(1, tmp_path, timeout_s=1) == 0


def test_cpu_when_no_cuda(monkeypatch):
    monkeypatch.delenv("MEDTRANSFER_DEVICE", raising=False)
    if not torch.cuda.is_available():
        assert select_device() == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")


def test_scheduler_restricted_jobs_use_their_first_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert select_device() == torch.device("cuda:0")


def test_local_multi_gpu_jobs_claim_a_free_device(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("MEDTRANSFER_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("MEDTRANSFER_DEVICE", raising=False)
    first, second = select_device(), select_device()
    assert {first, second} == {torch.device("cuda:0"), torch.device("cuda:1")}
    assert os.path.exists(tmp_path / "gpu0.lock")
