"""The settings of training augmentation and evaluation views (``train.augment``,
``train.eval_crop``, ``train.tta``): their names, defaults and checks.

Torch-free: the planner checks a config with it when the Snakefile loads, and the loader
(:mod:`medtransfer.data.augment`, :mod:`medtransfer.data.loader`) reads the settings it returns.
Where each key comes from (docs/configuration.md, "Augmentation and evaluation views"):

- ``hflip``, ``vflip``: probabilities (``true`` = 0.5, as before they were probabilities).
- ``crop_padding``: zero-pad by this many pixels and crop back at a random offset (CIFAR).
- ``random_resized_crop``: torchvision's RandomResizedCrop (``scale``, ``ratio``; Hosseinzadeh
  Taher et al. with its defaults, Matsoukas et al. with ``scale: [0.8, 1.2]``).
- ``rotation``: degrees, uniform in [-r, r] (HT: 7, Juodelyte et al.: 10).
- ``affine``: Keras ImageDataGenerator's shift, shear and zoom ranges (Juodelyte et al.).
- ``color_jitter``: torchvision's ColorJitter applied with probability ``p`` (Matsoukas et al.).
- ``grayscale``: torchvision's RandomGrayscale probability (Matsoukas et al.).
- ``fill``: what the rotation, affine and random-resized-crop warps read outside the image:
  ``zeros`` (torchvision) or ``nearest`` (the border pixel; Keras ``fill_mode='nearest'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from medtransfer.errors import ConfigError

#: ``train.augment`` keys, in the order the loader applies them
AUGMENT_KEYS = ("crop_padding", "random_resized_crop", "vflip", "hflip", "rotation", "affine", "color_jitter",
                "grayscale", "fill")
#: torchvision's RandomResizedCrop defaults (``random_resized_crop: true``)
RRC_DEFAULTS: dict[str, tuple[float, float]] = {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)}
AFFINE_KEYS = ("translate", "shear", "scale")
COLOR_JITTER_KEYS = ("brightness", "contrast", "saturation", "hue", "p")
FILL_MODES = ("zeros", "nearest")
#: ``train.tta``: the views of each evaluation image, and how many
TTA_VIEWS: dict[str, int] = {"tencrop": 10}


def _number(value: Any, key: str, what: str, low: float = 0.0, high: float = math.inf,
            high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            low <= value and (value < high if high_open else value <= high)):
        raise ConfigError(f"config key {key}: {value!r}; give {what}")
    return float(value)


def _probability(value: Any, key: str, allow_bool: bool = False) -> float:
    if allow_bool and isinstance(value, bool):
        return 0.5 if value else 0.0
    hint = " (true = 0.5, false = 0)" if allow_bool else ""
    return _number(value, key, f"a probability in [0, 1]{hint}", 0.0, 1.0)


def _mapping(value: Any, key: str, allowed: tuple[str, ...]) -> Mapping:
    if not isinstance(value, Mapping):
        raise ConfigError(f"config key {key}: {value!r}; give a mapping with keys {', '.join(allowed)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(f"config key {key}: unknown keys {unknown}; allowed: {', '.join(allowed)}")
    return value


def _range(value: Any, key: str, positive: bool = True) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
            or value[0] > value[1] or (positive and value[0] <= 0)):
        raise ConfigError(f"config key {key}: {value!r}; give [low, high] with 0 < low <= high")
    return float(value[0]), float(value[1])


def resolve_augment(augment: Mapping[str, Any] | None, key: str = "train.augment") -> dict[str, Any]:
    """``train.augment`` checked and normalised: every key of :data:`AUGMENT_KEYS` present, off
    where the config leaves it out (probability 0, ``None``, 0 pixels or degrees).

    A ConfigError names the key, the bad value and what is allowed.
    """
    if augment is None:
        augment = {}
    if not isinstance(augment, Mapping):
        raise ConfigError(f"config key {key}: {augment!r}; give a mapping with keys {', '.join(AUGMENT_KEYS)}")
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise ConfigError(f"config key {key}: unknown keys {unknown}; allowed: {', '.join(AUGMENT_KEYS)}")
    settings: dict[str, Any] = {}
    padding = augment.get("crop_padding") or 0
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ConfigError(f"config key {key}.crop_padding: {padding!r}; give an integer >= 0 (pixels of the "
                          "cached image)")
    settings["crop_padding"] = padding
    settings["hflip"] = _probability(augment.get("hflip", False), f"{key}.hflip", allow_bool=True)
    settings["vflip"] = _probability(augment.get("vflip", False), f"{key}.vflip", allow_bool=True)

    rrc = augment.get("random_resized_crop")
    if rrc is None or rrc is False:
        settings["random_resized_crop"] = None
    else:
        rrc = {} if rrc is True else _mapping(rrc, f"{key}.random_resized_crop", ("scale", "ratio"))
        settings["random_resized_crop"] = {
            name: _range(rrc[name], f"{key}.random_resized_crop.{name}") if name in rrc else default
            for name, default in RRC_DEFAULTS.items()}

    settings["rotation"] = _number(augment.get("rotation") or 0, f"{key}.rotation",
                                   "degrees in [0, 180] (uniform in [-r, r])", 0.0, 180.0)
    affine = augment.get("affine")
    if affine is None:
        settings["affine"] = None
    else:
        affine = _mapping(affine, f"{key}.affine", AFFINE_KEYS)
        settings["affine"] = {
            "translate": _number(affine.get("translate", 0), f"{key}.affine.translate",
                                 "a fraction of the image size in [0, 1)", 0.0, 1.0, high_open=True),
            "shear": _number(affine.get("shear", 0), f"{key}.affine.shear", "degrees in [0, 90)", 0.0, 90.0,
                             high_open=True),
            "scale": _number(affine.get("scale", 0), f"{key}.affine.scale",
                             "a zoom range in [0, 1) (factors uniform in [1 - z, 1 + z])", 0.0, 1.0,
                             high_open=True)}

    jitter = augment.get("color_jitter")
    if jitter is None:
        settings["color_jitter"] = None
    else:
        jitter = _mapping(jitter, f"{key}.color_jitter", COLOR_JITTER_KEYS)
        settings["color_jitter"] = {
            **{name: _number(jitter.get(name, 0), f"{key}.color_jitter.{name}", "a number >= 0")
               for name in ("brightness", "contrast", "saturation")},
            "hue": _number(jitter.get("hue", 0), f"{key}.color_jitter.hue", "a fraction of a turn in [0, 0.5]",
                           0.0, 0.5),
            "p": _probability(jitter.get("p", 1.0), f"{key}.color_jitter.p")}
    settings["grayscale"] = _probability(augment.get("grayscale", 0), f"{key}.grayscale")
    fill = augment.get("fill", "zeros")
    if fill not in FILL_MODES:
        raise ConfigError(f"config key {key}.fill: {fill!r}; allowed: {', '.join(FILL_MODES)}")
    settings["fill"] = fill
    return settings


def check_evaluation(training: Mapping[str, Any], key: str = "train") -> tuple[float | None, str | None]:
    """``(eval_crop, tta)`` of a training section, checked: ``eval_crop`` in (0, 1] or absent,
    ``tta`` one of :data:`TTA_VIEWS` or absent."""
    eval_crop = training.get("eval_crop")
    if eval_crop is not None:
        eval_crop = _number(eval_crop, f"{key}.eval_crop", "a fraction in (0, 1] (e.g. 0.875: resize to "
                            "image_size / 0.875, then centre-crop image_size)", 0.0, 1.0)
        if eval_crop == 0:
            raise ConfigError(f"config key {key}.eval_crop: 0; give a fraction in (0, 1]")
    tta = training.get("tta")
    if tta is not None and tta not in TTA_VIEWS:
        raise ConfigError(f"config key {key}.tta: {tta!r}; allowed: {', '.join(TTA_VIEWS)} (or leave it out)")
    return eval_crop, tta


def eval_base_size(size: int, eval_crop: float | None) -> int:
    """The side an evaluation image is resized to before its centre crop (or ten crops) of
    ``size``: ``floor(size / eval_crop)`` as timm does (224 / 0.875 = 256)."""
    return math.floor(size / eval_crop + 1e-9) if eval_crop else int(size)


def check_training_views(training: Mapping[str, Any], key: str = "train") -> None:
    """Plan-time check of a training section's ``augment``, ``eval_crop`` and ``tta``."""
    resolve_augment(training.get("augment"), f"{key}.augment")
    check_evaluation(training, key)
