"""MedMNIST's CIFAR-style ResNets ("ResNet-18 (28)", "ResNet-50 (28)") and the slim top for ResNets.

MedMNIST v2 (MedMNIST/experiments, ``MedMNIST2D/models.py``, adapted from kuangliu/pytorch-cifar)
replaces the ImageNet stem (7×7 stride-2 conv + 3×3 stride-2 max-pool) by a 3×3 stride-1 conv
without max-pool, so a 28×28 input reaches ``layer1`` at 28×28. Everything else is the ordinary
ResNet (BasicBlock/Bottleneck with the stride on the 3×3 conv and a 1×1 conv + BN projection
shortcut), which is exactly timm's ``ResNet``; we build timm's class and swap the stem, so the
state-dict keys are timm's/torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, …, ``fc``).
MedMNIST's model keeps PyTorch's default layer init (no Kaiming re-init, no zero-init of the
last BN), so ours does the same (:func:`pytorch_default_init`).
"""

from __future__ import annotations

import timm
from timm.models.resnet import ResNet, downsample_conv
from torch import nn

RESNET28_DEPTHS = {"resnet18_28": "resnet18", "resnet50_28": "resnet50"}

_NO_SLIM = 1 << 30  # a slim_from past every block


def pytorch_default_init(model: nn.Module) -> None:
    """Re-run every layer's own ``reset_parameters`` (PyTorch's default init, BN stats reset)."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()


def build_resnet28(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    *,
    width: float = 1.0,
    slim_from: int | None = None,
    slim_factor: float | None = None,
    **kwargs,
) -> ResNet:
    """ResNet-18/50 with MedMNIST's 28-px stem; ``width`` scales every channel count.

    Input [N, in_chans, H, W] (any H, W; 28 in MedMNIST) → logits [N, num_classes].
    """
    base = RESNET28_DEPTHS[name]
    stem = max(1, int(round(64 * width)))
    channels = tuple(max(1, int(round(c * width))) for c in (64, 128, 256, 512))
    model = timm.create_model(
        base,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_chans,
        stem_width=stem,
        channels=channels,
        zero_init_last=False,
        **kwargs,
    )
    model.conv1 = nn.Conv2d(in_chans, stem, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(stem)  # timm's plain stem is 64 wide whatever stem_width says
    model.maxpool = nn.Identity()
    model.pretrained_cfg = {"architecture": name, "first_conv": "conv1", "classifier": "fc"}
    model.default_cfg = model.pretrained_cfg
    if slim_from is not None and slim_factor is not None:
        slim_resnet(model, slim_from, slim_factor)
    else:
        slim_resnet(model, _NO_SLIM, 1.0)  # only re-wires layer1.0 to a narrower stem
    pytorch_default_init(model)
    return model


def _block_geometry(block: nn.Module) -> tuple[int, int, int]:
    """(inplanes, planes, stride) of a timm BasicBlock or Bottleneck (base width 64, 1 group)."""
    stride_conv = block.conv2 if hasattr(block, "conv3") else block.conv1
    return block.conv1.in_channels, block.conv1.out_channels, stride_conv.stride[0]


def slim_resnet(model: ResNet, slim_from: int, factor: float) -> None:
    """Rebuild, in place, every canonical block with index >= ``slim_from`` with fewer channels.

    Canonical indices: 0 = stem, then each residual block in order (``layer1.0`` = 1, …). A
    slimmed block has ``round(planes * factor)`` planes; where its input or output width then differs from
    the residual path, it gets timm's 1×1 conv + BN projection shortcut. Blocks below
    ``slim_from`` keep their modules (and thus their state-dict shapes) untouched, so weights can
    still be transferred into them. The new modules carry PyTorch's default init; callers re-run
    the architecture's init afterwards. Blocks whose input width changed because an earlier
    block (or the stem) did are rebuilt at their own width with a projection shortcut.
    """
    if not 0 < factor <= 1:
        raise ValueError(f"slim factor must be in (0, 1], got {factor}")
    if slim_from <= 0:
        stem = max(1, int(round(model.conv1.out_channels * factor)))
        old = model.conv1
        model.conv1 = nn.Conv2d(
            old.in_channels, stem, old.kernel_size, old.stride, old.padding, bias=False
        )
        model.bn1 = type(model.bn1)(stem)
    inplanes = model.conv1.out_channels
    index = 1
    for stage_idx in range(1, 5):
        stage = getattr(model, f"layer{stage_idx}")
        for j, block in enumerate(stage):
            old_in, planes, stride = _block_geometry(block)
            if index >= slim_from:
                planes = max(1, int(round(planes * factor)))
            expansion = type(block).expansion
            if index >= slim_from or inplanes != old_in:
                downsample = None
                if stride != 1 or inplanes != planes * expansion:
                    downsample = downsample_conv(inplanes, planes * expansion, 1, stride=stride)
                stage[j] = type(block)(inplanes, planes, stride=stride, downsample=downsample)
            inplanes = planes * expansion
            index += 1
    model.num_features = inplanes
    if hasattr(model, "head_hidden_size"):
        model.head_hidden_size = inplanes
    model.fc = nn.Linear(inplanes, model.fc.out_features)
