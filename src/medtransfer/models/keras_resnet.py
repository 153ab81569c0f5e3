"""ResNet-50 v1 exactly as Keras builds it (``keras.applications.resnet.ResNet50``), so the Keras
weight files researchers download (Keras's ImageNet ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``,
RadImageNet's ``RadImageNet-ResNet50_notop.h5``) give in PyTorch the features they give in Keras.

Keras's ResNet-50 differs from torchvision's/timm's in three ways that change its outputs, so
Keras weights cannot go into timm's ``resnet50``:

- the stride 2 of a stage's first block is on its first 1×1 conv (``convS_block1_1_conv``) and on
  the 1×1 projection shortcut, not on the 3×3 conv;
- every conv has a bias (the BN after it makes it redundant for training, but the files hold it);
- BatchNorm ε is 1.001e-5 (torch's default is 1e-5).

Layout (Keras layer names in brackets; input [N, 3, H, W], already preprocessed: the network
does not convert RGB→BGR nor subtract a mean, that is the source's ``preprocess``):

==========  ==================================================================  =====================
block       modules                                                             output (H = W = 224)
==========  ==================================================================  =====================
``conv1``   zero-pad 3 [conv1_pad], 7×7/2 conv [conv1_conv], BN [conv1_bn],     [N, 64, 112, 112]
            ReLU [conv1_relu]                                                   (``conv1_relu``)
``conv2``   zero-pad 1 + 3×3/2 max-pool [pool1_pad, pool1_pool], 3 blocks       [N, 256, 56, 56]
            (filters 64, stride 1) [conv2_block1 … conv2_block3]                (``conv2_block3_out``)
``conv3``   4 blocks, filters 128, stride 2 [conv3_block1 … conv3_block4]       [N, 512, 28, 28]
``conv4``   6 blocks, filters 256, stride 2 [conv4_block1 … conv4_block6]       [N, 1024, 14, 14]
``conv5``   3 blocks, filters 512, stride 2 [conv5_block1 … conv5_block3]       [N, 2048, 7, 7]
``head``    global average pool [avg_pool] → linear ``fc`` [predictions]        [N, num_classes]
==========  ==================================================================  =====================

The five body blocks are the canonical blocks (transfer by blocks, activations, similarity);
their outputs are the five layers whose CCA Juodelyte et al. 2024 compute
(DovileDo/revisiting-transfer, ``src/CCA.py``: ``conv1_relu``, ``conv2_block3_out``,
``conv3_block4_out``, ``conv4_block6_out``, ``conv5_block3_out``). The max-pool opens ``conv2``
so that ``conv1``'s output is ``conv1_relu``, as Keras names it.

A residual block (Keras ``residual_block_v1``, ``convS_blockB``) has the modules ``conv0``/``bn0``
(the projection shortcut ``_0_conv``/``_0_bn``, first block of a stage only), ``conv1``/``bn1``
(1×1, with the stage's stride), ``conv2``/``bn2`` (3×3, 'same'), ``conv3``/``bn3`` (1×1 to 4×
filters); its output is ``relu(shortcut + bn3(...))`` (``convS_blockB_out``). State-dict keys
are thus ``conv2.block1.conv1.weight`` for Keras's ``conv2_block1_1_conv/kernel`` (see
:mod:`medtransfer.models.keras_h5`, which reads the files).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

#: Keras's BatchNormalization epsilon in its ResNets.
KERAS_BN_EPS = 1.001e-5
#: (filters, blocks, stride of the first block) of the four stages conv2 … conv5 of ResNet-50.
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
#: Channels of the stem conv; Keras's ``ResNet`` builder fixes it whatever the stages are.
STEM_WIDTH = 64


def _bn(channels: int) -> nn.BatchNorm2d:
    # Keras's momentum 0.99 (moving = 0.99 moving + 0.01 batch) is torch's momentum 0.01
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=0.01)


class KerasBottleneck(nn.Module):
    """Keras's ``residual_block_v1``: [N, C_in, H, W] → [N, 4·filters, ⌈H/stride⌉, ⌈W/stride⌉]."""

    def __init__(self, in_channels: int, filters: int, stride: int, projection: bool) -> None:
        super().__init__()
        out = 4 * filters
        if projection:  # Keras's conv_shortcut=True: a 1x1 conv (with the stride) and BN
            self.conv0 = nn.Conv2d(in_channels, out, 1, stride=stride)
            self.bn0 = _bn(out)
        self.conv1 = nn.Conv2d(in_channels, filters, 1, stride=stride)
        self.bn1 = _bn(filters)
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1)
        self.bn2 = _bn(filters)
        self.conv3 = nn.Conv2d(filters, out, 1)
        self.bn3 = _bn(out)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.bn0(self.conv0(x)) if hasattr(self, "conv0") else x
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.act(shortcut + y)


class KerasStem(nn.Sequential):
    """``conv1_pad`` → ``conv1_conv`` (7×7, stride 2, bias) → ``conv1_bn`` → ``conv1_relu``:
    [N, C_in, H, W] → [N, 64, ⌊(H − 1)/2⌋ + 1, …]."""

    def __init__(self, in_channels: int, width: int = STEM_WIDTH) -> None:
        # zero padding of 3 then a 'valid' conv is torch's symmetric padding=3
        super().__init__(OrderedDict(conv=nn.Conv2d(in_channels, width, 7, stride=2, padding=3),
                                     bn=_bn(width), act=nn.ReLU()))


class KerasStage(nn.Sequential):
    """``pool`` (stage conv2 only: ``pool1_pad`` zero padding 1 → ``pool1_pool`` 3×3/2 max-pool)
    then ``block1`` … ``blockN``."""

    def __init__(self, in_channels: int, filters: int, blocks: int, stride: int, pool: bool) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if pool:  # Keras pads with zeros (not -inf); after a ReLU the two give the same maximum
            layers["pool"] = nn.Sequential(nn.ZeroPad2d(1), nn.MaxPool2d(3, stride=2))
        for b in range(blocks):
            layers[f"block{b + 1}"] = KerasBottleneck(
                in_channels if b == 0 else 4 * filters, filters, stride if b == 0 else 1, projection=b == 0
            )
        super().__init__(layers)


class KerasResNet(nn.Module):
    """Keras's ResNet v1 (``keras.applications.resnet.ResNet`` with ``stack_residual_blocks_v1``).

    Input [N, in_chans, H, W] → logits [N, num_classes]; timm's model API (``forward_features``
    → [N, C, h, w], ``forward_head(x, pre_logits=True)`` → the pooled [N, C], ``get_classifier``,
    ``reset_classifier``, ``num_features``, ``pretrained_cfg``) so the rest of the library treats
    it as a timm model. ``stages``: (filters, blocks, stride) per stage (ResNet-50's by default).
    Every stage opens with a projection shortcut, so any stage widths fit together.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3,
                 stages: tuple[tuple[int, int, int], ...] = RESNET50_STAGES, drop_rate: float = 0.0,
                 stem_width: int = STEM_WIDTH) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.conv1 = KerasStem(in_chans, stem_width)
        channels = stem_width
        for s, (filters, blocks, stride) in enumerate(stages):
            self.add_module(f"conv{s + 2}", KerasStage(channels, filters, blocks, stride, pool=s == 0))
            channels = 4 * filters
        self.num_stages = len(stages)
        self.num_features = channels
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(channels, num_classes)
        self.pretrained_cfg = {"first_conv": "conv1.conv", "classifier": "fc"}
        self.default_cfg = self.pretrained_cfg

    def stage_names(self) -> list[str]:
        """``conv1`` … ``conv5``: the canonical body blocks, in forward order."""
        return [f"conv{i + 1}" for i in range(self.num_stages + 1)]

    def canonical_blocks(self) -> list[tuple[str, nn.Module]]:
        """The stem and the four stages (outputs ``conv1_relu``, ``conv2_block3_out`` …), then
        the classifier ``head``."""
        return [(name, getattr(self, name)) for name in self.stage_names()] + [("head", self.fc)]

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new linear classifier; ``num_classes=0`` removes it (identity), as timm's models do."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stage_names():
            x = getattr(self, name)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_keras_resnet50(num_classes: int, in_chans: int = 3, *, width: float = 1.0,
                         slim_from: int | None = None, slim_factor: float | None = None,
                         drop_rate: float = 0.0) -> KerasResNet:
    """Keras's ResNet-50. ``width`` multiplies the filters of the four stages (not the 64-wide
    stem, which Keras's ``ResNet`` builder fixes), for small test networks. ``slim_from`` k and
    ``slim_factor`` f (Raghu's slim top, WT-RI with slim): the canonical blocks with index >= k
    (0 = ``conv1``, 1 = ``conv2`` … 4 = ``conv5``) have f × their channels.

    Layers start from PyTorch's default init (Keras would draw Glorot-uniform kernels and zero
    biases): an RI of this architecture is PyTorch's random init.
    """
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    slim = (lambda index: float(slim_factor) if slim_from is not None and slim_factor is not None  # noqa: E731
            and index >= int(slim_from) else 1.0)
    stages = tuple((max(1, int(round(f * width * slim(i + 1)))), b, s)
                   for i, (f, b, s) in enumerate(RESNET50_STAGES))
    return KerasResNet(num_classes, in_chans, stages, drop_rate, max(1, int(round(STEM_WIDTH * slim(0)))))
