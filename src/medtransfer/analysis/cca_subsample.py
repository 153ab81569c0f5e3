"""Juodelyte et al.'s CCA protocol as an option of the CCA measures (``analysis.cca_subsample``).

Their protocol: spatial positions as data points (≈ 10,000 per layer), 64 random channels, the
mean CCA coefficient, repeated 5 times. Here, on the activations medtransfer.analysis.activations
stores — one array per block, [N, C, h, w] for conv maps average-pooled to at most
``analysis.pool`` × ``analysis.pool`` (tokens [N, D, T, 1]; vectors [N, D]) — a *position* is one
(probe image, h, w) cell of a block's stored map, the data point of the CCA family
(medtransfer.analysis.measures.cca treats channels as neurons). Each repeat draws

- ``channels`` channels of each side at random (all of them when a side has fewer), and
- ``positions`` of the N·h·w positions (all when there are fewer), the *same* positions on both
  sides, so the data points stay paired;

and evaluates the measure on that subset; the value is the mean over ``repeats`` and ``value_sd``
its sample sd. With the defaults of the activations stage (probe of 512 images pooled to 4 × 4:
8,192 positions) every position is used and only the channels are drawn; raise
``analysis.probe_size`` or ``analysis.pool`` for Juodelyte's 10,000. Two blocks with different
stored grids (block × block pairs across depths) have no common positions: the finer map is
average-pooled to the coarser grid first. Draws are seeded by (``seed``, repeat), so every run
and pair sees the same channel and position indices for blocks of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from medtransfer.analysis.measures import MEASURES


def _as_maps(x: np.ndarray) -> np.ndarray:
    """[N, C, h, w] (vectors [N, D] as [N, D, 1, 1])."""
    x = np.asarray(x)
    return x.reshape(*x.shape, 1, 1) if x.ndim == 2 else x


def _common_grid(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average-pool the finer of two [N, C, h, w] maps to the coarser grid."""
    grid = (min(x.shape[2], y.shape[2]), min(x.shape[3], y.shape[3]))

    def pool(a: np.ndarray) -> np.ndarray:
        if a.shape[2:] == grid:
            return a
        return torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(a)).float(),
                                                       grid).numpy()

    return pool(x), pool(y)


def _rows(a: np.ndarray, channels: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The [len(positions), len(channels)] data matrix of a [N, C, h, w] map."""
    n, c, h, w = a.shape
    flat = a.transpose(0, 2, 3, 1).reshape(n * h * w, c)
    return flat[np.ix_(positions, channels)]


def subsampled(measure: Callable[[np.ndarray, np.ndarray], float], channels: int, positions: int, repeats: int,
               seed: int = 0) -> Callable[[np.ndarray, np.ndarray], tuple[float, float]]:
    """``measure`` (a CCA-family function of two activations) under the protocol: a function
    ``(x, y) -> (mean over repeats, sample sd over repeats)``; x, y as stored, [N, ...]."""
    def evaluate(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        mx, my = _common_grid(_as_maps(x), _as_maps(y))
        n_positions = mx.shape[0] * mx.shape[2] * mx.shape[3]
        values = []
        for repeat in range(repeats):
            rng = np.random.default_rng([seed, repeat])
            take = np.sort(rng.permutation(n_positions)[:positions])
            cx = np.sort(rng.permutation(mx.shape[1])[:channels])
            cy = np.sort(rng.permutation(my.shape[1])[:channels])
            values.append(measure(_rows(mx, cx, take), _rows(my, cy, take)))
        values = np.asarray(values, dtype=float)
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    return evaluate


def measure_function(name: str, options: dict | None) -> Callable[[np.ndarray, np.ndarray], tuple[float, float | None]]:
    """The registered measure ``name`` as ``(x, y) -> (value, sd or None)``: subsampled by
    ``options`` ({channels, positions, repeats, seed}) when it is a CCA measure and options are
    given, else the plain measure with no spread."""
    function = MEASURES.get(name, key="analysis.measures")
    if options and MEASURES.traits(name).family == "cca":
        return subsampled(function, int(options["channels"]), int(options["positions"]), int(options["repeats"]),
                          int(options.get("seed", 0)))
    return lambda x, y: (function(x, y), None)
