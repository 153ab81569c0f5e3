"""Fusions of several backbones (Truong et al. 2021): DVME and plain concatenation.

A fusion head maps the pooled embeddings of S sources, a list of tensors [N, D_s] (the widths may
differ), to logits [N, K]. Each embedding is first standardised with fixed statistics (the
training split's mean and std of that source's features at the start, buffers, not parameters),
so sources with very different feature scales start on an equal footing.

- :class:`DVMEHead` ("deep visual multi-embedding"): each standardised embedding is projected to
  ``dim``; the S projected embeddings of an image attend to each other (multi-head self-attention
  across the sources, a residual and LayerNorm), are averaged over the sources and classified.
- :class:`ConcatHead`: the standardised embeddings side by side, one linear layer (DVME's baseline).

Under the linear protocol a head trains on cached features (medtransfer.protocols.dvme, .probe);
under the finetune protocol :class:`FusionNetwork` puts it on top of the source backbones and the
whole network trains end to end, each backbone fed the batch at its own input size and, where
the fused sources differ in their input transform (``sources.<name>.preprocess``), its own
:class:`Normalise` of the [0, 1] batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medtransfer.models.embedding import pooled_features


class _Standardised(nn.Module):
    """Holds one (mean, std) buffer pair per source; ``standardise(i, x)`` = (x - mean_i) / std_i."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.n_sources = len(widths)
        for i, width in enumerate(widths):
            self.register_buffer(f"mean{i}", torch.zeros(width))
            self.register_buffer(f"std{i}", torch.ones(width))

    def set_standardisation(self, means: list[torch.Tensor], stds: list[torch.Tensor]) -> None:
        for i, (mean, std) in enumerate(zip(means, stds, strict=True)):
            getattr(self, f"mean{i}").copy_(mean)
            getattr(self, f"std{i}").copy_(std)

    def standardise(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return (x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")


class DVMEHead(_Standardised):
    """A list of S feature tensors [N, D_s] -> logits [N, K]."""

    def __init__(self, widths: list[int], num_outputs: int, *, dim: int = 512, heads: int = 8,
                 dropout: float = 0.0) -> None:
        super().__init__(widths)
        self.project = nn.ModuleList(nn.Linear(width, dim) for width in widths)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.classify = nn.Linear(dim, num_outputs)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        tokens = torch.stack([project(self.standardise(i, x))
                              for i, (project, x) in enumerate(zip(self.project, features))], dim=1)  # [N, S, dim]
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.classify(self.norm(tokens + attended).mean(dim=1))


class ConcatHead(_Standardised):
    """A list of S feature tensors [N, D_s] -> logits [N, K] by one linear layer on their concatenation."""

    def __init__(self, widths: list[int], num_outputs: int) -> None:
        super().__init__(widths)
        self.classify = nn.Linear(sum(widths), num_outputs)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.classify(torch.cat([self.standardise(i, x) for i, x in enumerate(features)], dim=1))


FUSION_HEADS = {"DVME": DVMEHead, "CONCAT": ConcatHead}


def fusion_head(name: str, widths: list[int], num_outputs: int, **options) -> nn.Module:
    """The head of fusion ``name`` (DVME takes ``dim``, ``heads``, ``dropout``; CONCAT nothing)."""
    if name == "DVME":
        return DVMEHead(widths, num_outputs, dim=int(options["dim"]), heads=int(options["heads"]),
                        dropout=float(options["dropout"]))
    return ConcatHead(widths, num_outputs)


class Normalise(nn.Module):
    """A fused backbone's input transform of a [0, 1] batch [B, 3, H, W]: channels reversed (RGB ->
    BGR) where ``bgr``, then ``(x - mean) / std`` per channel (0..1 units, as
    :func:`medtransfer.data.input_transform` gives them). The statistics are non-persistent buffers:
    they follow the network to its device and stay out of its state_dict."""

    def __init__(self, mean: list[float], std: list[float], bgr: bool = False) -> None:
        super().__init__()
        self.bgr = bool(bgr)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.flip(1) if self.bgr else x) - self.mean) / self.std


class FusionNetwork(nn.Module):
    """S backbones (our classifiers; their own heads unused) and a fusion head: [B, C, H, W] -> [B, K].

    ``input_sizes[i]`` is the square size backbone i is fed (None: the batch as it comes), so
    sources of different architectures (a 28 px ResNet and a 224 px ViT) share one batch;
    ``resize(x, size)`` makes it (the study's resize, :func:`medtransfer.data.cache.interpolate`
    with ``train.resize_mode``, as the loader resizes for a single-source run). ``transforms``
    (optional, one :class:`Normalise` per backbone): the batch is [0, 1] and each backbone
    normalises its resized copy itself, as a loader with its source's input transform would.
    """

    def __init__(self, backbones: list[nn.Module], input_sizes: list[int | None], head: nn.Module, *,
                 resize: Callable[[torch.Tensor, int], torch.Tensor],
                 transforms: list[Normalise] | None = None) -> None:
        super().__init__()
        if len(backbones) != len(input_sizes):
            raise ValueError("one input size per backbone")
        if transforms is not None and len(transforms) != len(backbones):
            raise ValueError("one input transform per backbone")
        self.backbones = nn.ModuleList(backbones)
        self.input_sizes = list(input_sizes)
        self.head = head
        self.resize = resize
        self.transforms = nn.ModuleList(transforms) if transforms is not None else None

    def embeddings(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The pooled embedding [B, D_s] of every backbone."""
        out = []
        for i, (backbone, size) in enumerate(zip(self.backbones, self.input_sizes)):
            member = x if size is None else self.resize(x, size)
            if self.transforms is not None:  # resize, then normalise: the loader's order
                member = self.transforms[i](member)
            out.append(pooled_features(backbone, member))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embeddings(x))


def usable_std(std: torch.Tensor) -> torch.Tensor:
    """``std`` [D] with every dimension that is constant on the data (std <= 1e-6 of the largest,
    e.g. a ReLU unit silent on 5 images) set to 1: left unscaled rather than divided by ~0."""
    return torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))


@torch.no_grad()
def calibrate(network: FusionNetwork, loader, device: torch.device) -> None:
    """Set the head's standardisation to the mean / population std (float64 sums,
    :func:`usable_std`, as the linear probe standardises) of each backbone's embeddings over ``loader``, with
    the backbones in eval mode: the statistics the linear protocol's head standardises with."""
    was_training = network.training
    network.eval()
    sums = sq = None
    n = 0
    for x, _ in loader:
        feats = [f.double() for f in network.embeddings(x.to(device))]
        if sums is None:
            sums = [torch.zeros_like(f[0]) for f in feats]
            sq = [torch.zeros_like(f[0]) for f in feats]
        for i, f in enumerate(feats):
            sums[i] += f.sum(0)
            sq[i] += (f * f).sum(0)
        n += len(x)
    network.train(was_training)
    if not n:
        raise ValueError("calibrate: the loader yielded no batch")
    means = [s / n for s in sums]
    stds = [usable_std((q / n - m * m).clamp_min(0).sqrt()) for q, m in zip(sq, means)]
    network.head.set_standardisation([m.float() for m in means], [s.float() for s in stds])
