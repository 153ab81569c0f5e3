"""The CBR family of small CNNs from Raghu et al. 2019, *Transfusion* (arXiv 1902.07208, App. A).

Each block is conv → BatchNorm → ReLU → max-pool (3×3, stride 2); all convolutions have
stride 1 and "same" padding; the network ends in global average pooling and one linear layer.

    name          kernel  conv widths               max-pool after
    cbr_large_t   7×7     32, 64, 128, 256, 512     blocks 1–4 (block 5 goes straight to GAP)
    cbr_large_w   7×7     64, 128, 256, 512         every block
    cbr_small     7×7     32, 64, 128, 256          every block
    cbr_tiny      5×5     64, 128, 256, 512         every block

Source: the paper's appendix as quoted verbatim in a NeurIPS-2019 reading-group summary
("CBR-LargeT(all) has 7x7 conv filters: (conv32-bn-relu) maxpool … (conv512-bn-relu) global
avgpool, classification"; LargeW/Small/Tiny end in "maxpool, global avgpool"), and the comments of
a third-party PyTorch port of CBR-Tiny that quote the same text; both found with the search tool,
the paper itself was not reachable here. (Another port drops the pool after the last block in
every variant, which contradicts that quote for LargeW, Small and Tiny.)
Padding "same" (TensorFlow's default in the original code) is our reading; with padding 1 the
3×3/2 max-pool also halves with ceil like TF's "same", so 28-px inputs survive all pools.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CBRSpec:
    """Widths and kernel of one CBR variant; ``pool_last`` says whether the last block pools."""

    widths: tuple[int, ...]
    kernel_size: int
    pool_last: bool


CBR_SPECS: dict[str, CBRSpec] = {
    "cbr_large_t": CBRSpec((32, 64, 128, 256, 512), 7, pool_last=False),
    "cbr_large_w": CBRSpec((64, 128, 256, 512), 7, pool_last=True),
    "cbr_small": CBRSpec((32, 64, 128, 256), 7, pool_last=True),
    "cbr_tiny": CBRSpec((64, 128, 256, 512), 5, pool_last=True),
}


def scaled_widths(
    widths: Sequence[int],
    width: float = 1.0,
    slim_from: int | None = None,
    slim_factor: float | None = None,
) -> tuple[int, ...]:
    """Channel counts after the ``width`` multiplier and an optional slim top.

    Blocks with index >= ``slim_from`` (0-based, in canonical block order) are multiplied by
    ``slim_factor`` as well. Every count is rounded and kept >= 1.
    """
    out = []
    for i, c in enumerate(widths):
        f = width
        if slim_from is not None and slim_factor is not None and i >= slim_from:
            f *= slim_factor
        out.append(max(1, int(round(c * f))))
    return tuple(out)


class CBR(nn.Module):
    """A CBR network. Input [N, in_chans, H, W] (any H, W >= 1) → logits [N, num_classes].

    The canonical blocks are ``block1`` … ``blockN`` (each output [N, C_i, H_i, W_i]) and
    ``head`` (the linear classifier, output [N, num_classes]). Attributes mirror timm's model
    API (``num_features``, ``get_classifier``, ``reset_classifier``, ``pretrained_cfg``) so the
    rest of the library treats CBR and timm models alike.
    """

    def __init__(
        self,
        widths: Sequence[int],
        kernel_size: int,
        pool_last: bool = True,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_blocks = len(widths)
        c_in = in_chans
        for i, c_out in enumerate(widths):
            layers: OrderedDict[str, nn.Module] = OrderedDict(
                conv=nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
                bn=nn.BatchNorm2d(c_out),
                act=nn.ReLU(inplace=False),
            )
            if pool_last or i < len(widths) - 1:
                layers["pool"] = nn.MaxPool2d(3, stride=2, padding=1)
            self.add_module(f"block{i + 1}", nn.Sequential(layers))
            c_in = c_out
        self.num_features = c_in
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(c_in, num_classes)
        self.pretrained_cfg = {"first_conv": "block1.conv", "classifier": "head"}
        self.default_cfg = self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new linear classifier; ``num_classes=0`` removes it (identity), as timm's models do."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = getattr(self, f"block{i + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_cbr(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    *,
    width: float = 1.0,
    slim_from: int | None = None,
    slim_factor: float | None = None,
    drop_rate: float = 0.0,
) -> CBR:
    """Build CBR variant ``name`` (a key of :data:`CBR_SPECS`) with PyTorch's default layer init."""
    spec = CBR_SPECS[name]
    widths = scaled_widths(spec.widths, width, slim_from, slim_factor)
    return CBR(widths, spec.kernel_size, spec.pool_last, num_classes, in_chans, drop_rate)
