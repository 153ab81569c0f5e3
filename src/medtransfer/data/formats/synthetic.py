"""Embedded synthetic datasets (format ``synthetic``): a natural-like source and medical-like targets.

These images are **synthetic**: drawn by this module's own code from a seed, so the demo and the
tests run anywhere without downloads. They are no substitute for real data; they exist so that
transfer has something to transfer: the source and the targets are built from the same primitives
(soft-edged blobs and discs, rings, curved ridges, oriented stripes, smooth intensity fields,
Gaussian and speckle noise), so low-level filters learnt on the source are useful on the targets.

Config entry: ``{format: synthetic, task: <task>, n_train, n_val, n_test, size: 32, seed: 0}``.

Tasks
- ``natural_shapes`` (RGB, 12 classes, ``multiclass``): one object per image, of class disc,
  square, triangle, ring, cross, star, striped patch, checkerboard patch, concentric-ring patch,
  dotted patch, elongated blob or arc, at a random position, rotation and colour, with a
  log-uniform radius from ~3 px (near lesion size, at 32 px) to ~10 px and an opacity of 0.5-1 (some
  objects are faint), on a background made of a two-colour linear gradient plus low-frequency
  colour waves, with Gaussian pixel noise of random strength on top. Small faint objects are
  hard to tell apart, which keeps the task from being trivial and makes the source teach
  detectors of small low-contrast blobs, rings and edges in noise -- what the targets need.
- ``lesion_presence`` (grayscale, ``binary``: 0 = no lesion, 1 = lesion): an "anatomy-like"
  background -- a soft-edged elliptical organ brighter than its surroundings, smooth low-frequency
  intensity variation, 2-3 thin curved vessel-like ridges, multiplicative speckle and additive
  Gaussian noise. A positive image holds one small, low-contrast, round lesion (a soft disc,
  radius ~2-3.5 px at 32 px, brighter or darker than the tissue) inside the organ; both classes
  hold a small elongated "pseudo-lesion" (vessel cross-section) half of the time, so a detector of
  any local blob is not enough.
- ``lesion_grade`` (grayscale, ``ordinal``, grades 0-4): the same backgrounds with as many
  lesions as the grade (0 to 4), lesions growing slightly larger and more contrasted with grade.
- ``lesion_segmentation`` (grayscale, ``segmentation``, mask classes background / lesion): the
  same backgrounds and pseudo-lesions with 0-3 lesions (a quarter of the images have none), each
  a soft, slightly elliptical disc of radius ~1.8-3.2 px and lower contrast than
  lesion_presence's; the mask is the lesions' footprint (the pixels each disc covers at least
  half), not the pseudo-lesions'. The image labels say whether an image has a lesion.

Every split is generated from its own seed sequence (``seed``, task, split, chunk of 256 images),
so ``n_train`` does not change the val/test images, and a larger ``n_train`` extends a smaller one.
Classes are balanced within every chunk. Generation is vectorised numpy (2,000 32 px images in
about half a second on one core).

Measured (a small CNN: 3 blocks of two 3x3 conv + BatchNorm + ReLU and a max-pool, 16-32-64
channels, global average pool, linear head; Adam 1e-3, batch 64, 10 epochs from random init, one
CPU thread; n_train 2000, size 32, 1000 test images; AUC: binary = positive-class score, else mean
one-vs-rest), test AUC over the last epochs: natural_shapes 0.77-0.79 (accuracy ~0.25, 12
classes; 0.95 with 10,000 images and 6 epochs), lesion_presence 0.83-0.84, lesion_grade 0.82-0.83
(quadratic kappa ~0.78). Transfer check (the same CNN pretrained 6 epochs on 10,000
natural_shapes images, gray targets repeated to 3 channels, new head, all layers fine-tuned 10
epochs, n_train 500, seeds 0 and 1): lesion_presence 0.738 / 0.737 from random init vs
0.805 / 0.774 from the source weights; lesion_grade 0.786 / 0.711 vs 0.794 / 0.772.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from medtransfer.data.raw import SPLITS, RawDataset, register_format, require
from medtransfer.errors import ConfigError

GENERATOR_VERSION = 2  # bump when the images change, so the checksum and the cache change
CHUNK = 256

SHAPE_CLASSES = [
    "disc", "square", "triangle", "ring", "cross", "star",
    "stripes", "checkerboard", "concentric", "dots", "blob", "arc",
]
GRADES = 5


# --- primitives shared by all tasks -------------------------------------------------------------

def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], each [1, H, W] (x to the right, y down)."""
    u = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0)
    return u[None, None, :], u[None, :, None]


def _col(values: np.ndarray) -> np.ndarray:
    """Per-image parameters [n] -> [n, 1, 1] to broadcast over the pixel grid."""
    return values.astype(np.float32)[:, None, None]


def _local(x: np.ndarray, y: np.ndarray, cx: np.ndarray, cy: np.ndarray,
           angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in each object's frame (centre cx, cy; rotated by angle), [n, H, W]."""
    dx, dy = x - _col(cx), y - _col(cy)
    c, s = _col(np.cos(angle)), _col(np.sin(angle))
    return c * dx + s * dy, -s * dx + c * dy


def _soft(signed_distance: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased inside mask from a signed distance (negative inside), edge ~1 pixel wide."""
    return np.clip(0.5 - signed_distance * (size / 2.0), 0.0, 1.0)


def _smooth_waves(rng: np.random.Generator, n: int, x: np.ndarray, y: np.ndarray, waves: int,
                  max_freq: float) -> np.ndarray:
    """Sum of ``waves`` random low-frequency plane waves, [n, H, W], roughly in [-1, 1]."""
    field = np.zeros((n, y.shape[1], x.shape[2]), np.float32)
    for _ in range(waves):
        theta = rng.uniform(0, np.pi, n)
        freq = rng.uniform(0.5, max_freq, n)
        phase = rng.uniform(0, 2 * np.pi, n)
        field += np.cos(_col(freq * np.pi) * (_col(np.cos(theta)) * x + _col(np.sin(theta)) * y) + _col(phase))
    return field / np.sqrt(waves)


def _box_blur(a: np.ndarray) -> np.ndarray:
    """3x3 box blur over the last two axes (edges wrap; used on noise only)."""
    a = (a + np.roll(a, 1, -1) + np.roll(a, -1, -1)) / 3.0
    return (a + np.roll(a, 1, -2) + np.roll(a, -1, -2)) / 3.0


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


# --- natural_shapes -------------------------------------------------------------------------------

def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, r: np.ndarray, period: np.ndarray,
                size: int) -> np.ndarray:
    """Coverage in [0, 1] of shape ``kind`` in its local frame (u, v), radius r, texture period."""
    rho = np.sqrt(u * u + v * v)
    patch = _soft(rho - r, size)  # texture classes fill a disc of radius r
    two_pi_f = 2 * np.pi / period
    name = SHAPE_CLASSES[kind]
    if name == "disc":
        return _soft(rho - r, size)
    if name == "square":
        return _soft(np.maximum(np.abs(u), np.abs(v)) - 0.8 * r, size)
    if name == "triangle":
        d = np.full_like(u, -np.inf)
        for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            d = np.maximum(d, np.cos(a) * u + np.sin(a) * v)
        return _soft(d - 0.5 * r, size)
    if name == "ring":
        return _soft(np.abs(rho - 0.75 * r) - 0.18 * r, size)
    if name == "cross":
        arm = 0.25 * r
        d = np.minimum(np.maximum(np.abs(u) - arm, np.abs(v) - r), np.maximum(np.abs(v) - arm, np.abs(u) - r))
        return _soft(d, size)
    if name == "star":
        return _soft(rho - r * (0.65 + 0.35 * np.cos(5 * np.arctan2(v, u))), size)
    if name == "stripes":
        return patch * np.clip(0.5 + 2.0 * np.sin(two_pi_f * u), 0, 1)
    if name == "checkerboard":
        return patch * np.clip(0.5 + 2.0 * np.sin(two_pi_f * u) * np.sin(two_pi_f * v), 0, 1)
    if name == "concentric":
        return patch * np.clip(0.5 + 2.0 * np.sin(two_pi_f * rho), 0, 1)
    if name == "dots":
        return patch * np.clip(2.0 * (np.cos(two_pi_f * u) * np.cos(two_pi_f * v) - 0.4), 0, 1)
    if name == "blob":
        return np.exp(-0.5 * ((u / (0.8 * r)) ** 2 + (v / (0.35 * r)) ** 2))
    if name == "arc":
        curve = v - 1.2 * (u * u) / r + 0.4 * r
        return _soft(np.maximum(np.abs(curve) - 0.12 * r, np.abs(u) - r), size)
    raise AssertionError(name)


def _natural_shapes(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    n = len(labels)
    x, y = _grid(size)
    # background: two-colour gradient in a random direction plus low-frequency colour waves
    c1, c2 = rng.uniform(0, 1, (n, 3)), rng.uniform(0, 1, (n, 3))
    theta = rng.uniform(0, 2 * np.pi, n)
    t = 0.5 + 0.5 * (_col(np.cos(theta)) * x + _col(np.sin(theta)) * y)  # [n, H, W]
    images = c1[:, :, None, None] * (1 - t[:, None]) + c2[:, :, None, None] * t[:, None]
    waves = _smooth_waves(rng, n, x, y, waves=3, max_freq=3.0)
    images += 0.12 * waves[:, None] * rng.uniform(-1, 1, (n, 3))[:, :, None, None]
    # one object per image; its scale spans tiny (~2 px radius at 32 px, lesion-sized) to large
    cx, cy = rng.uniform(-0.45, 0.45, (2, n))
    angle = rng.uniform(0, 2 * np.pi, n)
    r = np.exp(rng.uniform(np.log(0.2), np.log(0.6), n))
    period = rng.uniform(4.5, 7.0, n) * 2.0 / size  # 4.5-7 px at any size
    colour = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    opacity = rng.uniform(0.5, 1.0, n).astype(np.float32)  # some objects faint, as lesions are
    for kind in range(len(SHAPE_CLASSES)):
        idx = np.flatnonzero(labels == kind)
        if len(idx) == 0:
            continue
        u, v = _local(x, y, cx[idx], cy[idx], angle[idx])
        mask = _shape_mask(kind, u, v, _col(r[idx]), _col(period[idx]), size)[:, None]
        mask *= opacity[idx, None, None, None]
        images[idx] = images[idx] * (1 - mask) + colour[idx, :, None, None] * mask
    noise = rng.uniform(0.02, 0.08, n).astype(np.float32)[:, None, None, None]
    images += noise * rng.normal(0, 1, images.shape).astype(np.float32)
    return _to_uint8(images)


# --- lesion_presence / lesion_grade ----------------------------------------------------------------

def _anatomy(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Anatomy-like gray backgrounds [n, H, W] in ~[0, 1] and the organ ellipse (cx, cy, a, b, angle)."""
    x, y = _grid(size)
    cx, cy = rng.uniform(-0.2, 0.2, (2, n))
    a, b = rng.uniform(0.55, 0.85, n), rng.uniform(0.4, 0.7, n)
    angle = rng.uniform(0, np.pi, n)
    u, v = _local(x, y, cx, cy, angle)
    organ_distance = np.sqrt((u / _col(a)) ** 2 + (v / _col(b)) ** 2) - 1.0
    organ = np.clip(0.5 - organ_distance * 4.0, 0, 1)  # soft boundary, ~1/8 of the radius wide
    inside, outside = rng.uniform(0.45, 0.65, n), rng.uniform(0.15, 0.3, n)
    images = _col(outside) + _col(inside - outside) * organ
    images += 0.06 * _smooth_waves(rng, n, x, y, waves=3, max_freq=2.5)
    # vessel-like ridges: thin sinusoidal curves in a random frame, brighter or darker than tissue
    for _ in range(3):
        present = rng.random(n) < 0.8
        uu, vv = _local(x, y, rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n), rng.uniform(0, np.pi, n))
        curve = vv - _col(rng.uniform(0.05, 0.3, n)) * np.sin(_col(rng.uniform(1.5, 4.0, n)) * uu
                                                             + _col(rng.uniform(0, 2 * np.pi, n)))
        width = _col(rng.uniform(0.8, 1.4, n) * 2.0 / size)
        contrast = _col(rng.choice([-1.0, 1.0], n) * rng.uniform(0.06, 0.14, n) * present)
        images += contrast * np.exp(-((curve / width) ** 2))
    # speckle (multiplicative, spatially correlated) and additive Gaussian noise
    speckle = _box_blur(rng.normal(0, 1, images.shape).astype(np.float32)) * 3.0  # unit variance again
    images *= 1.0 + _col(rng.uniform(0.06, 0.12, n)) * speckle
    images += _col(rng.uniform(0.02, 0.05, n)) * rng.normal(0, 1, images.shape).astype(np.float32)
    return images, (cx, cy, a, b, angle)


def _inside_organ(rng: np.random.Generator, organ: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Random points well inside each organ ellipse (within 70 % of its radii)."""
    cx, cy, a, b, angle = organ
    n = len(cx)
    radius = 0.7 * np.sqrt(rng.random(n))
    phi = rng.uniform(0, 2 * np.pi, n)
    pu, pv = radius * a * np.cos(phi), radius * b * np.sin(phi)
    return cx + np.cos(angle) * pu - np.sin(angle) * pv, cy + np.sin(angle) * pu + np.cos(angle) * pv


def _add_blobs(rng: np.random.Generator, images: np.ndarray, organ: tuple[np.ndarray, ...], mask: np.ndarray,
               radius_px: tuple[float, float], contrast: tuple[float, float], elongation: tuple[float, float],
               size: int) -> np.ndarray:
    """Add one soft blob to the images where ``mask``: radius in pixels, |contrast| in intensity units.
    Returns its footprint, bool [n, H, W] (all False where not ``mask``)."""
    x, y = _grid(size)
    n = images.shape[0]
    cx, cy = _inside_organ(rng, organ)
    r = rng.uniform(*radius_px, n) * 2.0 / size
    ratio = rng.uniform(*elongation, n)
    c = rng.choice([-1.0, 1.0], n) * rng.uniform(*contrast, n) * mask
    u, v = _local(x, y, cx, cy, rng.uniform(0, np.pi, n))
    d = np.sqrt((u * _col(1 / np.sqrt(ratio))) ** 2 + (v * _col(np.sqrt(ratio))) ** 2) - _col(r)
    images += _col(c) * np.clip(0.5 - d * (size / 3.0), 0, 1)  # soft edge ~1.5 px
    return (d <= 0) & mask[:, None, None]  # the footprint: where the blob covers at least half a pixel


def _lesions(rng: np.random.Generator, counts: np.ndarray, size: int, contrast: tuple[float, float],
             growth: float) -> np.ndarray:
    """Gray images [n, 1, H, W] with ``counts[i]`` lesions in image i, of |contrast| in the given range
    (intensity units), radius and contrast scaled by ``1 + growth * count``."""
    n = len(counts)
    images, organ = _anatomy(rng, n, size)
    _add_blobs(rng, images, organ, rng.random(n) < 0.5, (1.0, 1.6), (0.05, 0.12), (3.0, 4.5), size)
    for k in range(int(counts.max(initial=0))):
        grow = 1.0 + growth * counts
        _add_blobs(rng, images, organ, counts > k, (2.0 * grow, 3.5 * grow), (contrast[0] * grow, contrast[1] * grow),
                   (1.0, 1.3), size)
    return _to_uint8(images[:, None])


def _lesion_presence(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    return _lesions(rng, labels, size, contrast=(0.14, 0.28), growth=0.0)


def _lesion_grade(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    return _lesions(rng, labels, size, contrast=(0.12, 0.25), growth=0.08)


def _lesion_segmentation(rng: np.random.Generator, counts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Gray images [n, 1, H, W] with ``counts[i]`` (0-3) lesions and their footprint as masks
    uint8 [n, 1, H, W] (1 = lesion). The backgrounds, vessel ridges and elongated pseudo-lesions
    are those of lesion_presence (not in the mask); the lesions are lower in contrast and smaller,
    so finding their outline in speckle is the hard part."""
    n = len(counts)
    images, organ = _anatomy(rng, n, size)
    _add_blobs(rng, images, organ, rng.random(n) < 0.5, (1.0, 1.6), (0.05, 0.12), (3.0, 4.5), size)
    masks = np.zeros(images.shape, bool)
    for k in range(int(counts.max(initial=0))):
        masks |= _add_blobs(rng, images, organ, counts > k, SEGMENTATION_RADIUS_PX, SEGMENTATION_CONTRAST,
                            (1.0, 1.5), size)
    return _to_uint8(images[:, None]), masks[:, None].astype(np.uint8)


#: lesion_segmentation's lesions: radius in pixels and |contrast| in intensity units (tuned so
#: that weight transfer from natural_shapes beats random init; docs/real-checks.md, "Real check: segmentation
#: of synthetic lesions")
SEGMENTATION_RADIUS_PX = (1.8, 3.2)
SEGMENTATION_CONTRAST = (0.10, 0.22)
SEGMENTATION_MAX_LESIONS = 3


# --- the format ------------------------------------------------------------------------------------

TASKS: dict[str, tuple[Callable[[np.random.Generator, np.ndarray, int], Any], str, list[str]]] = {
    "natural_shapes": (_natural_shapes, "multiclass", SHAPE_CLASSES),
    "lesion_presence": (_lesion_presence, "binary", ["no lesion", "lesion"]),
    "lesion_grade": (_lesion_grade, "ordinal", [f"grade {g}" for g in range(GRADES)]),
    # class names are those of the mask; the drawn "labels" are lesion counts 0..3
    "lesion_segmentation": (_lesion_segmentation, "segmentation", ["background", "lesion"]),
}
#: how many values the per-chunk balanced draw cycles through (the classes; lesion counts for segmentation)
_DRAWN_VALUES = {"lesion_segmentation": SEGMENTATION_MAX_LESIONS + 1}


def _generate(task: str, n: int, size: int, seed: int, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(images, drawn values, masks or None), chunk by chunk (see :func:`generate`)."""
    draw, _, classes = TASKS[task]
    images, labels, masks = [], [], []
    task_id, split_id = list(TASKS).index(task), SPLITS.index(split)
    values = _DRAWN_VALUES.get(task, len(classes))
    for chunk, start in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([seed, task_id, split_id, chunk])
        m = min(CHUNK, n - start)
        # always draw a whole chunk, so the images do not depend on where n cuts it
        chunk_labels = rng.permutation(np.arange(CHUNK) % values).astype(np.int64)
        drawn = draw(rng, chunk_labels, size)
        if isinstance(drawn, tuple):
            drawn, chunk_masks = drawn
            masks.append(chunk_masks[:m])
        images.append(drawn[:m])
        labels.append(chunk_labels[:m])
    if not images:
        channels = 3 if task == "natural_shapes" else 1
        empty = np.zeros((0, channels, size, size), np.uint8)
        return empty, np.zeros(0, np.int64), (np.zeros((0, 1, size, size), np.uint8) if task in _DRAWN_VALUES else None)
    return np.concatenate(images), np.concatenate(labels), np.concatenate(masks) if masks else None


def generate(task: str, n: int, size: int = 32, seed: int = 0, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``n`` images uint8 [n, C, size, size] and int64 labels [n] of a synthetic ``task``
    (segmentation: 1 where an image has a lesion; :func:`generate_segmentation` adds the masks).

    Deterministic in (task, n, size, seed, split); the first m images do not depend on n >= m.
    """
    images, labels, masks = _generate(task, n, size, seed, split)
    return images, labels if masks is None else (labels > 0).astype(np.int64)


def generate_segmentation(task: str, n: int, size: int = 32, seed: int = 0,
                          split: str = "train") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images uint8 [n, 1, size, size], masks uint8 [n, 1, size, size] (0 background, 1 lesion)
    and int64 labels [n] (1 where the mask has a lesion) of a segmentation ``task``."""
    images, counts, masks = _generate(task, n, size, seed, split)
    if masks is None:
        raise ValueError(f"synthetic task {task!r} draws no masks")
    return images, masks, (counts > 0).astype(np.int64)


def check(name: str, entry: Mapping[str, Any]) -> None:
    """The entry's task, size and split sizes (``ConfigError``), before anything is generated."""
    task = entry.get("task")
    if task not in TASKS:
        raise ConfigError(f"datasets.{name}.task is {task!r}; allowed for format synthetic: {', '.join(TASKS)}")
    size = int(entry.get("size", 32))
    if size < 8:
        raise ConfigError(f"datasets.{name}.size is {size}; synthetic images need size >= 8")
    for split in SPLITS:
        key = f"n_{split}"
        if int(require(entry, key, name)) < 1:
            raise ConfigError(f"datasets.{name}.{key} must be >= 1, got {int(entry[key])}")


@register_format("synthetic", required={"task": f"one of {', '.join(TASKS)}",
                                        **{f"n_{split}": f"number of {split} images" for split in SPLITS}},
                 check=check)
def read(name: str, entry: dict[str, Any]) -> RawDataset:
    """Generate the synthetic dataset of a config entry (see the module docstring)."""
    check(name, entry)
    task = entry["task"]
    size, seed = int(entry.get("size", 32)), int(entry.get("seed", 0))
    counts = {split: int(entry[f"n_{split}"]) for split in SPLITS}
    params = {"task": task, "size": size, "seed": seed, **{f"n_{s}": counts[s] for s in SPLITS},
              "generator_version": GENERATOR_VERSION}
    _, kind, classes = TASKS[task]
    masks = None
    if kind == "segmentation":
        drawn = {split: generate_segmentation(task, counts[split], size, seed, split) for split in SPLITS}
        splits = {split: (images, labels) for split, (images, _, labels) in drawn.items()}
        masks = {split: split_masks for split, (_, split_masks, _) in drawn.items()}
    else:
        splits = {split: generate(task, counts[split], size, seed, split) for split in SPLITS}
    return RawDataset(
        splits=splits,
        task=kind,
        class_names=list(classes),
        source=f"synthetic:{task}",
        checksum=hashlib.md5(json.dumps(params, sort_keys=True).encode()).hexdigest(),
        attributes={"synthetic": params},
        masks=masks,
    )
