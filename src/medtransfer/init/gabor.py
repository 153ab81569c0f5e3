"""Synthetic Gabor filters for the first conv layer (Raghu et al. 2019, §6).

A filter is the real Gabor function on the kernel grid (pixel units, origin at the kernel centre)

    g(x, y) = exp(-(x'² + γ² y'²) / (2 σ²)) · cos(2π f x' + ψ),
    x' = x cos θ + y sin θ,   y' = -x sin θ + y cos θ,

with orientation θ, frequency f (cycles/pixel), phase ψ, envelope scale σ (pixels) and aspect γ.

Parameter ranges. θ ~ U[0, π) and ψ ~ U[0, 2π) (pretrained first layers cover all orientations
and both even and odd filters). f, σ and γ are drawn from ranges that match pretrained first-layer
filters: when a source state dict is given, they are measured on it — a Gabor is fitted to each
source filter (channel mean) and the 5–95 % range of the good fits (R² >= 0.7) is used; without a
source, or with fewer than 8 good fits, the defaults below apply. The defaults are scaled to the
kernel size K and follow what is typical of ImageNet conv1 filters (7×7 ResNet, 11×11 AlexNet):
an envelope of about a sixth to a third of the kernel, wavelengths from about 2.5 px up to the
kernel size, mildly elongated envelopes. They are our reading of those filters, not a
measurement made here (this machine has no ImageNet weights).

Every input channel gets the same spatial filter (pretrained conv1 filters are dominated by
luminance structure); the whole bank is then scaled so its standard deviation equals that of the
weights it replaces (the source's first conv if given, else the architecture's random init), so the
first layer's output scale matches what the rest of the network was initialised for.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def default_ranges(kernel_size: int) -> dict[str, tuple[float, float]]:
    """Default (low, high) ranges for a K×K kernel; see the module docstring.

    Keys: "frequency" in cycles/pixel, "sigma" as a fraction of K, "gamma" the envelope aspect
    ratio; θ and ψ are always drawn over their full circle.
    """
    k = float(kernel_size)
    f_low = min(1.0 / k, 0.3)
    return {"frequency": (f_low, 0.4), "sigma": (1.0 / 6.0, 1.0 / 3.0), "gamma": (0.5, 1.0)}


def gabor_kernel(
    size: int, theta: float, frequency: float, phase: float, sigma: float, gamma: float
) -> torch.Tensor:
    """One Gabor filter on a ``size``×``size`` grid (float64 [size, size]); ``sigma`` in pixels."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    y, x = torch.meshgrid(r, r, indexing="ij")
    xr = x * math.cos(theta) + y * math.sin(theta)
    yr = -x * math.sin(theta) + y * math.cos(theta)
    envelope = torch.exp(-(xr**2 + gamma**2 * yr**2) / (2.0 * sigma**2))
    return envelope * torch.cos(2.0 * math.pi * frequency * xr + phase)


def gabor_bank(
    shape: tuple[int, ...],
    generator: torch.Generator,
    ranges: dict[str, tuple[float, float]] | None = None,
    target_std: float | None = None,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Filters for a conv weight of ``shape`` [O, I, K, K] and the parameters drawn for each.

    Returns (weight float32 [O, I, K, K], one dict of θ, f, ψ, σ (px), γ per output filter).
    """
    out_ch, in_ch, kh, kw = shape
    if kh != kw:
        raise ValueError(f"Gabor init needs square kernels, got {kh}×{kw}")
    ranges = {**default_ranges(kh), **(ranges or {})}

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))

    filters, params = [], []
    for _ in range(out_ch):
        p = {
            "theta": uniform(0.0, math.pi),
            "frequency": uniform(*ranges["frequency"]),
            "phase": uniform(0.0, 2.0 * math.pi),
            "sigma": uniform(*ranges["sigma"]) * kh,
            "gamma": uniform(*ranges["gamma"]),
        }
        params.append(p)
        filters.append(gabor_kernel(kh, **p))
    bank = torch.stack(filters)[:, None].expand(out_ch, in_ch, kh, kw).clone()
    if target_std is not None and target_std > 0:
        bank = bank * (target_std / bank.std().clamp_min(1e-12))
    return bank.float(), params


def _gabor_model(coords: np.ndarray, amp, theta, freq, phase, sigma, gamma, x0, y0, offset):
    x, y = coords[0] - x0, coords[1] - y0
    xr = x * np.cos(theta) + y * np.sin(theta)
    yr = -x * np.sin(theta) + y * np.cos(theta)
    env = np.exp(-(xr**2 + gamma**2 * yr**2) / (2.0 * sigma**2))
    return amp * env * np.cos(2.0 * np.pi * freq * xr + phase) + offset


def fit_gabor(filter2d: np.ndarray | torch.Tensor) -> tuple[dict[str, float], float]:
    """Least-squares Gabor fit (free centre and offset) of one K×K filter → (params, R²).

    Starting points come from the filter's Fourier peak (orientation, frequency) and four phases.
    Params are normalised to f >= 0, θ in [0, π), σ > 0, γ > 0; σ in pixels.
    """
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    w = np.asarray(filter2d, dtype=np.float64)
    k = w.shape[0]
    r = np.arange(k) - (k - 1) / 2.0
    yy, xx = np.meshgrid(r, r, indexing="ij")
    coords = np.stack([xx.ravel(), yy.ravel()])
    target = w.ravel()
    total = float(((target - target.mean()) ** 2).sum())
    if total <= 0:
        return {}, 0.0

    n = 64
    spec = np.abs(np.fft.fft2(w - w.mean(), s=(n, n)))
    iy, ix = np.unravel_index(np.argmax(spec), spec.shape)
    fy = (iy if iy < n // 2 else iy - n) / n
    fx = (ix if ix < n // 2 else ix - n) / n
    f0 = max(math.hypot(fx, fy), 0.02)
    th0 = math.atan2(fy, fx)
    amp0 = float(np.abs(w).max())
    best, best_r2 = None, -np.inf
    for ph0 in (0.0, math.pi / 2, math.pi, 3 * math.pi / 2):
        p0 = [amp0, th0, f0, ph0, k / 5.0, 1.0, 0.0, 0.0, 0.0]
        bounds = (
            [-np.inf, -2 * np.pi, 0.0, -4 * np.pi, 0.3, 0.2, -k / 2, -k / 2, -np.inf],
            [np.inf, 2 * np.pi, 0.5, 4 * np.pi, 2.0 * k, 5.0, k / 2, k / 2, np.inf],
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, _ = curve_fit(
                    _gabor_model, coords, target, p0=p0, bounds=bounds, max_nfev=400
                )
        except (RuntimeError, ValueError):
            continue
        resid = float(((_gabor_model(coords, *popt) - target) ** 2).sum())
        r2 = 1.0 - resid / total
        if r2 > best_r2:
            best, best_r2 = popt, r2
    if best is None:
        return {}, 0.0
    amp, theta, freq, phase, sigma, gamma = (float(v) for v in best[:6])
    if amp < 0:
        amp, phase = -amp, phase + math.pi
    theta = theta % (2 * math.pi)
    if theta >= math.pi:  # (θ + π, ψ) draws the same filter as (θ, -ψ)
        theta, phase = theta - math.pi, -phase
    params = {
        "theta": theta,
        "frequency": freq,
        "phase": phase % (2 * math.pi),
        "sigma": sigma,
        "gamma": gamma,
        "amplitude": amp,
    }
    return params, float(best_r2)


#: Smallest kernel on which a 9-parameter Gabor fit means anything (5×5 = 25 values).
MIN_FIT_KERNEL = 5


def ranges_from_filters(
    weight: torch.Tensor, min_r2: float = 0.7, min_fits: int = 8
) -> tuple[dict[str, tuple[float, float]] | None, dict[str, Any]]:
    """Parameter ranges measured on pretrained first-layer filters ``weight`` [O, I, K, K].

    Fits a Gabor to each filter's channel mean; returns (ranges or None if fewer than
    ``min_fits`` filters fit with R² >= ``min_r2``, a summary for the init record).
    """
    k = weight.shape[-1]
    summary: dict[str, Any] = {"filters": int(weight.shape[0]), "good_fits": 0}
    if k < MIN_FIT_KERNEL:
        summary["note"] = f"{k}x{k} kernels are too small to fit a Gabor (9 parameters)"
        return None, summary
    fits = []
    for f in weight.detach().double().mean(dim=1).cpu().numpy():
        params, r2 = fit_gabor(f)
        if params and r2 >= min_r2:
            fits.append(params)
    summary["good_fits"] = len(fits)
    if len(fits) < min_fits:
        return None, summary

    def span(values: list[float]) -> tuple[float, float]:
        lo, hi = np.percentile(values, [5, 95])
        return float(lo), float(max(hi, lo + 1e-6))

    ranges = {
        "frequency": span([p["frequency"] for p in fits]),
        "sigma": span([min(p["sigma"], k) / k for p in fits]),
        "gamma": span([min(p["gamma"], 3.0) for p in fits]),
    }
    return ranges, summary
