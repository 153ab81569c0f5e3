"""Batches from an HDF5 cache, normalised and augmented on the device in whole batches.

A split (or the ``indices`` subset of it) that fits in ``max_memory_mb`` is read once into a
uint8 tensor on the device; a batch is then one index-gather, one float conversion and a few
element-wise ops, with no per-image Python. A larger split is streamed: a torch ``DataLoader``
whose workers each open the HDF5 file themselves reads the uint8 rows of each batch, and the
batch goes through the same device-side steps. Both paths yield identical batches.

Per batch, in this order: uint8 -> float (0..255); augmentation (:mod:`medtransfer.data.augment`:
crop with zero padding, random resized crop, flips, rotation and affine, colour jitter, grayscale,
each per image, drawn for the whole batch at once); resize to ``image_size``; gray -> 3 channels
(a broadcast, no copy); RGB -> BGR where the input transform
asks for it (``caffe``); normalisation ``(x / 255 - mean) / std``
(:func:`input_transform`). An evaluation loader with
``eval_crop`` resizes to ``image_size / eval_crop`` and keeps the centre ``image_size`` instead of
resizing to ``image_size``; with ``tta="tencrop"`` it yields ten crops per image,
[B, 10, C, size, size].

Order and augmentation are pure functions of ``(seed, epoch)``: call ``set_epoch(epoch)`` before
iterating (as with ``DistributedSampler``), and a resumed run sees exactly the same batches.

Segmentation caches: the batch's targets are its masks, int64 [B, H, W] class ids, read beside
the images and moved by the same crop and flip (drawn once for both), resized with nearest
neighbour to ``image_size``.

In a job of several processes (``world=(rank, size)``) every process computes the same global
order and batches of ``batch_size`` images and keeps its share of each batch (DistributedSampler's
``[rank::size]``, per global batch); the augmentation of the whole global batch is drawn on every
process and each keeps its images' draws. So an image gets the same crop and flip, in the same
step, whatever the number of processes, and the processes' batches together are the
one-process batch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from medtransfer.augmentation import TTA_VIEWS, eval_base_size
from medtransfer.data.augment import Augmenter, centre_crop, ten_crops
from medtransfer.data.cache import CacheInfo, interpolate, open_cache, read_info
from medtransfer.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ORDER_STREAM, _AUGMENT_STREAM, _LABEL_STREAM = 0, 1, 2


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch, stream); streams keep the shuffle order
    independent of whether augmentation is on."""
    state = np.random.SeedSequence([int(seed), int(epoch), stream]).generate_state(1, np.uint64)[0]
    generator = torch.Generator()
    generator.manual_seed(int(state) & ((1 << 63) - 1))
    return generator


def evaluated_columns(info: CacheInfo) -> list[int] | None:
    """The label columns a multi-label cache's metrics average over (its ``evaluated_labels``
    attribute, e.g. CheXpert's ``eval_labels``), None for all."""
    names = info.attributes.get("evaluated_labels")
    return None if names is None else [info.class_names.index(name) for name in names]


#: Keras's ``imagenet_utils.preprocess_input(mode="caffe")``: the ImageNet mean of 0..255 pixels in
#: BGR order, subtracted after RGB -> BGR, with no std scaling (RadImageNet's and Keras ResNet-50's input).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: The named input transforms a source's ``preprocess`` (or ``train.normalize``) may give.
PREPROCESS_NAMES = ("imagenet", "caffe", "unit")


def input_transform(normalize: str | Mapping[str, Any], info: CacheInfo, channels: int) -> tuple[list, list, bool]:
    """Per-channel (mean, std) in 0..1 units and whether channels are reversed (RGB -> BGR) first:
    the batch the model sees is ``(flip(x) / 255 - mean) / std`` for uint8 ``x`` [B, C, H, W], gray
    already replicated to ``channels``.

    ``normalize``: ``"dataset"`` (the cache's train mean/std), ``"imagenet"`` (ImageNet mean/std
    of [0, 1] RGB), ``"caffe"`` (BGR, :data:`CAFFE_MEAN_BGR` subtracted from 0..255 values: mean =
    CAFFE_MEAN_BGR / 255, std = 1 / 255), ``"unit"`` ([0, 1]: mean 0, std 1), or ``{mean, std}``
    (one value or one per channel, 0..1 units) with optional ``bgr: true`` (mean and std then in
    BGR order)."""
    bgr = False
    if normalize == "dataset":
        mean, std = list(info.mean), list(info.std)
    elif normalize in ("imagenet", "caffe"):
        if channels != 3:
            raise ConfigError(f"normalize {normalize!r} needs channels=3 (ImageNet statistics are RGB)")
        if normalize == "imagenet":
            mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        else:
            mean, std, bgr = [m / 255.0 for m in CAFFE_MEAN_BGR], [1.0 / 255.0], True
    elif normalize == "unit":
        mean, std = [0.0], [1.0]
    elif isinstance(normalize, Mapping) and "mean" in normalize and "std" in normalize:
        mean = list(np.atleast_1d(np.asarray(normalize["mean"], np.float64)))
        std = list(np.atleast_1d(np.asarray(normalize["std"], np.float64)))
        bgr = bool(normalize.get("bgr", False))
    else:
        raise ConfigError(f"normalize is {normalize!r}; allowed: 'dataset', 'imagenet', 'caffe', 'unit' or "
                          "{mean: .., std: .., bgr: false}")
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise ConfigError(f"normalize {name} has {len(values)} values; give 1 or {channels} (channels)")
    if min(std) <= 0:
        raise ConfigError(f"normalize std must be > 0, got {std} (a constant dataset has std 0)")
    return mean, std, bgr


def normalisation(normalize: str | Mapping[str, Any], info: CacheInfo, channels: int) -> tuple[list, list]:
    """Per-channel (mean, std) in 0..1 units of a ``normalize`` setting for a cache (see make_loader);
    a setting that also reverses the channels (``caffe``, ``bgr: true``) is refused: use
    :func:`input_transform`."""
    mean, std, bgr = input_transform(normalize, info, channels)
    if bgr:
        raise ConfigError(f"normalize {normalize!r} reverses the channels (BGR); this caller takes mean/std only")
    return mean, std


class _H5Batches(torch.utils.data.Dataset):
    """Item i = uint8 rows of batch i, read from the HDF5 file (opened once per worker process);
    with ``masks``, the pair (images, masks)."""

    def __init__(self, path: str, split: str, rows: list[np.ndarray], masks: bool = False) -> None:
        self.path, self.split, self.rows, self.masks = path, split, rows, masks
        self._h5: h5py.File | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.rows)

    def _images(self, dataset: str = "images") -> h5py.Dataset:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5[self.split][dataset]

    def __getitem__(self, i: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.masks:
            return self._rows(i, "images"), self._rows(i, "masks")
        return self._rows(i, "images")

    def _rows(self, i: int, dataset: str) -> torch.Tensor:
        rows = self.rows[i]
        images = self._images(dataset)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        out = np.empty((len(rows), *images.shape[1:]), np.uint8)
        # read runs of consecutive rows as one slice (all of a batch when not shuffled)
        breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        for run_positions in np.split(np.arange(len(rows)), breaks):
            first, last = sorted_rows[run_positions[0]], sorted_rows[run_positions[-1]]
            try:
                out[order[run_positions]] = images[first:last + 1]
            except OSError as err:
                raise DataError(f"dataset cache {self.path}: {self.split} rows {first}-{last} cannot be read "
                                f"({err}); delete it and rerun the preprocess rule") from None
        return torch.from_numpy(out)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def _read_rows(path: str, split: str, rows: np.ndarray, block_bytes: int = 64 << 20,
               dataset: str = "images") -> np.ndarray:
    """uint8 images (or masks) of ``rows`` (in that order), reading the file in contiguous blocks."""
    with open_cache(path) as h5:
        images = h5[split][dataset]
        n = images.shape[0]
        out = np.empty((len(rows), *images.shape[1:]), np.uint8)
        if len(rows) == 0:
            return out
        step = max(1, block_bytes // max(1, int(np.prod(images.shape[1:]))))
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        try:
            for start in range(0, n, step):
                lo, hi = np.searchsorted(sorted_rows, [start, start + step])
                if lo == hi:
                    continue
                block = images[start:min(n, start + step)]
                out[order[lo:hi]] = block[sorted_rows[lo:hi] - start]
        except OSError as err:
            raise DataError(f"dataset cache {path}: {split} cannot be read ({err}); delete it and rerun the "
                            "preprocess rule") from None
    return out


class BatchLoader:
    """Iterable of ``(x, y)`` batches of one split; see :func:`make_loader`.

    ``x``: float32 [B, channels, H, W] on the device, normalised. ``y``: int64 [B] or float32
    [B, K] (multilabel, NaN = unknown) on the device; for a segmentation cache the masks, int64
    [B, H, W] class ids at the size of ``x``.
    """

    def __init__(self, cache_path: str | Path, split: str, *, batch_size: int, shuffle: bool, seed: int = 0,
                 indices: np.ndarray | None = None, device: str | torch.device = "cpu", channels: int = 3,
                 normalize: str | Mapping[str, Any] = "dataset", image_size: int | None = None,
                 resize_mode: str = "nearest", augment: Mapping[str, Any] | None = None, drop_last: bool = False,
                 max_memory_mb: int = 2048, num_workers: int = 2, world: tuple[int, int] = (0, 1),
                 soft_labels: bool = False, eval_crop: float | None = None, tta: str | None = None) -> None:
        self.path = str(cache_path)
        self.info = read_info(cache_path)
        if split not in self.info.split_sizes:
            raise ValueError(f"split must be one of {list(self.info.split_sizes)}, not {split!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.rank, self.world_size = int(world[0]), int(world[1])
        if self.world_size > 1 and batch_size % self.world_size:
            raise ConfigError(f"train.batch_size {batch_size} is the global batch of {self.world_size} processes "
                              f"(train.gpus_per_job) and must be divisible by it; choose a multiple of "
                              f"{self.world_size}")
        self.split, self.batch_size, self.shuffle, self.seed = split, int(batch_size), bool(shuffle), int(seed)
        self.drop_last, self.num_workers = bool(drop_last), int(num_workers)
        self.device = torch.device(device)
        self.task, self.num_classes = self.info.task, self.info.num_classes
        size = self.info.split_sizes[split]
        if indices is None:
            self.indices = np.arange(size, dtype=np.int64)
        else:
            self.indices = np.asarray(indices, dtype=np.int64)
            if self.indices.ndim != 1 or len(np.unique(self.indices)) != len(self.indices) or (
                    len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= size)):
                raise ValueError(f"indices must be unique row numbers of the {split} split (0..{size - 1})")
        self.num_examples = len(self.indices)

        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        if channels == 1 and self.info.channels == 3:
            raise ConfigError(f"channels=1 but {self.path} holds RGB images; use channels=3 "
                              "(converting colour to gray is not done at load time)")
        self.channels = channels
        self.image_size = int(image_size) if image_size else self.info.image_size
        self.resize_mode = resize_mode
        self.augment = dict(augment or {})
        self.augmenter = Augmenter(self.augment, self.image_size)
        self.eval_crop = float(eval_crop) if eval_crop else None
        if tta is not None and tta not in TTA_VIEWS:
            raise ConfigError(f"tta {tta!r}; allowed: {', '.join(TTA_VIEWS)}")
        self.tta = tta
        # an evaluation view (centre crop, ten crops) is cut from the image at this size
        self.view_base = eval_base_size(self.image_size, self.eval_crop) if self.eval_crop else self.info.image_size
        if tta and self.view_base <= self.image_size:
            raise ConfigError(f"tta {tta!r} crops {self.image_size} px from {self.view_base} px images, so every "
                              f"corner crop is the centre: set train.eval_crop (e.g. 0.875: resize to "
                              f"{eval_base_size(self.image_size, 0.875)} px first) or cache larger images")
        if tta and self.info.task == "segmentation":
            raise ConfigError(f"tta {tta!r} averages class scores; segmentation targets cannot use it")
        mean, std, self.bgr = input_transform(normalize, self.info, channels)
        # x / 255 then (x - mean) / std  ==  x * scale + shift (after RGB -> BGR where bgr)
        std_t = torch.tensor(std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1).to(self.device)
        self._shift = (-torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1).to(self.device)

        with open_cache(self.path) as h5:
            labels = h5[split]["labels"][...]
        self._labels = torch.from_numpy(labels[self.indices]).to(self.device)
        self._smoothing = self._soft_label_ranges() if soft_labels else None
        #: the label columns a multi-label evaluation averages over (None: all); read by evaluate()
        self.evaluated_columns = evaluated_columns(self.info)
        self.masks = self.task == "segmentation"  # the targets are the masks, not the labels
        image_bytes = self.num_examples * (self.info.channels + self.masks) * self.info.image_size ** 2
        self.in_memory = image_bytes <= int(max_memory_mb) * (1 << 20)
        self._images: torch.Tensor | None = None
        self._masks: torch.Tensor | None = None
        if self.in_memory:
            self._images = torch.from_numpy(_read_rows(self.path, split, self.indices)).to(self.device)
            if self.masks:
                self._masks = torch.from_numpy(_read_rows(self.path, split, self.indices, dataset="masks")
                                               ).to(self.device)
        self.epoch = 0

    def _soft_label_ranges(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(low [K], high [K]) of the soft labels of a cache's ``label_smoothing`` attribute
        (CheXpert's LSR-Ones / LSR-Zeros), NaN for the labels without one; None when it has none."""
        smoothing = self.info.attributes.get("label_smoothing")
        if not smoothing or self.task != "multilabel":
            return None
        low = torch.full((self.info.num_classes,), float("nan"))
        high = low.clone()
        for name, (lo, hi) in smoothing.items():
            k = self.info.class_names.index(name)
            low[k], high[k] = float(lo), float(hi)
        return low.to(self.device), high.to(self.device)

    def soft_labels(self, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``labels`` [B, K] of the images at ``positions`` (into ``indices``) with each NaN entry of
        a smoothed label replaced by a draw from U(low, high) of that label: one draw per image,
        label and epoch, a pure function of (seed, epoch, position) whatever the batch or process.
        Hosseinzadeh Taher et al. draw the soft label of an uncertain entry anew every time the
        image is loaded (BenchmarkTransferLearning, dataloader.py, CheXpertDataset.__getitem__)."""
        if self._smoothing is None:
            return labels
        low, high = self._smoothing
        draws = torch.rand(self.num_examples, len(low), generator=epoch_generator(self.seed, self.epoch, _LABEL_STREAM))
        soft = low + (high - low) * draws[positions.cpu()].to(labels.device)
        return torch.where(torch.isnan(labels) & ~torch.isnan(low), soft, labels)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_examples // self.batch_size
        return math.ceil(self.num_examples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        self.epoch = int(epoch)

    def order(self) -> torch.Tensor:
        """Positions (into ``indices``) in this epoch's order, int64 [num_examples] on the CPU."""
        if self.shuffle:
            return torch.randperm(self.num_examples, generator=epoch_generator(self.seed, self.epoch, _ORDER_STREAM))
        return torch.arange(self.num_examples)

    def _global_batches(self) -> list[torch.Tensor]:
        order = self.order()
        if self.world_size > 1 and not self.drop_last and len(order) % self.world_size:
            # DistributedSampler's padding: repeat the first positions so every process has as many
            # images (and steps) as the others; the padded images count twice in that epoch
            pad = self.world_size - len(order) % self.world_size
            order = torch.cat([order, order[:pad]])
        return list(order.split(self.batch_size))[:len(self)]

    def _batches(self) -> list[torch.Tensor]:
        # DistributedSampler's split (indices[rank::size] of the epoch's order), per global batch
        return [positions[self.rank::self.world_size] for positions in self._global_batches()]

    def batch_rows(self) -> list[np.ndarray]:
        """This process's rows of the split (into the cache), batch by batch, for the current epoch."""
        return [self.indices[positions.numpy()] for positions in self._batches()]

    def _augment(self, x: torch.Tensor, generator: torch.Generator, global_size: int | None = None,
                 mask: bool = False) -> torch.Tensor:
        """``train.augment`` of ``x``; the draws are made for a batch of ``global_size`` (default:
        ``x``'s) and this process's share of them kept."""
        mine = slice(None) if global_size is None else slice(self.rank, None, self.world_size)
        return self.augmenter(x, generator, global_size or x.shape[0], mine, mask=mask)

    def _view(self, x: torch.Tensor, mode: str) -> torch.Tensor:
        """An evaluation batch at ``image_size``: resized to ``image_size / eval_crop`` and its
        centre kept; with ``tta``, [B, 10, C, size, size] ten crops (normalised after)."""
        x = interpolate(x, self.view_base, mode)
        return x if self.tta else centre_crop(x, self.image_size)

    def transform(self, images: torch.Tensor, generator: torch.Generator | None = None,
                  global_size: int | None = None) -> torch.Tensor:
        """uint8 [B, C, H, W] on the device -> the normalised float32 batch the model sees
        (``global_size``: the global batch that ``images`` are this process's share of)."""
        x = images.float()
        if generator is not None and self.augmenter.active:
            x = self._augment(x, generator, global_size)
        if self.eval_crop or self.tta:
            x = self._view(x, self.resize_mode)
        else:
            x = interpolate(x, self.image_size, self.resize_mode)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        x = self._normalise(x)
        return ten_crops(x, self.image_size) if self.tta else x

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float [B, channels, H, W] in 0..255 -> the model's input (see :func:`input_transform`)."""
        if self.bgr:
            x = x.flip(1)
        return (x * self._scale + self._shift).contiguous()

    def transform_pair(self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None,
                       global_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images [B, C, H, W] and masks [B, 1, H, W] -> the normalised batch and int64 masks
        [B, size, size]: one crop and flip for both (the mask rides along as an extra channel;
        padding is background), then each resized (the mask with nearest neighbour)."""
        x = torch.cat([images, masks], dim=1).float()
        if generator is not None and self.augmenter.active:
            x = self._augment(x, generator, global_size, mask=True)
        x, y = x[:, :-1], x[:, -1:]
        if self.eval_crop:
            x, y = self._view(x, self.resize_mode), self._view(y, "nearest")
        else:
            x = interpolate(x, self.image_size, self.resize_mode)
            y = interpolate(y, self.image_size, "nearest")
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        return self._normalise(x), y[:, 0].round().long()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self._batches()
        sizes = [len(p) for p in self._global_batches()] if self.world_size > 1 else [None] * len(batches)
        generator = epoch_generator(self.seed, self.epoch, _AUGMENT_STREAM)
        if self._images is not None:
            for positions, size in zip(batches, sizes, strict=True):
                positions = positions.to(self.device)
                if self.masks:
                    yield self.transform_pair(self._images[positions], self._masks[positions], generator, size)
                else:
                    yield (self.transform(self._images[positions], generator, size),
                           self.soft_labels(self._labels[positions], positions))
            return
        dataset = _H5Batches(self.path, self.split, [self.indices[p.numpy()] for p in batches], masks=self.masks)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=self.num_workers,
                                             pin_memory=self.device.type == "cuda")
        try:
            for positions, size, item in zip(batches, sizes, loader, strict=True):
                positions = positions.to(self.device)
                if self.masks:
                    images, masks = (t.to(self.device, non_blocking=True) for t in item)
                    yield self.transform_pair(images, masks, generator, size)
                else:
                    images = item.to(self.device, non_blocking=True)
                    yield self.transform(images, generator, size), self.soft_labels(self._labels[positions], positions)
        finally:
            dataset.close()


def make_loader(cache_path: str | Path, split: str, *, batch_size: int, shuffle: bool, seed: int = 0,
                indices: np.ndarray | None = None, device: str | torch.device = "cpu", channels: int = 3,
                normalize: str | Mapping[str, Any] = "dataset", image_size: int | None = None,
                resize_mode: str = "nearest", augment: Mapping[str, Any] | None = None, drop_last: bool = False,
                max_memory_mb: int = 2048, num_workers: int = 2, world: tuple[int, int] = (0, 1),
                soft_labels: bool = False, eval_crop: float | None = None, tta: str | None = None) -> BatchLoader:
    """A :class:`BatchLoader` over ``split`` of the cache at ``cache_path``.

    - ``indices``: rows of the split to use (e.g. :func:`~medtransfer.data.fractions.subset_indices`);
      without shuffling, batches follow their order.
    - ``channels``: 3 repeats a gray image into 3 channels per batch; 1 with RGB data is an error.
    - ``normalize``: ``"dataset"`` (the cache's train mean/std), ``"imagenet"``, ``"caffe"``,
      ``"unit"``, or ``{"mean": m, "std": s}`` with one value or one per channel (MedMNIST: 0.5 /
      0.5) and optional ``"bgr": True`` (:func:`input_transform`).
    - ``image_size``: resize batches on the device (e.g. 28 -> 224 with ``resize_mode="nearest"``).
    - ``augment``: ``train.augment`` (:func:`medtransfer.augmentation.resolve_augment`: flips,
      ``crop_padding`` in pixels of the cached image, random resized crop, rotation, affine,
      colour jitter, grayscale), drawn per image from a generator seeded by (seed, epoch).
    - ``eval_crop``: resize to ``floor(image_size / eval_crop)`` and keep the centre
      ``image_size`` (torchvision's Resize + CenterCrop); ``tta="tencrop"``: yield the ten crops
      [B, 10, C, size, size] of that image (of the cached image without ``eval_crop``).
    - ``max_memory_mb``: the largest selection loaded whole onto the device; larger ones stream
      with ``num_workers`` processes.
    - ``world``: ``(rank, size)`` of a multi-process job: this process yields its share
      (``batch_size / size`` images) of every global batch of ``batch_size``.
    - ``soft_labels``: for a cache with ``label_smoothing`` (CheXpert's LSR-Ones / LSR-Zeros), the
      uncertain (NaN) entries of those labels become soft labels drawn per image and epoch
      (:meth:`BatchLoader.soft_labels`); the fine-tuning train loader sets it. Without it they
      stay NaN: unknown, masked in the loss and the metrics.
    """
    return BatchLoader(cache_path, split, batch_size=batch_size, shuffle=shuffle, seed=seed, indices=indices,
                       device=device, channels=channels, normalize=normalize, image_size=image_size,
                       resize_mode=resize_mode, augment=augment, drop_last=drop_last,
                       max_memory_mb=max_memory_mb, num_workers=num_workers, world=world, soft_labels=soft_labels,
                       eval_crop=eval_crop, tta=tta)
