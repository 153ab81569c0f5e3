"""How each origin fills a block's tensors: the table :func:`medtransfer.init.apply` dispatches through.

``ORIGINS`` maps an origin ("source", "stats", "random", "gabor", "new_head") to a function
``fill(filling, block, keys) -> record entries`` that writes ``filling.state[key]`` for the block's
state-dict ``keys`` (the state starts as the seeded fresh copy, so "random" writes nothing) and
returns what the block's record adds (``reset``, ``gabor``, ``adapted``). Blocks are filled in
order and draw from one generator, so the draw order is the block order.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from medtransfer.errors import ConfigError

from . import gabor

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@dataclass
class Filling:
    """What the fill functions share while one model is initialised.

    ``pos_embed`` is (patch grid, prefix tokens) of a ViT's absolute position embedding, else None;
    ``mismatches`` collects source tensors that do not fit (apply raises on them after every block).
    """

    model: nn.Module
    state: dict[str, torch.Tensor]
    source: dict[str, torch.Tensor] | None
    generator: torch.Generator
    first_conv: str | None = None
    pos_embed: tuple[tuple[int, int], int] | None = None
    params: dict[str, nn.Parameter] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, model: nn.Module, state: dict[str, torch.Tensor], source: dict[str, torch.Tensor] | None,
           generator: torch.Generator) -> Filling:
        prefix = _pos_embed_prefix(model)
        pos_embed = None if prefix is None else (tuple(model.patch_embed.grid_size), prefix)
        return cls(model, state, source, generator, _first_conv_key(model), pos_embed,
                   dict(model.named_parameters()))

    def source_tensor(self, key: str, adapted: list[str]) -> torch.Tensor | None:
        """The source tensor for ``key`` in the target's shape, or None (recorded as a mismatch).

        Two differences are adapted rather than refused (the key is appended to ``adapted``): the
        input conv's channel count (timm's ``adapt_input_conv``) and a ViT's position embedding
        pretrained on another grid (resampled)."""
        target = self.state[key]
        if key not in self.source:
            self.mismatches.append(f"{key}: missing in source, model {tuple(target.shape)}")
            return None
        value = self.source[key]
        if value.shape != target.shape:
            if (
                key == self.first_conv
                and value.ndim == 4
                and value.shape[0] == target.shape[0]
                and value.shape[2:] == target.shape[2:]
            ):
                value = _adapt_input_conv(value, target.shape[1])
                adapted.append(key)
            elif (
                self.pos_embed is not None
                and key == "pos_embed"
                and value.ndim == target.ndim == 3
                and value.shape[-1] == target.shape[-1]
                and _is_square_grid(value.shape[1] - self.pos_embed[1])
            ):
                value = _resample_pos_embed(value, target, *self.pos_embed)
                adapted.append(key)
            else:
                self.mismatches.append(f"{key}: source {tuple(value.shape)}, model {tuple(target.shape)}")
                return None
        return value


def _from_source(filling: Filling, block: str, keys: list[str]) -> dict[str, Any]:
    """Copied bit for bit (BatchNorm running stats included)."""
    adapted: list[str] = []
    for key in keys:
        value = filling.source_tensor(key, adapted)
        if value is not None:
            filling.state[key] = value.detach().to(dtype=filling.state[key].dtype).clone()
    return {"adapted": adapted} if adapted else {}


def _from_stats(filling: Filling, block: str, keys: list[str]) -> dict[str, Any]:
    """Every floating parameter drawn i.i.d. from N(mean, std) of its source tensor; norm layers
    reset to their defaults; other buffers kept from the architecture."""
    adapted: list[str] = []
    reset = 0
    for key in keys:
        norm_default = _norm_default(filling.model, key)
        if norm_default is not None:
            filling.state[key] = norm_default.to(filling.state[key].dtype)
            reset += 1
            continue
        if key not in filling.params or not filling.state[key].is_floating_point():
            reset += 1  # buffers such as attention masks: the architecture's own
            continue
        value = filling.source_tensor(key, adapted)
        if value is None:
            continue
        value = value.detach().double()
        mean = float(value.mean())
        std = float(value.std()) if value.numel() > 1 else 0.0
        draw = torch.empty(value.shape, dtype=torch.float32).normal_(
            mean, std if std > 0 else 1.0, generator=filling.generator
        )
        if std == 0 or not math.isfinite(std):
            draw.fill_(mean)
        filling.state[key] = draw.to(filling.state[key].dtype)
    return {"reset": reset, **({"adapted": adapted} if adapted else {})}


def _random(filling: Filling, block: str, keys: list[str]) -> dict[str, Any]:
    """The architecture's default init: the seeded fresh copy the state starts as."""
    return {}


def _gabor_first_conv(filling: Filling, block: str, keys: list[str]) -> dict[str, Any]:
    """As random, with the first conv's weight replaced by a Gabor filter bank; a source's first
    conv, if it has one, sets the parameter ranges (fitted to its filters) and the scale."""
    key = filling.first_conv
    if key is None or key not in keys:
        raise ConfigError(
            f"init Gabor needs a first conv layer in block {block!r}; "
            f"{type(filling.model).__name__} has none recorded (pretrained_cfg['first_conv'])"
        )
    target, source = filling.state[key], filling.source
    ranges, fitted = None, None
    target_std = float(target.double().std())
    if source is not None and key in source and source[key].ndim == 4:
        ranges, fitted = gabor.ranges_from_filters(source[key])
        target_std = float(source[key].double().std())
    bank, _ = gabor.gabor_bank(tuple(target.shape), filling.generator, ranges, target_std)
    filling.state[key] = bank.to(target.dtype)
    used = {**gabor.default_ranges(target.shape[-1]), **(ranges or {})}
    return {
        "gabor": {
            "tensor": key,
            "ranges": {name: [float(lo), float(hi)] for name, (lo, hi) in used.items()},
            "ranges_from": "source filters" if ranges else "defaults",
            "source_fits": fitted,
            "std": target_std,
        }
    }


#: origin -> fill function; ``new_head`` is the classifier of a transfer init, never from the source.
ORIGINS: dict[str, Callable[[Filling, str, list[str]], dict[str, Any]]] = {
    "source": _from_source,
    "stats": _from_stats,
    "random": _random,
    "gabor": _gabor_first_conv,
    "new_head": _random,
}


def _first_conv_key(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv") if isinstance(cfg, dict) else getattr(cfg, "first_conv", None)
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    return f"{first}.weight" if first else None


def _adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    from timm.models._manipulate import adapt_input_conv

    return adapt_input_conv(in_chans, weight, base_chans=weight.shape[1])


def _pos_embed_prefix(model: nn.Module) -> int | None:
    """Prefix tokens (class, distillation) at the start of a ViT's ``pos_embed``; None if the
    model has no absolute position embedding on a patch grid."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None or not isinstance(getattr(model, "pos_embed", None), torch.Tensor):
        return None
    return 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))


def _resample_pos_embed(value: torch.Tensor, target: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """A ViT position embedding [1, prefix + h*w, D] resampled to the model's patch grid
    [1, prefix + H*W, D] (bicubic, antialiased, prefix rows kept): how a ViT pretrained at 224 px
    is fine-tuned at another input size (Dosovitskiy et al. 2021, §3.2)."""
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(value.float(), new_size=list(grid), num_prefix_tokens=prefix,
                                  interpolation="bicubic", antialias=True).to(target.dtype)


def _is_square_grid(tokens: int) -> bool:
    side = math.isqrt(tokens) if tokens > 0 else 0
    return side > 0 and side * side == tokens


def _norm_default(model: nn.Module, key: str) -> torch.Tensor | None:
    """The freshly reset value of ``key`` if it belongs to a normalisation layer, else None.

    "Reset" is the layer's own ``reset_parameters()``: weight 1, bias 0, running mean 0, var 1,
    whatever the architecture's init does on top (e.g. timm's zero-init of a ResNet's last BN).
    """
    path, _, leaf = key.rpartition(".")
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    if not isinstance(module, _NORM_TYPES):
        return None
    fresh = copy.deepcopy(module)
    if hasattr(fresh, "reset_parameters"):
        fresh.reset_parameters()
    return fresh.state_dict()[leaf].detach().cpu().clone()
