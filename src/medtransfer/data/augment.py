"""Training augmentation of whole batches on the device, and the evaluation views (centre crop,
ten crops).

Every random parameter is drawn from the caller's ``torch.Generator`` (the loader's, seeded by
(seed, epoch)) on the CPU, for the whole *global* batch, and the process keeps its share
(``mine``); the images are then transformed in a few batched calls (kornia's warps and colour
functions). kornia.augmentation's own samplers are not used: they draw from the global RNG (whose
state dropout also advances), could not draw a global batch's parameters for one process's
share, and would tie the stream of existing configs to kornia's sampler code. The draws of
``crop_padding`` and ``hflip`` are the ones the loader made before this module existed, so a
config that uses only them gets byte-identical batches.

Order (the papers', see docs/configuration.md): crop with padding, random resized crop, vertical
flip, horizontal flip, rotation and affine (one warp), colour jitter, grayscale. Images are
float 0..255, [B, C, H, W]; with ``mask=True`` the last channel is a segmentation mask, moved by
the geometric steps with nearest neighbour and left alone by the colour steps.
"""

from __future__ import annotations

import math
from typing import Any

import kornia
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from medtransfer.augmentation import resolve_augment


def rrc_boxes(generator: torch.Generator, n: int, height: int, width: int, scale: tuple[float, float],
              ratio: tuple[float, float]) -> torch.Tensor:
    """int64 [n, 4] boxes ``(top, left, h, w)`` of torchvision's ``RandomResizedCrop.get_params``,
    vectorised: the first of 10 candidate (area fraction, log-uniform aspect ratio) draws that fits
    the image, else the whole image with the aspect ratio clamped into ``ratio``, centred."""
    area = height * width
    draws = torch.rand(n, 10, 2, generator=generator, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(1, keepdim=True)
    w, h, found = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], fits.any(1)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback_w, fallback_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fallback_w, fallback_h = round(height * ratio[1]), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w, float(fallback_w))
    h = torch.where(found, h, float(fallback_h))
    offsets = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.where(found, torch.floor(offsets[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(found, torch.floor(offsets[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
    return torch.stack([top, left, h, w], dim=1).long()


def crop_matrices(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """float64 [n, 2, 3] source -> destination pixel matrices (kornia's ``warp_affine``, pixel
    centres at integers) that resize box ``(top, left, h, w)`` to ``size x size`` on the grid of
    ``torch.nn.functional.interpolate(align_corners=False)``: the box's outer edges (``left - 0.5``,
    ``left + w - 0.5``) land on the output's (-0.5, size - 0.5)."""
    top, left, h, w = boxes.double().unbind(1)
    sx, sy = size / w, size / h
    zero = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, zero, (0.5 - left) * sx - 0.5], 1),
                        torch.stack([zero, sy, (0.5 - top) * sy - 0.5], 1)], 1)


def affine_matrices(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float64 [n, 2, 3] source -> destination pixel matrices of the Keras ImageDataGenerator
    transform of ``params`` [n, 6] = (angle in degrees (counter-clockwise as displayed), shift x and
    y in pixels, shear in degrees, zoom x, zoom y) about the image centre ((W - 1) / 2, (H - 1) / 2).

    Keras (``apply_affine_transform``) maps each output pixel p to the input point
    ``c + R (Sh Z (p - c) + t)`` with R the rotation, Sh = [[1, -sin s], [0, cos s]] the shear and
    Z = diag(zx, zy) the zoom; this is the inverse of that map.
    """
    angle, tx, ty, shear, zx, zy = params.double().unbind(1)
    theta, s = torch.deg2rad(angle), torch.deg2rad(shear)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    zero = torch.zeros_like(s)
    shear_m = torch.stack([torch.stack([torch.ones_like(s), -torch.sin(s)], 1),
                           torch.stack([zero, torch.cos(s)], 1)], 1)
    zoom = torch.diag_embed(torch.stack([zx, zy], 1))
    inverse = rotation @ shear_m @ zoom  # output (centred) -> input (centred)
    shift = rotation @ torch.stack([tx, ty], 1)[:, :, None]  # [n, 2, 1]
    center = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64)[None, :, None]
    forward = torch.linalg.inv(inverse)
    return torch.cat([forward, center - forward @ (center + shift)], dim=2)


def _warp(x: torch.Tensor, matrices: torch.Tensor, size: tuple[int, int], fill: str, mask: bool) -> torch.Tensor:
    padding = "border" if fill == "nearest" else "zeros"
    matrices = matrices.to(x.device, torch.float32)
    if not mask:
        return kornia.geometry.transform.warp_affine(x, matrices, size, mode="bilinear", padding_mode=padding)
    image = kornia.geometry.transform.warp_affine(x[:, :-1], matrices, size, mode="bilinear", padding_mode=padding)
    labels = kornia.geometry.transform.warp_affine(x[:, -1:], matrices, size, mode="nearest", padding_mode=padding)
    return torch.cat([image, labels], dim=1)


def _in_place(x: torch.Tensor, chosen: torch.Tensor, fn, *args: torch.Tensor) -> None:
    """``x[chosen] = fn(x[chosen], *args[chosen])`` (``chosen`` a CPU bool [B]: the indices are
    known without a device sync)."""
    index = chosen.nonzero()[:, 0]
    if len(index):
        device_index = index.to(x.device)
        x[device_index] = fn(x[device_index], *(a[index].to(x.device) for a in args))


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return kornia.enhance.adjust_brightness_accumulative(x, factor)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return kornia.enhance.adjust_contrast_with_mean_subtraction(x, factor)


def _saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return kornia.enhance.adjust_saturation_with_gray_subtraction(x, factor)


def _hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # torchvision's hue factor is a fraction of a turn; kornia's shift is in radians
    return kornia.enhance.adjust_hue(x, factor * 2 * math.pi).clamp(0, 1)


_JITTER_STEPS = (_brightness, _contrast, _saturation, _hue)


class Augmenter:
    """The ``train.augment`` of a loader, for batches resized to ``output_size`` by a random
    resized crop (without one, the images keep their size)."""

    def __init__(self, augment: dict[str, Any] | None, output_size: int) -> None:
        self.settings = resolve_augment(augment)
        self.output_size = int(output_size)
        s = self.settings
        self.active = bool(s["crop_padding"] or s["random_resized_crop"] or s["vflip"] or s["hflip"]
                           or s["rotation"] or s["affine"] or s["color_jitter"] or s["grayscale"])

    def __call__(self, x: torch.Tensor, generator: torch.Generator, draws: int, mine: slice,
                 mask: bool = False) -> torch.Tensor:
        """Augmented ``x`` [B, C, H, W] (float 0..255); parameters drawn for ``draws`` images
        (the global batch) and this process's ``mine`` of them kept."""
        s = self.settings
        b, _, h, w = x.shape
        if s["crop_padding"] > 0:
            p = s["crop_padding"]
            offsets = torch.randint(0, 2 * p + 1, (draws, 2), generator=generator)[mine].to(x.device)
            padded = F.pad(x, (p, p, p, p))
            rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # [B, H]
            cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # [B, W]
            batch = torch.arange(b, device=x.device)[:, None, None]
            # advanced indices around a slice put their dims first: [B, H, W, C]
            x = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if s["random_resized_crop"]:
            rrc = s["random_resized_crop"]
            boxes = rrc_boxes(generator, draws, h, w, rrc["scale"], rrc["ratio"])[mine]
            size = self.output_size
            x = _warp(x, crop_matrices(boxes, size), (size, size), "nearest", mask)
            h = w = size
        if s["vflip"]:
            flip = (torch.rand(draws, generator=generator) < s["vflip"])[mine].to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-2), x)
        if s["hflip"]:
            flip = (torch.rand(draws, generator=generator) < s["hflip"])[mine].to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if s["rotation"] or s["affine"]:
            x = _warp(x, affine_matrices(self.affine_params(generator, draws, h, w)[mine], h, w), (h, w),
                      s["fill"], mask)
        if s["color_jitter"] or s["grayscale"]:
            image = self._colour(x[:, :-1] if mask else x, generator, draws, mine)
            x = torch.cat([image, x[:, -1:]], dim=1) if mask else image
        return x

    def affine_params(self, generator: torch.Generator, n: int, height: int, width: int) -> torch.Tensor:
        """float64 [n, 6] of :func:`affine_matrices`: Keras ImageDataGenerator's draws (angle, shift
        and shear uniform in +-range, each zoom factor uniform in [1 - z, 1 + z])."""
        s = self.settings
        affine = s["affine"] or {"translate": 0.0, "shear": 0.0, "scale": 0.0}
        u = 2 * torch.rand(n, 6, generator=generator, dtype=torch.float64) - 1  # uniform in [-1, 1]
        ranges = torch.tensor([s["rotation"], affine["translate"] * width, affine["translate"] * height,
                               affine["shear"], affine["scale"], affine["scale"]], dtype=torch.float64)
        return u * ranges + torch.tensor([0, 0, 0, 0, 1, 1], dtype=torch.float64)

    def _colour(self, x: torch.Tensor, generator: torch.Generator, draws: int, mine: slice) -> torch.Tensor:
        """Colour jitter then random grayscale of ``x`` (0..255). Jitter as torchvision's ColorJitter
        under RandomApply(p): per image, factors uniform in [max(0, 1 - b), 1 + b] (brightness,
        contrast, saturation) and [-hue, hue], applied in a random order to the image in 0..1; on a
        one-channel image saturation and hue change nothing and are skipped. Only the chosen
        images are computed on (a copy of the batch is written once)."""
        s = self.settings
        x = x.clone()
        if s["color_jitter"]:
            j = s["color_jitter"]
            apply = (torch.rand(draws, generator=generator) < j["p"])[mine]
            u = torch.rand(draws, 4, generator=generator)[mine]
            order = torch.argsort(torch.rand(draws, 4, generator=generator), dim=1)[mine]
            factors = [max(0.0, 1 - j[k]) + (1 + j[k] - max(0.0, 1 - j[k])) * u[:, i]
                       for i, k in enumerate(("brightness", "contrast", "saturation"))]
            factors.append(-j["hue"] + 2 * j["hue"] * u[:, 3])
            used = [j["brightness"] > 0, j["contrast"] > 0, j["saturation"] > 0 and x.shape[1] == 3,
                    j["hue"] > 0 and x.shape[1] == 3]
            chosen = apply.nonzero()[:, 0]  # CPU indices: no device sync
            if len(chosen):
                device_index = chosen.to(x.device)
                images = x[device_index] / 255.0
                for position in range(4):
                    for step, fn in enumerate(_JITTER_STEPS):
                        if used[step]:
                            _in_place(images, order[chosen, position] == step, fn, factors[step][chosen])
                x[device_index] = images * 255.0
        if s["grayscale"]:
            chosen = (torch.rand(draws, generator=generator) < s["grayscale"])[mine]
            if x.shape[1] == 3:  # a gray image is its own grayscale
                _in_place(x, chosen, lambda images: kornia.color.rgb_to_grayscale(images).expand(-1, 3, -1, -1))
        return x


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size x size`` of [..., H, W] (torchvision's ``center_crop`` offsets)."""
    return TF.center_crop(x, [size, size])


def ten_crops(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, 10, C, size, size]: torchvision's TenCrop (the four corners and the
    centre, then the same five of the horizontally flipped image)."""
    return torch.stack(TF.ten_crop(x, [size, size]), dim=1)
