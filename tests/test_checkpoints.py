"""Published SSL checkpoints as `file:` sources: each layout the papers released, built here in that
layout (no downloads), must land exactly on our model's backbone, with heads, momentum encoders and
queues dropped and reported in init.json; a checkpoint of another architecture is refused."""

from __future__ import annotations

import argparse

import pytest
import torch

from medtransfer import init
from medtransfer.errors import WeightsError
from medtransfer.models import HEAD, block_keys, create
from medtransfer.models.weights import load_source_state_dict

ARCH, WIDTH = "resnet18_28", 0.25


def released_backbone(seed: int = 1) -> dict[str, torch.Tensor]:
    """A 'published' backbone: the same architecture with other (seeded, non-default) weights and
    BN statistics, in torchvision key layout (which is also timm's and ours)."""
    torch.manual_seed(seed)
    model = create(ARCH, 1000, width=WIDTH)
    state = model.state_dict()
    return {k: (torch.randn_like(v) if v.is_floating_point() else v + 7) for k, v in state.items()}


def head_free(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def mlp(prefix: str, dims=(64, 32, 16)) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{i}.weight": torch.randn(dims[i + 1], dims[i]) for i in range(len(dims) - 1)}


def sequential(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """lightly's ``nn.Sequential(*list(resnet.children())[:-1])``: children by position."""
    children = [n for n, _ in create(ARCH, 2, width=WIDTH).named_children()]
    return {f"{prefix}{children.index(k.split('.')[0])}.{k.partition('.')[2]}": v for k, v in state.items()}


def prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def layouts() -> dict[str, tuple[object, int]]:
    """layout name -> (the object torch.save writes, number of dropped entries expected)."""
    bb = head_free(released_backbone())
    other = head_free(released_backbone(seed=2))  # a momentum / target encoder: must not be read
    moco = {**prefixed(bb, "module.encoder_q."), **mlp("module.encoder_q.fc"),
            **prefixed(other, "module.encoder_k."), **mlp("module.encoder_k.fc"),
            "module.queue": torch.randn(16, 4096), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    dino_head = {"head.mlp.0.weight": torch.randn(32, 64), "head.last_layer.weight_g": torch.ones(2048, 1)}
    solo = {**prefixed(bb, "backbone."), **mlp("projector"), **prefixed(other, "momentum_backbone."),
            **mlp("momentum_projector"), "classifier.weight": torch.randn(10, 64)}
    lightly = {**sequential(bb, "backbone."), **mlp("projection_head.layers")}
    swav = prefixed({**bb, **mlp("projection_head"), "prototypes.weight": torch.randn(3000, 16)}, "module.")
    return {
        # torchvision hub conversions (SimCLR v1/v2, BYOL, Barlow Twins): the ImageNet fc included
        "torchvision": (released_backbone(), 0),
        "moco": ({"epoch": 200, "arch": "resnet50", "state_dict": moco,
                  "optimizer": {"state": {}, "param_groups": [{"lr": 0.03}]}}, len(moco) - len(bb)),
        # DINO: both networks and the run's argparse settings (a pickle torch's safe loader refuses)
        "dino": ({"teacher": {**prefixed(bb, "backbone."), **dino_head},
                  "student": prefixed({**prefixed(other, "backbone."), **dino_head}, "module."),
                  "epoch": 100, "args": argparse.Namespace(arch="resnet50", lr=0.03)}, len(dino_head)),
        "dino_ddp_teacher": ({"teacher": prefixed({**prefixed(bb, "backbone."), **dino_head}, "module.")},
                             len(dino_head)),
        "solo_learn": ({"state_dict": solo, "epoch": 999}, len(solo) - len(bb)),
        "lightly_sequential": ({"state_dict": lightly}, len(lightly) - len(bb)),
        "swav": ({"state_dict": swav}, len(swav) - len(bb)),
        "model_wrapper": ({"model": prefixed(bb, "encoder.")}, 0),
        "torch_compile": ({"state_dict": prefixed(bb, "_orig_mod.")}, 0),
    }


@pytest.mark.parametrize("layout", sorted(layouts()))
def test_each_released_layout_lands_exactly_on_the_backbone(layout, tmp_path):
    payload, n_dropped = layouts()[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(payload, path)
    state = load_source_state_dict({"kind": "file", "path": str(path)})
    model = create(ARCH, 2, width=WIDTH)
    record = init.apply(model, "WT", state, seed=0)
    expected = head_free(released_backbone())
    got = model.state_dict()
    body = [k for block, keys in block_keys(model).items() if block != HEAD for k in keys]
    assert body and set(body) <= set(expected)
    for key in body:
        assert torch.equal(got[key], expected[key]), f"{layout}: {key} is not the released tensor"
    report = record["checkpoint"]
    assert report["dropped"] == n_dropped and report["unexpected"] == 0
    assert report["matched"] >= len(body)
    assert bool(report.get("dropped_keys")) == bool(n_dropped)


def test_moco_reads_the_query_encoder_not_the_key_encoder(tmp_path):
    payload, _ = layouts()["moco"]
    path = tmp_path / "moco.pth.tar"
    torch.save(payload, path)
    model = create(ARCH, 2, width=WIDTH)
    record = init.apply(model, "WT", load_source_state_dict({"kind": "file", "path": str(path)}), seed=0)
    assert record["checkpoint"]["prefix"] == "encoder_q."  # after DDP's module. is stripped
    assert torch.equal(model.conv1.weight, released_backbone()["conv1.weight"])


def test_dino_prefers_the_teacher(tmp_path):
    payload, _ = layouts()["dino"]
    path = tmp_path / "dino.pth"
    torch.save(payload, path)
    model = create(ARCH, 2, width=WIDTH)
    init.apply(model, "WT", load_source_state_dict({"kind": "file", "path": str(path)}), seed=0)
    assert torch.equal(model.layer4[1].conv2.weight, released_backbone()["layer4.1.conv2.weight"])


def test_a_checkpoint_missing_a_block_is_refused_with_the_report(tmp_path):
    state = {k: v for k, v in head_free(released_backbone()).items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": prefixed(state, "module.backbone.")}, path)
    model = create(ARCH, 2, width=WIDTH)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        init.apply(model, "WT", load_source_state_dict({"kind": "file", "path": str(path)}), seed=0)
    message = str(err.value)
    assert "layer4" in message and "'backbone.'" in message and "missing" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "model changed"


def test_a_checkpoint_of_another_width_is_refused(tmp_path):
    torch.manual_seed(0)
    wider = create(ARCH, 2, width=0.5).state_dict()
    path = tmp_path / "wider.pth"
    torch.save({"state_dict": prefixed(wider, "backbone.")}, path)
    with pytest.raises(WeightsError, match="does not fit"):
        init.apply(create(ARCH, 2, width=WIDTH), "WT",
                   load_source_state_dict({"kind": "file", "path": str(path)}), seed=0)


def test_a_file_without_any_state_dict_names_the_file(tmp_path):
    path = tmp_path / "notes.pth"
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, path)
    with pytest.raises(WeightsError, match="notes.pth"):
        load_source_state_dict({"kind": "file", "path": str(path)})


def separius_simclr_v2_layout(torchvision_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet-50 keys in the layout of Separius/SimCLRv2-Pytorch's ``resnet.py``
    (written from its module tree: ``net`` = [Stem, Blocks × 4]; Stem = [conv, BatchNormRelu, pool];
    a block's ``net`` = [conv, BNReLU, conv, BNReLU, conv, BN]; ``projection`` = shortcut conv + BN)."""
    import re

    out = {}
    for key, value in torchvision_state.items():
        key = re.sub(r"^conv1\.", "net.0.0.", key)
        key = re.sub(r"^bn1\.", "net.0.1.0.", key)
        key = re.sub(r"^layer(\d)\.(\d+)\.conv(\d)\.", lambda m: f"net.{m[1]}.blocks.{m[2]}.net.{2 * int(m[3]) - 2}.", key)
        key = re.sub(r"^layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"net.{m[1]}.blocks.{m[2]}.net.{2 * int(m[3]) - 1}.0.", key)
        key = re.sub(r"^layer(\d)\.(\d+)\.downsample\.0\.", r"net.\1.blocks.\2.projection.shortcut.", key)
        key = re.sub(r"^layer(\d)\.(\d+)\.downsample\.1\.", r"net.\1.blocks.\2.projection.bn.0.", key)
        out[key] = value
    return out


def test_separius_simclr_v2_conversion_gives_torchvision_resnet50_features(tmp_path):
    """r50_1x_sk0.pth as Separius's convert.py saves it ({'resnet', 'head'}): into timm's resnet50,
    the pooled features of torchvision's ResNet-50 holding the same tensors."""
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    for module in reference.modules():  # BN statistics away from their defaults
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1), module.running_var.uniform_(0.5, 1.5), module.bias.data.normal_(0, 0.1)
    head = {"layers.0.weight": torch.randn(2048, 2048), "layers.1.weight": torch.ones(2048)}
    path = tmp_path / "r50_1x_sk0.pth"
    torch.save({"resnet": separius_simclr_v2_layout(reference.state_dict()), "head": head}, path)
    model = create("resnet50", 3)
    record = init.apply(model, "WT", load_source_state_dict({"kind": "file", "path": str(path)}), seed=0)
    assert record["checkpoint"]["unexpected"] == 0 and record["checkpoint"]["missing"] == 0
    reference.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.eval().forward_head(model.forward_features(x), pre_logits=True)
        theirs = reference.eval()(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
