"""How the forward pass runs, the same code on every device.

channels_last memory format applies on every device when the config says so (oneDNN's CPU
convolutions are faster in it too: BENCHMARKS.md); bf16 (or fp16) autocast on CUDA, and on the
CPU only when ``amp_on_cpu`` asks for it (worth it on CPUs with AMX-BF16) or a test forces it to
exercise that path. Fine-tuning, supervised and self-supervised pretraining share this policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: autocast dtype (None = full float32) and memory format."""

    autocast_dtype: torch.dtype | None
    channels_last: bool

    def record(self) -> dict[str, Any]:
        """What ran, for metrics.json / meta.json: ``{"autocast": "bfloat16" | "float16" | "float32",
        "channels_last": bool}`` (``train.amp`` alone does not say it: the CPU ignores it by default)."""
        autocast = str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "float32"
        return {"autocast": autocast, "channels_last": self.channels_last}


def precision_for(device: torch.device, training: dict, force_on_cpu: bool = False) -> Precision:
    """The precision policy: ``amp`` autocast on CUDA; on the CPU with ``amp_on_cpu``; channels_last anywhere.

    CPU autocast is opt-in: bf16 convolutions and matmuls are several times faster than float32
    on CPUs with AMX-BF16 (2.2x for ResNet-18 (28) training here: benchmarks/train_throughput.py) but slower on
    CPUs without bf16 units, and a study's numbers should not change with the machine unasked.
    """
    # no entry in grid.DEFAULT_TRAINING on purpose: a new default key would change the spec hash
    # of every existing run and make Snakemake retrain it
    on_cpu = force_on_cpu or bool(training.get("amp_on_cpu", False))
    accelerated = device.type == "cuda" or on_cpu
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[training.get("amp", "none")]
    if device.type == "cpu" and on_cpu and dtype is torch.bfloat16 and not cpu_has_bf16_units():
        log.warning("train.amp_on_cpu: this CPU has no AMX/AVX512-BF16 units; bf16 autocast will "
                    "likely be slower than float32 here (set amp_on_cpu: false)")
    return Precision(
        autocast_dtype=dtype if accelerated else None,
        channels_last=bool(training.get("channels_last", False)),
    )


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16), as PyTorch detects it."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast(device: torch.device, precision: Precision):
    """The autocast context of ``precision`` on ``device`` (a no-op for float32)."""
    return torch.autocast(device.type, dtype=precision.autocast_dtype or torch.float32,
                          enabled=precision.autocast_dtype is not None)
