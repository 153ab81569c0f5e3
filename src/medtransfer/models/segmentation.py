"""Segmentation networks: any of our encoders under a U-Net decoder, skips from the canonical blocks.

The encoder is the classification model of the architecture (ours or timm's, built by
:func:`medtransfer.models.create`, so every init of :mod:`medtransfer.init` applies to it first)
with its classifier removed. The decoder reads the outputs of the encoder's canonical blocks
(:func:`medtransfer.models.blocks`): of the blocks that output the same spatial size, the last one
is a skip, so a ResNet gives its stem or ``layer1`` at 1/4, then the last block of each later stage,
and CBR-Tiny its four blocks at 1/2 … 1/16. Token outputs (ViT/DeiT) are laid out on their patch
grid (prefix tokens dropped), channels-last ones (Swin) permuted; such encoders give one skip per
resolution, so a ViT's U-Net has a single skip (no UNETR-style pyramid).

The decoder and the per-pixel classifier are segmentation_models_pytorch's ``UnetDecoder`` and
``SegmentationHead`` (its blocks interpolate to each skip's size, so any downsampling pattern
works) with smp's initialisation, drawn from the torch RNG: random, whatever the encoder's init.
We do not use smp's own encoders: the inits (WT, ST, WT-ST-k, ...), the activations and the
similarity analyses are defined on our models' canonical blocks, and smp has no encoder for the
CBR family or MedMNIST's ResNet (28).

Output: logits [N, num_classes, H, W] at the input's size. Canonical blocks of the network
(:meth:`SegmentationNetwork.canonical_blocks`): the encoder's body blocks under their own names,
then ``head``, the whole decoder (its output is the logits).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .blocks import HEAD, BlockGroup, block_layout, blocks

#: Decoder names the config (``segmentation.decoder``) accepts.
DECODERS = ("unet",)
#: Width bounds of the ``auto`` decoder channels.
MIN_CHANNELS, MAX_CHANNELS = 16, 256


def to_nchw(output: torch.Tensor | tuple, layout: str) -> torch.Tensor:
    """A block output as a feature map [N, C, H, W]: tokens [N, T, D] go on their square patch
    grid (leading prefix tokens, e.g. the class token, dropped), [N, H, W, C] is permuted."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if output.ndim == 3:
        n, tokens, dim = output.shape
        side = math.isqrt(tokens)
        grid = output[:, tokens - side * side:]
        return grid.transpose(1, 2).reshape(n, dim, side, side)
    if layout == "nhwc":
        return output.permute(0, 3, 1, 2)
    return output


def _body_blocks(encoder: nn.Module) -> list[dict[str, Any]]:
    """The encoder's canonical body blocks: name, member paths (one, or a BlockGroup's) and the
    path of the module whose output is the block's output."""
    paths = {}
    for path, module in encoder.named_modules():
        paths.setdefault(id(module), path)
    out = []
    for name, module in blocks(encoder)[:-1]:
        if isinstance(module, BlockGroup):
            members = list(module.paths.items())
            out.append({"name": name, "members": members, "output": members[-1][1]})
        else:
            out.append({"name": name, "members": [(name, paths[id(module)])], "output": paths[id(module)]})
    return out


@torch.no_grad()
def block_shapes(encoder: nn.Module, input_size: int) -> list[tuple[int, int, int]]:
    """(channels, height, width) of each canonical body block's output for one input_size² image."""
    layout = block_layout(encoder)
    shapes: dict[str, tuple[int, int, int]] = {}
    handles = []
    for block in _body_blocks(encoder):
        def store(_module, _inputs, output, name=block["name"]):
            shapes[name] = tuple(to_nchw(output, layout).shape[1:])
        handles.append(encoder.get_submodule(block["output"]).register_forward_hook(store))
    was_training = encoder.training
    encoder.eval()
    try:
        encoder.forward_features(torch.zeros(1, 3, input_size, input_size))
    finally:
        for handle in handles:
            handle.remove()
        encoder.train(was_training)
    return [shapes[block["name"]] for block in _body_blocks(encoder)]


def choose_skips(names: list[str], shapes: list[tuple[int, int, int]]) -> list[int]:
    """Indices of the skip blocks: the last block of every run of blocks with one spatial size."""
    return [i for i in range(len(names)) if i == len(names) - 1 or shapes[i][1:] != shapes[i + 1][1:]]


def auto_decoder_channels(skip_channels: list[int]) -> list[int]:
    """One width per decoder block, deepest first: the width of the skip the block merges with
    (clipped to [16, 256]), and half the shallowest skip's for the last block (at input size)."""
    clip = lambda c: int(min(MAX_CHANNELS, max(MIN_CHANNELS, c)))  # noqa: E731
    return [clip(c) for c in reversed(skip_channels[:-1])] + [clip(skip_channels[0] // 2)]


class UNetDecoder(nn.Module):
    """smp's ``UnetDecoder`` over the skips and its ``SegmentationHead`` (3×3 conv to the classes).

    Input: ``[x, skip_1, ..., skip_n]`` (x the network input, skips shallow to deep, NCHW);
    output: logits [N, num_classes, H(x), W(x)].
    """

    def __init__(self, skip_channels: list[int], decoder_channels: list[int], num_classes: int) -> None:
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.base import initialization
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

        self.unet = UnetDecoder(encoder_channels=[3, *skip_channels], decoder_channels=list(decoder_channels),
                                n_blocks=len(skip_channels))
        self.segmentation_head = SegmentationHead(decoder_channels[-1], num_classes, kernel_size=3)
        initialization.initialize_decoder(self.unet)
        initialization.initialize_head(self.segmentation_head)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.segmentation_head(self.unet(features))


class SegmentationNetwork(nn.Module):
    """An encoder (classifier removed) and a U-Net decoder over its canonical blocks' outputs.

    Build it with :func:`build` (which picks the skips) or :meth:`from_config` (a saved one).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.body = _body_blocks(encoder)
        self.layout = block_layout(encoder)
        names = [block["name"] for block in self.body]
        missing = [name for name in config["skips"] if name not in names]
        if missing:
            raise ValueError(f"skip block(s) {missing} are not canonical blocks of this encoder ({names})")
        self.config = dict(config)
        self.num_classes = int(num_classes)
        encoder.reset_classifier(0)  # the classifier of the encoder's architecture is not used
        self.encoder = encoder
        self.decoder = UNetDecoder(list(config["skip_channels"]), list(config["decoder_channels"]), num_classes)
        self._outputs = {block["name"]: block["output"] for block in self.body}

    @classmethod
    def from_config(cls, encoder: nn.Module, num_classes: int, config: dict[str, Any]) -> SegmentationNetwork:
        return cls(encoder, num_classes, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for name in self.config["skips"]:
            def store(_module, _inputs, output, name=name):
                captured[name] = to_nchw(output, self.layout)
            handles.append(self.encoder.get_submodule(self._outputs[name]).register_forward_hook(store))
        try:
            self.encoder.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()
        return self.decoder([x, *(captured[name] for name in self.config["skips"])])

    def canonical_blocks(self) -> list[tuple[str, nn.Module]]:
        """The encoder's canonical body blocks (same names as in the classification model), then
        ``head``: the decoder, whose output is the segmentation logits."""
        out: list[tuple[str, nn.Module]] = []
        for block in self.body:
            members = block["members"]
            if len(members) == 1:
                out.append((block["name"], self.encoder.get_submodule(members[0][1])))
            else:
                group = {member: self.encoder.get_submodule(path) for member, path in members}
                out.append((block["name"], BlockGroup(group, {m: f"encoder.{p}" for m, p in members})))
        return out + [(HEAD, self.decoder)]

    @property
    def encoder_layout(self) -> str:
        return self.layout


def build(encoder: nn.Module, num_classes: int, input_size: int, *, decoder: str = "unet",
          decoder_channels: str | list[int] = "auto") -> SegmentationNetwork:
    """A :class:`SegmentationNetwork` over ``encoder`` (built by ``models.create``, initialised,
    its classifier still in place) for input_size² images and ``num_classes`` mask classes.

    ``decoder_channels``: ``"auto"`` (:func:`auto_decoder_channels`) or one width per skip,
    deepest first. The decoder's weights are drawn from the torch RNG (seed it before).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r}; allowed: {', '.join(DECODERS)}")
    names = [block["name"] for block in _body_blocks(encoder)]
    shapes = block_shapes(encoder, input_size)
    skips = choose_skips(names, shapes)
    skip_channels = [int(shapes[i][0]) for i in skips]
    channels = auto_decoder_channels(skip_channels) if decoder_channels == "auto" else list(decoder_channels)
    if len(channels) != len(skips):
        raise ValueError(f"decoder_channels needs one width per skip ({len(skips)}: "
                         f"{', '.join(names[i] for i in skips)}), got {channels}")
    config = {"decoder": decoder, "input_size": int(input_size), "skips": [names[i] for i in skips],
              "skip_channels": skip_channels, "skip_sizes": [list(shapes[i][1:]) for i in skips],
              "decoder_channels": [int(c) for c in channels]}
    return SegmentationNetwork(encoder, num_classes, config)


__all__ = ["DECODERS", "SegmentationNetwork", "UNetDecoder", "auto_decoder_channels", "block_shapes", "build",
           "choose_skips", "to_nchw"]
