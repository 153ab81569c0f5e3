"""A run executes only the code in this repository (issue 25): no loader of the package unpickles
code from a weight file, a downloaded checkpoint or a file in a shared ``results/`` folder, unless the
config opts in for that one source with ``sources.<name>.allow_pickle: true``; every weight file a
source uses is recorded by its sha256."""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, SCHEMA, tiny_config
from medtransfer.errors import DataError, WeightsError
from medtransfer.models import create
from medtransfer.models import weights
from medtransfer.models.weights import load_source_state_dict


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``: what a planted file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in create("cbr_tiny", 3, width=0.25).state_dict().items()}


def planted(path: Path, marker: Path, **extra) -> Path:
    """A checkpoint with real weights in every layout our loaders read, and a pickle that runs code."""
    state = _state()
    torch.save({"state_dict": state, "arch": "cbr_tiny", "num_classes": 3, "create_kwargs": {"width": 0.25},
                "init": {"name": "RI"}, "format_version": 2, "spec_hash": "h", "payload": RunsCode(marker),
                **extra}, path)
    return path


def _file_source(path):
    return load_source_state_dict({"kind": "file", "path": str(path)})


def _pretrain_source(path):
    return load_source_state_dict({"kind": "pretrain", "path": str(path)})


def _timm_source(path):
    return load_source_state_dict({"kind": "timm", "arch": "resnet18", "file": str(path)})


def _resume(path):
    from medtransfer.training.checkpoint import load_checkpoint

    assert load_checkpoint(path, "h") is None  # set aside as unreadable, never run


def _activations(path):
    from medtransfer.analysis.activations import load_state

    load_state(path)


def _run_files(path):
    from medtransfer.analysis.runfiles import read_checkpoint

    read_checkpoint(path.parent, path.stem, "run")


LOADERS = {"file source": _file_source, "pretrain source": _pretrain_source, "timm source file": _timm_source,
           "resume checkpoint": _resume, "activations": _activations, "run files": _run_files}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_no_loader_runs_a_pickle_planted_in_a_file(loader, tmp_path):
    marker = tmp_path / "pwned"
    path = planted(tmp_path / "final.pt", marker)
    try:
        LOADERS[loader](path)
    except (WeightsError, DataError, Exception):  # noqa: B014 - refusing is the point; running is the bug
        pass
    assert not marker.exists(), f"{loader} ran code from {path.name}"


def test_a_file_source_with_a_pickle_is_refused_naming_the_globals_and_the_opt_in(tmp_path):
    marker = tmp_path / "pwned"
    path = planted(tmp_path / "weights.pth", marker)
    with pytest.raises(WeightsError) as error:
        _file_source(path)
    message = str(error.value)
    assert str(path) in message and "system" in message and "sources.<name>.allow_pickle: true" in message
    assert not marker.exists()


def test_allow_pickle_loads_the_file_fully_and_says_so(tmp_path):
    marker = tmp_path / "pwned"
    path = planted(tmp_path / "weights.pth", marker)
    source = weights.read_source({"kind": "file", "path": str(path), "allow_pickle": True})
    assert marker.exists()  # the opt-in really unpickles (so the refusals above are not vacuous)
    assert set(source.state) == set(_state())
    assert source.origin["allow_pickle"] is True
    assert source.origin["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("extra", [
    {"args": argparse.Namespace(arch="resnet50", lr=0.03)},  # DINO's args, PyContrast's opt
    {"best_acc1": np.float64(71.2), "epoch": np.int64(199)},  # numpy scalars beside the weights
    {"dtype": np.dtype("float32")},
])
def test_the_published_layouts_load_without_the_opt_in(extra, tmp_path):
    path = tmp_path / "released.pth"
    torch.save({"state_dict": _state(), **extra}, path)
    source = weights.read_source({"kind": "file", "path": str(path)})
    assert set(source.state) == set(_state()) and source.origin["allow_pickle"] is False


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            yield node


def test_every_torch_load_in_the_package_is_weights_only():
    package = REPO / "src" / "medtransfer"
    full = []
    for file in sorted(package.rglob("*.py")):
        source = file.read_text()
        for call in _torch_load_calls(ast.parse(source)):
            keyword = next((k for k in call.keywords if k.arg == "weights_only"), None)
            if not (keyword is not None and isinstance(keyword.value, ast.Constant) and keyword.value.value is True):
                full.append(f"{file.relative_to(package)}:{call.lineno}")
    # the one exception: the file source that a config opted in for with allow_pickle
    assert len(full) == 1 and full[0].startswith("models/weights.py:"), \
        f"torch.load without weights_only=True: {full}"
    assert "if allow_pickle:" in (package / "models" / "weights.py").read_text()


def test_the_planner_carries_allow_pickle_only_where_the_config_sets_it():
    from medtransfer.grid import Study

    config = tiny_config()
    config["sources"] = {"natural": {"file": "weights/{arch}.pth", "allow_pickle": True},
                         "other": {"file": "weights/{arch}.pth"}}
    config["study"]["inits"] = ["RI", {"WT": "natural"}, {"WT": "other"}]
    config["analysis"]["fid"] = False
    study = Study(config)
    assert study.source_spec("natural", "cbr_tiny") == {"kind": "file", "path": "weights/cbr_tiny.pth",
                                                          "allow_pickle": True}
    assert study.source_spec("other", "cbr_tiny") == {"kind": "file", "path": "weights/cbr_tiny.pth"}


def test_the_schema_takes_allow_pickle_for_file_sources_only():
    from medtransfer.errors import ConfigError
    from medtransfer.grid import validate_config

    config = tiny_config()
    config["sources"]["other"] = {"file": "weights/{arch}.pth", "allow_pickle": True}
    validate_config(config, SCHEMA)
    config["sources"]["natural"]["allow_pickle"] = True
    with pytest.raises(ConfigError, match="allow_pickle"):
        validate_config(config, SCHEMA)


# ---- provenance: the sha256 of every weight file a source uses ---------------------------------------


def test_each_source_kind_records_its_file_and_sha256(tmp_path):
    import safetensors.torch

    state = _state()
    pretrained = tmp_path / "model.pt"
    torch.save({"state_dict": state, "arch": "cbr_tiny", "num_classes": 3}, pretrained)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file(state, plain)
    torch.manual_seed(0)
    hub = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(create("resnet18", 1000).state_dict(), hub)
    for spec, path in (({"kind": "pretrain", "path": str(pretrained)}, pretrained),
                       ({"kind": "file", "path": str(plain)}, plain),
                       ({"kind": "timm", "arch": "resnet18", "file": str(hub)}, hub)):
        origin = weights.read_source(spec).origin
        assert origin["kind"] == spec["kind"] and origin["file"] == str(path)
        assert origin["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), spec
    assert weights.read_source({"kind": "timm", "arch": "resnet18", "file": str(hub)}).origin["name"] == "resnet18.tv_in1k"


def test_a_cached_hub_file_records_the_hub_revision(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    cached = tmp_path / "models--timm--resnet18.tv_in1k" / "snapshots" / commit / "model.safetensors"
    cached.parent.mkdir(parents=True)
    import safetensors.torch

    torch.manual_seed(0)
    safetensors.torch.save_file(create("resnet18", 1000).state_dict(), cached)
    monkeypatch.setattr(weights, "timm_weights_file", lambda name: str(cached))
    origin = weights.read_source({"kind": "timm", "arch": "resnet18"}).origin
    assert origin["hub"] == "timm/resnet18.tv_in1k" and origin["revision"] == commit
    assert origin["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()


def test_url_downloads_check_the_hash_timm_knows(monkeypatch):
    """A URL weight file (no hub id) is downloaded with check_hash=True."""
    import timm
    from timm.models import _hub

    name = next(n for n in timm.list_pretrained() if (cfg := timm.models.get_pretrained_cfg(n)).url
                and not cfg.hf_hub_id and not cfg.file)
    calls = []
    monkeypatch.setattr(_hub, "download_cached_file", lambda url, **kw: calls.append(kw) or "/x.pth")
    monkeypatch.setattr(weights, "_offline_flag", lambda: False)
    monkeypatch.setattr(weights, "_reachable", lambda url, timeout=0: True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-hub-dir")
    assert weights.timm_weights_file(name) == "/x.pth"
    assert calls and calls[0]["check_hash"] is True


def test_init_json_records_the_source_file(tmp_path):
    from medtransfer.training.finetune import initialised_model

    path = tmp_path / "weights.pth"
    torch.save({"state_dict": _state()}, path)
    spec = {"arch": "cbr_tiny", "arch_options": {"width": 0.25}, "init": {"name": "WT", "k": None},
            "source": {"kind": "file", "path": str(path)}, "seed": 0}
    _, record, _ = initialised_model(spec, 3)
    assert record["source_weights"] == {"kind": "file", "file": str(path), "allow_pickle": False,
                                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
