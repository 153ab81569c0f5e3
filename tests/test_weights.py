"""Weight sources: our pretrain output, local files, the timm hub (which is offline here)."""

from __future__ import annotations

import time

import pytest
import safetensors.torch
import torch

from medtransfer.errors import ConfigError, WeightsError
from medtransfer.models import create, load_source_state_dict
from medtransfer.models import weights as W

torch.set_num_threads(1)


def _state(arch="cbr_tiny", **kw):
    torch.manual_seed(0)
    return {k: v.clone() for k, v in create(arch, 3, width=0.25, **kw).state_dict().items()}


def _same(a, b):
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_pretrain_output_round_trip(tmp_path):
    state = _state()
    path = tmp_path / "model.pt"
    torch.save({"state_dict": state, "arch": "cbr_tiny", "num_classes": 3, "epochs": 2}, path)
    _same(load_source_state_dict({"kind": "pretrain", "path": str(path)}), state)
    _same(
        load_source_state_dict({"kind": "pretrain", "path": str(path), "arch": "cbr_tiny"}), state
    )
    with pytest.raises(WeightsError, match="cbr_small"):
        load_source_state_dict({"kind": "pretrain", "path": str(path), "arch": "cbr_small"})


def test_pretrain_output_of_wrong_format(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_state(), path)  # a bare state dict is a "file", not a pretrain output
    with pytest.raises(WeightsError, match="pretrain output"):
        load_source_state_dict({"kind": "pretrain", "path": str(path)})


def test_plain_files_round_trip(tmp_path):
    state = _state()
    pth, st = tmp_path / "w.pth", tmp_path / "w.safetensors"
    torch.save(state, pth)
    safetensors.torch.save_file(state, st)
    _same(load_source_state_dict({"kind": "file", "path": str(pth)}), state)
    _same(load_source_state_dict({"kind": "file", "path": str(st)}), state)


def test_training_checkpoint_wrappers_are_unwrapped(tmp_path):
    state = _state()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}, path)
    _same(load_source_state_dict({"kind": "file", "path": str(path)}), state)


def test_timm_file_with_arch_passes_timm_filter(tmp_path):
    state = {k: v.clone() for k, v in create("deit_tiny_patch16_224", 1000).state_dict().items()}
    path = tmp_path / "deit.safetensors"
    safetensors.torch.save_file(state, path)
    got = load_source_state_dict(
        {"kind": "file", "path": str(path), "arch": "deit_tiny_patch16_224"}
    )
    _same(got, state)


def test_timm_source_from_a_local_file_uses_timm_loader(tmp_path):
    torch.manual_seed(1)
    state = {k: v.clone() for k, v in create("resnet18", 1000).state_dict().items()}
    path = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(state, path)
    got = load_source_state_dict({"kind": "timm", "arch": "resnet18", "file": str(path)})
    _same(got, state)


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "pretrain", "path": "nowhere/model.pt"},
        {"kind": "file", "path": "nowhere/w.safetensors"},
        {"kind": "timm", "arch": "resnet18", "file": "nowhere/w.safetensors"},
    ],
)
def test_missing_file_names_the_file(spec):
    with pytest.raises(WeightsError, match="nowhere"):
        load_source_state_dict(spec)


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="broken.pth"):
        load_source_state_dict({"kind": "file", "path": str(path)})


def test_bad_specs_are_config_errors():
    with pytest.raises(ConfigError, match="kind"):
        load_source_state_dict({"kind": "ftp", "path": "x"})
    with pytest.raises(ConfigError, match="path"):
        load_source_state_dict({"kind": "file"})


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No cached hub weights, so the network path is taken."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for flag in ("HF_HUB_OFFLINE", "TIMM_OFFLINE", "MEDTRANSFER_OFFLINE"):  # conftest sets them
        monkeypatch.delenv(flag, raising=False)


def test_offline_flag_fails_fast(empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsError) as err:
        load_source_state_dict({"kind": "timm", "arch": "resnet18"})
    assert time.monotonic() - start < 20
    assert "resnet18.tv_in1k" in str(err.value) and "sources.<name>.file" in str(err.value)


def test_unreachable_hub_fails_fast(empty_caches):
    """The real network path; this machine is offline (skipped where the hub answers)."""
    from huggingface_hub import constants

    if W._reachable(constants.ENDPOINT):
        pytest.skip("the hub is reachable here; this test checks the offline path")
    for call in (
        lambda: load_source_state_dict({"kind": "timm", "arch": "swin_tiny_patch4_window7_224"}),
        lambda: create("deit_tiny_patch16_224", 2, pretrained=True),
    ):
        start = time.monotonic()
        with pytest.raises(WeightsError) as err:
            call()
        assert time.monotonic() - start < 20
        msg = str(err.value)
        assert "could not be downloaded" in msg and "sources.<name>.file" in msg


def test_timm_model_without_weights():
    with pytest.raises(WeightsError, match="no pretrained weights"):
        W.timm_weights_file("resnet200")  # an architecture timm registers without weights
