"""GPU assignment for concurrent local jobs, tested with processes and fake device counts."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat
import tempfile

import pytest
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


def _private(path):
    path.mkdir(mode=0o700)
    return path


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    locks, precious = _private(tmp_path / "locks"), tmp_path / "thesis.tex"
    precious.write_text("three years of work\n")
    (locks / "gpu0.lock").symlink_to(precious)
    with pytest.raises(RuntimeError, match="symbolic link"):
        claim_gpu(1, locks, timeout_s=0)
    assert precious.read_text() == "three years of work\n"


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_lock_folder_others_can_write_is_refused(mode, tmp_path):
    locks = _private(tmp_path / "locks")
    locks.chmod(mode)
    with pytest.raises(RuntimeError, match="writable by other users"):
        claim_gpu(1, locks, timeout_s=0)
    assert not (locks / "gpu0.lock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_lock_folder_of_another_user_is_refused(tmp_path):
    locks = _private(tmp_path / "locks")
    os.chown(locks, 65534, 65534)
    with pytest.raises(RuntimeError, match="owned by user 65534"):
        claim_gpu(1, locks, timeout_s=0)


def test_the_default_lock_folder_is_the_users_own_and_private(tmp_path, monkeypatch):
    from medtransfer.devices import default_lock_dir

    monkeypatch.delenv("MEDTRANSFER_GPU_LOCK_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    locks = default_lock_dir()
    assert locks.parent == tmp_path and str(os.getuid()) in locks.name
    assert claim_gpu(1, timeout_s=0) == 0
    assert stat.S_IMODE(locks.stat().st_mode) == 0o700 and locks.stat().st_uid == os.getuid()


def test_a_claim_rewrites_the_pid_in_place_without_truncating(tmp_path):
    locks = _private(tmp_path / "locks")
    assert claim_gpu(1, locks, timeout_s=0) == 0
    assert (locks / "gpu0.lock").read_text().strip() == str(os.getpid())
