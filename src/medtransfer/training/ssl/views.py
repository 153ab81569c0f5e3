"""Random views of a batch, made on the batch's device with kornia: no PIL in the loop.

Input: a float batch [B, C, H, W] in 0..1 (the loader with ``normalize={"mean": 0, "std": 1}``);
output: a list of normalised views, the global ones first ([B, C, size, size]) and then the
local ones ([B, C, local_size, local_size]). Each augmentation draws its parameters per image
from the global torch RNG, which the training checkpoint saves, so a resumed run draws the same
views. Gray images (repeated into 3 channels by the loader) get no saturation/hue jitter and no
random grayscale, which would be no-ops or meaningless on them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import kornia.augmentation as K
import torch
from torch import nn

log = logging.getLogger(__name__)

#: Images at least this many pixels wide get Gaussian blur under ``blur: auto``.
BLUR_MIN_SIZE = 64


def _per_view(value: float | Sequence[float], n: int) -> list[float]:
    values = list(value) if isinstance(value, (list, tuple)) else [float(value)]
    return [float(values[min(i, len(values) - 1)]) for i in range(n)]


def _blur_kernel(size: int) -> int:
    """An odd kernel of ~10 % of the image side (SimCLR's 23 px at 224), at least 3."""
    k = max(3, int(round(0.1 * size)))
    return k if k % 2 else k + 1


class Views(nn.Module):
    """``views(x)`` -> list of ``2 + local_crops`` augmented, normalised views of ``x``.

    ``recipe``: the view options of :data:`medtransfer.training.ssl.options.VIEW_DEFAULTS`
    (resolved, e.g. a method's defaults with the user's overrides); ``mean``/``std``: per-channel
    normalisation applied after augmenting (after RGB -> BGR with ``bgr``, a source's ``preprocess:
    caffe``); ``gray``: the images are grayscale.
    """

    def __init__(self, recipe: dict[str, Any], *, size: int, gray: bool, mean: Sequence[float],
                 std: Sequence[float], global_crops: int = 2, bgr: bool = False) -> None:
        super().__init__()
        self.size, self.gray, self.bgr = int(size), bool(gray), bool(bgr)
        blur = recipe["blur"]
        self.blur_on = size >= BLUR_MIN_SIZE if blur == "auto" else bool(blur)
        local_size = recipe["local_size"] or max(4, int(round(96 / 224 * size)))
        self.local_size = int(local_size)
        blur_p = _per_view(recipe["blur_p"], global_crops)
        solarize_p = _per_view(recipe["solarize_p"], global_crops)
        self.global_views = nn.ModuleList(
            self._pipeline(recipe, self.size, recipe["crop_scale"], blur_p[i], solarize_p[i])
            for i in range(global_crops))
        self.local_views = nn.ModuleList(
            self._pipeline(recipe, self.local_size, recipe["local_crop_scale"], recipe["local_blur_p"], 0.0)
            for _ in range(int(recipe["local_crops"])))
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def _pipeline(self, recipe: dict[str, Any], size: int, scale: Sequence[float], blur_p: float,
                  solarize_p: float) -> nn.Sequential:
        brightness, contrast, saturation, hue = recipe["jitter"]
        if self.gray:
            saturation, hue = 0.0, 0.0
        steps: list[nn.Module] = [
            K.RandomResizedCrop((size, size), scale=tuple(scale)),
            K.RandomHorizontalFlip(p=float(recipe["hflip"])),
            K.ColorJitter(brightness, contrast, saturation, hue, p=float(recipe["jitter_p"])),
        ]
        if not self.gray and recipe["grayscale_p"] > 0:
            steps.append(K.RandomGrayscale(p=float(recipe["grayscale_p"])))
        if self.blur_on and blur_p > 0:
            steps.append(K.RandomGaussianBlur((_blur_kernel(size),) * 2, (0.1, 2.0), p=blur_p))
        if solarize_p > 0:
            # BYOL / DINO: invert pixels above 0.5 (a fixed threshold, no brightness addition)
            steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
        return nn.Sequential(*steps)

    @property
    def count(self) -> tuple[int, int]:
        """(global views, local views)."""
        return len(self.global_views), len(self.local_views)

    def describe(self) -> dict[str, Any]:
        """What the views are, for meta.json (sizes, counts, whether blur ran)."""
        return {"size": self.size, "local_size": self.local_size, "global_views": self.count[0],
                "local_views": self.count[1], "gray": self.gray, "blur": self.blur_on,
                **({"bgr": True} if self.bgr else {})}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.float()
        views = [view(x) for view in [*self.global_views, *self.local_views]]
        return [(((v.flip(1) if self.bgr else v) - self.mean) / self.std).contiguous() for v in views]
