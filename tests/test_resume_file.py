"""The resume file (checkpoint.pt): read with torch's weights_only loader, set aside only when it is
corrupt (with the reason in the job log), and any other read error fails the job, whose retry
resumes, instead of silently restarting days of training from epoch 0."""

from __future__ import annotations

import errno
import logging
import random

import numpy as np
import pytest
import torch

from medtransfer.training import checkpoint
from medtransfer.training.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from test_trainer import run_fit


def _saved(path, spec_hash="h", **extra):
    save_checkpoint(path, {"spec_hash": spec_hash, "model": {"w": torch.ones(3)}, "epoch": 2, "batch": 0,
                           "history": [{"epoch": 1, "val_auc": np.float64(0.75), "lr": 0.1}], **extra})
    return path


def test_the_rng_states_survive_the_weights_only_loader_exactly(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # a cached gaussian is part of numpy's state too
    path = _saved(tmp_path / "checkpoint.pt")
    want = (random.random(), np.random.random(3).tolist(), np.random.standard_normal(), torch.rand(3).tolist())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    restore_rng_states(load_checkpoint(path, "h")["rng"])
    got = (random.random(), np.random.random(3).tolist(), np.random.standard_normal(), torch.rand(3).tolist())
    assert got == want


def test_a_checkpoint_reads_back_with_weights_only(tmp_path):
    state = load_checkpoint(_saved(tmp_path / "checkpoint.pt"), "h")
    assert state["epoch"] == 2 and state["history"][0]["val_auc"] == 0.75
    assert torch.equal(state["model"]["w"], torch.ones(3))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_corrupt_resume_file_is_set_aside_and_the_log_says_why(damage, tmp_path, caplog):
    path = _saved(tmp_path / "checkpoint.pt")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint\n" * 9}[damage])
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(path, "h") is None
    assert not path.exists() and path.with_suffix(".corrupt").exists()
    assert "checkpoint.pt" in caplog.text and "epoch 0" in caplog.text


def test_an_os_error_reading_the_resume_file_fails_instead_of_setting_it_aside(tmp_path, monkeypatch):
    path = _saved(tmp_path / "checkpoint.pt")

    def unreachable(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error (NFS server not responding)")

    monkeypatch.setattr(checkpoint.torch, "load", unreachable)
    with pytest.raises(OSError, match="NFS"):
        load_checkpoint(path, "h")
    assert path.exists() and not path.with_suffix(".corrupt").exists()


def test_a_memory_error_fails_the_job_too(tmp_path, monkeypatch):
    path = _saved(tmp_path / "checkpoint.pt")
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        load_checkpoint(path, "h")
    assert path.exists()


def test_a_training_job_whose_resume_read_fails_stops_rather_than_restarting_at_epoch_0(tmp_path, monkeypatch):
    run_fit(tmp_path)  # leaves its checkpoint.pt after the last epoch
    path = tmp_path / "ckpt.pt"
    assert path.exists()

    def unreachable(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(checkpoint.torch, "load", unreachable)
    with pytest.raises(OSError):
        run_fit(tmp_path)
    assert path.exists()


def test_a_checkpoint_of_another_spec_is_logged(tmp_path, caplog):
    path = _saved(tmp_path / "checkpoint.pt", spec_hash="other")
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(path, "h") is None
    assert "another spec" in caplog.text and path.exists()


def test_rng_states_hold_only_what_weights_only_accepts():
    states = rng_states()
    assert isinstance(states["numpy"], dict) and isinstance(states["numpy"]["keys"], torch.Tensor)
