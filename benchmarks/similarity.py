"""Time medtransfer's similarity measures against textbook numpy float64 implementations.

Baselines (written here from the published formulas, float64 numpy, same process per case):
  * CKA: Gram matrices as in Kornblith et al.'s notebook (x @ x.T, centred n x n Grams, their
    Frobenius inner product; the unbiased centring for the debiased/minibatch variants; the
    median-bandwidth RBF kernel for rbf_cka).
  * CCA family: covariance + inverse square root as in google/svcca (np.cov of [X; Y], rescale,
    pinv, eigh square root, SVD of the whitened cross-covariance); SVCCA = thin SVD of each side
    first; PWCCA = google/svcca's compute_pwcca (the QR of coef_x (acts - mean), PR #9's fix),
    as ``pwcca`` computes it by default; PWCCA paper = the unit canonical variates of the side with
    fewer neurons as weights (``pwcca(x, y, variant="paper")``).

Each (measure, implementation, size) runs in a fresh subprocess with the same BLAS thread count,
on float32 inputs (as activations are stored). It reports wall seconds of one call, and peak
memory: the rise of the process's peak resident set size (Linux VmHWM, reset just before the call
through /proc/self/clear_refs) above its resident size once the inputs exist -- everything the
call allocated, numpy, torch and LAPACK workspaces alike. On CUDA ours is also reported as peak
device memory (torch.cuda.max_memory_allocated). Run from the repository root:

    python benchmarks/similarity.py --device cpu --sizes all --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import warnings

MEASURES = ["linear_cka", "linear_cka_debiased", "rbf_cka", "minibatch_cka", "cca_mean", "svcca", "pwcca",
            "pwcca_paper"]
SIZES = {  # name: (shape of x, shape of y)
    "fc n=2000 d=512": ((2000, 512), (2000, 512)),
    "fc n=10000 d=2048": ((10000, 2048), (10000, 2048)),
    "conv 1000x64x16x16": ((1000, 64, 16, 16), (1000, 64, 16, 16)),
}
SMALL = ["fc n=2000 d=512"]
MINIBATCH = 256


# ------------------------------------------------------------------------------------------ data


def make_data(size: str, seed: int = 0):
    """Correlated float32 activations: y mixes x's neurons (decaying spectrum) and adds noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape_x, shape_y = SIZES[size]
    channels = shape_x[1]
    x = rng.standard_normal(shape_x, dtype=np.float32)
    x *= (1.0 / np.sqrt(np.arange(1, channels + 1, dtype=np.float32))).reshape((1, -1) + (1,) * (len(shape_x) - 2))
    mixing = rng.standard_normal((channels, shape_y[1]), dtype=np.float32) / np.float32(np.sqrt(channels))
    if len(shape_x) == 2:
        y = x @ mixing
    else:
        y = np.einsum("nchw,cd->ndhw", x, mixing, optimize=True).astype(np.float32)
    y += rng.standard_normal(shape_y, dtype=np.float32)
    return x, y


# ------------------------------------------------------------------------------------------ textbook baselines


def _np():
    import numpy as np

    return np


def gram_linear(x):
    return x @ x.T


def gram_rbf(x, threshold=0.8):
    np = _np()
    dot = x @ x.T
    sq_norms = np.diag(dot)
    sq_distances = -2 * dot + sq_norms[:, None] + sq_norms[None, :]
    return np.exp(-sq_distances / (2 * threshold**2 * np.median(sq_distances)))


def center_gram(gram, unbiased=False):
    np = _np()
    gram = gram.copy()
    if unbiased:
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def cka_from_grams(gram_x, gram_y, debiased=False):
    np = _np()
    gram_x, gram_y = center_gram(gram_x, debiased), center_gram(gram_y, debiased)
    return gram_x.ravel() @ gram_y.ravel() / (np.linalg.norm(gram_x) * np.linalg.norm(gram_y))


def flat64(a):
    return a.reshape(a.shape[0], -1).astype(_np().float64)


def neurons64(a):
    """(neurons, data points) as google/svcca takes them; conv channels x (n*h*w)."""
    np = _np()
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1), dtype=np.float64)
    return a.T.astype(np.float64)


def matrix_sqrt_psd(m):
    np = _np()
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def cca_covariance(acts1, acts2):
    """google/svcca-style CCA on (neurons, data points): correlations, whitening, centred acts."""
    np = _np()
    nx = acts1.shape[0]
    cov = np.cov(acts1, acts2)
    sxx, sxy, syy = cov[:nx, :nx], cov[:nx, nx:], cov[nx:, nx:]
    xmax, ymax = np.max(np.abs(sxx)), np.max(np.abs(syy))
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)
    inv_sqrt_xx = matrix_sqrt_psd(np.linalg.pinv(sxx))
    inv_sqrt_yy = matrix_sqrt_psd(np.linalg.pinv(syy))
    u, s, vh = np.linalg.svd(inv_sqrt_xx @ sxy @ inv_sqrt_yy)
    return s, u, vh, inv_sqrt_xx, inv_sqrt_yy


def baseline_cca_mean(x, y):
    s = cca_covariance(neurons64(x), neurons64(y))[0]
    return float(s[: min(len(s), x.shape[1], y.shape[1])].mean())


def baseline_svcca(x, y, keep=0.99):
    np = _np()
    reduced = []
    for a in (neurons64(x), neurons64(y)):
        a -= a.mean(1, keepdims=True)
        _, s, vh = np.linalg.svd(a, full_matrices=False)
        energy = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(energy, keep)) + 1
        reduced.append(s[:k, None] * vh[:k])
    s = cca_covariance(*reduced)[0]
    return float(s[: min(r.shape[0] for r in reduced)].mean())


def baseline_pwcca(x, y):
    """google/svcca's compute_pwcca (epsilon 0) on the centred activations, its PR #9 fix applied."""
    np = _np()
    acts1, acts2 = neurons64(x), neurons64(y)
    acts1 -= acts1.mean(1, keepdims=True)
    acts2 -= acts2.mean(1, keepdims=True)
    s, u, vh, _, _ = cca_covariance(acts1, acts2)
    if acts1.shape[0] <= acts2.shape[0]:
        acts, dirns = acts1, u.T @ acts1
    else:
        acts, dirns = acts2, vh @ acts2
    p, _ = np.linalg.qr(dirns.T)
    weights = np.abs(p.T @ acts.T).sum(1)
    weights /= weights.sum()
    return float(np.sum(weights * s))


def baseline_pwcca_paper(x, y):
    np = _np()
    acts1, acts2 = neurons64(x), neurons64(y)
    s, u, vh, inv_sqrt_xx, inv_sqrt_yy = cca_covariance(acts1, acts2)
    m = min(acts1.shape[0], acts2.shape[0])
    if acts1.shape[0] <= acts2.shape[0]:
        acts, coefficients = acts1 - acts1.mean(1, keepdims=True), u.T[:m] @ inv_sqrt_xx
    else:
        acts, coefficients = acts2 - acts2.mean(1, keepdims=True), vh[:m] @ inv_sqrt_yy
    variates = coefficients @ acts  # canonical variates, (m, data points)
    variates /= np.linalg.norm(variates, axis=1, keepdims=True)
    weights = np.abs(variates @ acts.T).sum(1)
    return float(np.sum(weights * s[:m]) / np.sum(weights))


def baseline_minibatch_cka(x, y, batch=MINIBATCH):
    np = _np()
    sums = np.zeros(3)
    for i in range(0, x.shape[0], batch):
        gx = center_gram(gram_linear(flat64(x[i:i + batch])), True)
        gy = center_gram(gram_linear(flat64(y[i:i + batch])), True)
        n = gx.shape[0]
        sums += np.array([gx.ravel() @ gy.ravel(), gx.ravel() @ gx.ravel(), gy.ravel() @ gy.ravel()]) / (n * (n - 3))
    return float(sums[0] / np.sqrt(sums[1] * sums[2]))


BASELINES = {
    "linear_cka": lambda x, y: cka_from_grams(gram_linear(flat64(x)), gram_linear(flat64(y))),
    "linear_cka_debiased": lambda x, y: cka_from_grams(gram_linear(flat64(x)), gram_linear(flat64(y)), True),
    "rbf_cka": lambda x, y: cka_from_grams(gram_rbf(flat64(x)), gram_rbf(flat64(y))),
    "minibatch_cka": baseline_minibatch_cka,
    "cca_mean": baseline_cca_mean,
    "svcca": baseline_svcca,
    "pwcca": baseline_pwcca,
    "pwcca_paper": baseline_pwcca_paper,
}


def ours(measure: str):
    from medtransfer.analysis.measures import MEASURES, cca, cka

    if measure == "minibatch_cka":
        return lambda x, y: cka.minibatch_cka(x, y, MINIBATCH)
    if measure == "pwcca_paper":
        return lambda x, y: cca.pwcca(x, y, variant="paper")
    return MEASURES.get(measure)


# ------------------------------------------------------------------------------------------ one measurement


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakRSS:
    """Peak resident memory above the level at start (VmHWM reset; psutil sampling elsewhere)."""

    def __enter__(self):
        import psutil

        self.process = psutil.Process()
        self.start = self.process.memory_info().rss
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            _status_kib("VmHWM")
            self.sampler = None
        except OSError:
            self.samples, self.stop = [self.start], threading.Event()
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.005):
            self.samples.append(self.process.memory_info().rss)

    def __exit__(self, *exc):
        if self.sampler is None:
            peak = _status_kib("VmHWM") * 1024
        else:
            self.stop.set()
            self.sampler.join()
            peak = max(self.samples + [self.process.memory_info().rss])
        self.peak = max(0, peak - self.start)


def worker(impl: str, measure: str, size: str, device: str, threads: int) -> dict:
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    warnings.simplefilter("ignore")  # the inflation warning at n=2000, d=512 is expected here
    fn = BASELINES[measure] if impl == "numpy" else ours(measure)
    tiny = np.random.default_rng(1).standard_normal((64, 8), dtype=np.float32)
    fn(tiny, tiny + 0.1 * tiny[::-1])  # load libraries and kernels outside the measurement
    x, y = make_data(size)
    if impl == "ours" and device == "cuda":
        x, y = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as memory:
        start, cpu_start = time.perf_counter(), time.process_time()
        value = fn(x, y)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    result = {"impl": impl, "measure": measure, "size": size, "seconds": seconds, "cpu_seconds": cpu_seconds,
              "value": float(value), "peak_mib": memory.peak / 2**20}
    if impl == "ours" and device == "cuda":
        result["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def run_case(impl: str, measure: str, size: str, device: str, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", impl, measure, size, "--device", device, "--threads", str(threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} {measure} {size} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--sizes", choices=["small", "all"], default="small")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/torch threads for both implementations")
    parser.add_argument("--measures", default=",".join(MEASURES), help="comma-separated subset")
    parser.add_argument("--skip-baseline", default="", help="comma-separated measures to time without baseline")
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "MEASURE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.device, args.threads)))
        return
    sizes = SMALL if args.sizes == "small" else list(SIZES)
    skip = set(filter(None, args.skip_baseline.split(",")))
    # On a shared CPU other processes inflate wall time; the CPU time of these single-call runs is
    # what they cost, so the speed-up uses it (wall time on CUDA, where the CPU mostly waits).
    basis = "seconds" if args.device == "cuda" else "cpu_seconds"
    print(f"threads={args.threads} device={args.device}; speed-up = numpy / ours "
          f"{'wall' if basis == 'seconds' else 'CPU'} time")
    print("| size | measure | ours wall s | ours CPU s | numpy wall s | numpy CPU s | speed-up "
          "| ours peak MiB | numpy peak MiB | abs. difference |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        for measure in args.measures.split(","):
            mine = run_case("ours", measure, size, args.device, args.threads)
            peak = f"{mine['peak_mib']:.0f}"
            if "peak_device_mib" in mine:
                peak += f" (GPU {mine['peak_device_mib']:.0f})"
            row = f"| {size} | {measure} | {mine['seconds']:.2f} | {mine['cpu_seconds']:.2f} | "
            if measure in skip:
                print(row + f"- | - | - | {peak} | - | - |", flush=True)
                continue
            base = run_case("numpy", measure, size, args.device, args.threads)
            print(row + f"{base['seconds']:.2f} | {base['cpu_seconds']:.2f} | {base[basis] / mine[basis]:.1f}x "
                  f"| {peak} | {base['peak_mib']:.0f} | {abs(mine['value'] - base['value']):.1e} |", flush=True)

if __name__ == "__main__":
    main()
