"""Initialisations: how a network starts before fine-tuning, decided per canonical block.

Public API::

    INITS: Registry                      # "RI", "WT", "ST", "WT-ST", "WT-RI", "Gabor"
    apply(model, init, source=None, *, k=None, seed=0, **options) -> dict
    create_kwargs(init, *, k=None, **options) -> dict    # extra create() kwargs an init needs

Every init starts from a fresh copy of the model's own architecture drawn under ``seed``
(:func:`medtransfer.models.rebuild`), so whatever is "random" is the architecture's default init
and the same seed gives bit-identical weights. An init is a registered function that assigns
each canonical body block an origin; :func:`apply` then fills the blocks:

``source``   copied bit-for-bit from the source state dict (BatchNorm running stats included; an
             input conv with another channel count is adapted like timm's ``adapt_input_conv``)
``stats``    every floating parameter redrawn i.i.d. from N(mean, std) of the source tensor
             (Raghu's "Mean Var", Matsoukas' "stats transfer"; a one-element tensor keeps its
             value). Normalisation layers (BatchNorm, LayerNorm, GroupNorm) are reset to their
             defaults — weight 1, bias 0, BatchNorm running mean 0 / var 1 — as Matsoukas et al.
             do; their affine parameters are a per-channel gain/shift, not a weight distribution
             to mimic, and reusing BN statistics computed for other weights would be wrong.
             (The layer's own ``reset_parameters()``, so also where the architecture's init
             differs, such as timm's zero-init of the last BN in each ResNet block.) Non-parameter buffers (e.g.
             attention masks) keep the architecture's values.
``random``   the architecture's default init (from the seeded fresh copy)
``gabor``    as random, with the first conv's weight replaced by Gabor filters (see ``gabor.py``)
``new_head`` the classifier of a transfer init: random, never taken from the source

Inits (config names): ``RI`` all random; ``WT`` all source, new head; ``ST`` all stats, new head;
``WT-ST`` (k) blocks[:k] source, the rest stats; ``WT-RI`` (k) blocks[:k] source, the rest random,
with option ``slim: factor`` for a model built with ``create(..., **create_kwargs("WT-RI", k=k,
slim=factor))`` (blocks >= k rebuilt with ``factor`` × channels); ``Gabor`` random with a Gabor
first conv (a ``source``, if given, sets the filter parameter ranges and scale).
``k`` counts canonical blocks from the input (0 <= k <= number of blocks before the head).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medtransfer.errors import ConfigError, WeightsError
from medtransfer.models import HEAD, block_keys, rebuild
from medtransfer.models.checkpoints import describe as describe_checkpoint
from medtransfer.models.checkpoints import fit_checkpoint
from medtransfer.models.factory import CREATE_ARGS_ATTR, init_create_options
from medtransfer.registry import Registry

from . import gabor

#: An init maps (body block names, k) to one origin per body block; the head is handled by apply.
InitPlan = Callable[[list[str], "int | None"], list[str]]

INITS: Registry = Registry("initialisation")

_NEEDS_SOURCE = {"WT", "ST", "WT-ST", "WT-RI"}
_NEEDS_K = {"WT-ST", "WT-RI"}
_OPTIONS: dict[str, set[str]] = {"WT-RI": {"slim"}}
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@INITS.register("RI")
def _ri(names: list[str], k: int | None) -> list[str]:
    return ["random"] * len(names)


@INITS.register("WT")
def _wt(names: list[str], k: int | None) -> list[str]:
    return ["source"] * len(names)


@INITS.register("ST")
def _st(names: list[str], k: int | None) -> list[str]:
    return ["stats"] * len(names)


@INITS.register("WT-ST")
def _wt_st(names: list[str], k: int | None) -> list[str]:
    assert k is not None
    return ["source" if i < k else "stats" for i in range(len(names))]


@INITS.register("WT-RI")
def _wt_ri(names: list[str], k: int | None) -> list[str]:
    assert k is not None
    return ["source" if i < k else "random" for i in range(len(names))]


@INITS.register("Gabor")
def _gabor(names: list[str], k: int | None) -> list[str]:
    return ["gabor"] + ["random"] * (len(names) - 1)


def create_kwargs(init: str, *, k: int | None = None, **options: Any) -> dict[str, Any]:
    """Extra ``medtransfer.models.create`` keyword arguments the model for ``init`` needs.

    Only ``WT-RI`` with ``slim`` needs any: ``{"slim_from": k, "slim_factor": slim}``.
    """
    return init_create_options({"name": init, "k": k, "slim": options.get("slim")})


def _first_conv_key(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv") if isinstance(cfg, dict) else getattr(cfg, "first_conv", None)
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    return f"{first}.weight" if first else None


def _check_args(model: nn.Module, init: str, source: Any, k: Any, options: dict[str, Any]) -> None:
    if init not in INITS:
        raise ConfigError(f"unknown initialisation {init!r}; allowed: {', '.join(INITS.names())}")
    if init in _NEEDS_SOURCE and source is None:
        raise ConfigError(
            f"init {init} needs a weight source (e.g. {{{init}: <source name>}} in study.inits)"
        )
    if init in _NEEDS_K:
        if k is None:
            raise ConfigError(
                f"init {init} needs k, the number of transferred blocks (key k in study.inits)"
            )
        if isinstance(k, bool) or not isinstance(k, int):
            raise ConfigError(
                f"init {init}: k must be one integer here "
                f"(a list is expanded by the study grid), got {k!r}"
            )
    elif k is not None:
        raise ConfigError(f"k applies only to {', '.join(sorted(_NEEDS_K))}, not to init {init}")
    unknown = set(options) - _OPTIONS.get(init, set())
    if unknown:
        raise ConfigError(
            f"init {init} takes no option(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(_OPTIONS.get(init, set()))) or 'none'}"
        )
    if options.get("slim") is not None:
        args = getattr(model, CREATE_ARGS_ATTR, {}) or {}
        want = create_kwargs(init, k=k, **options)
        have = {key: args.get(key) for key in want}
        if have != want:
            raise ConfigError(
                f"init WT-RI with slim={options['slim']} and k={k} needs a model built with "
                f"create(..., **create_kwargs('WT-RI', k={k}, slim={options['slim']})) = {want}; "
                f"this model has {have}"
            )


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


def _source_tensor(
    key: str,
    target: torch.Tensor,
    source: dict[str, torch.Tensor],
    first_conv: str | None,
    mismatches: list[str],
    adapted: list[str],
    pos_embed: tuple[tuple[int, int], int] | None = None,
) -> torch.Tensor | None:
    """The source tensor for ``key`` in the target's shape, or None (recorded as a mismatch).

    Two differences are adapted rather than refused: the input conv's channel count (timm's
    ``adapt_input_conv``) and, given ``pos_embed`` = (patch grid, prefix tokens), a ViT's
    position embedding pretrained on another grid (resampled)."""
    if key not in source:
        mismatches.append(f"{key}: missing in source, model {tuple(target.shape)}")
        return None
    value = source[key]
    if value.shape != target.shape:
        if (
            key == first_conv
            and value.ndim == 4
            and value.shape[0] == target.shape[0]
            and value.shape[2:] == target.shape[2:]
        ):
            value = _adapt_input_conv(value, target.shape[1])
            adapted.append(key)
        elif (
            pos_embed is not None
            and key == "pos_embed"
            and value.ndim == target.ndim == 3
            and value.shape[-1] == target.shape[-1]
            and _is_square_grid(value.shape[1] - pos_embed[1])
        ):
            value = _resample_pos_embed(value, target, *pos_embed)
            adapted.append(key)
        else:
            mismatches.append(f"{key}: source {tuple(value.shape)}, model {tuple(target.shape)}")
            return None
    return value


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


def apply(
    model: nn.Module,
    init: str,
    source: dict[str, torch.Tensor] | None = None,
    *,
    k: int | None = None,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Initialise ``model`` (built by ``medtransfer.models.create``) in place; return the record.

    ``source`` is a state dict of the same architecture (``load_source_state_dict``); its
    classifier may have another shape (the head is always new) and its input conv another
    channel count (adapted) and a ViT's ``pos_embed`` another patch grid (resampled to the model's,
    e.g. ImageNet weights at 224 px into a DeiT built with ``img_size=112``). Any other missing key or shape mismatch raises ``WeightsError``.

    Returns ``{"init", "k", "seed", "options", "blocks": [{"block", "origin", "tensors", ...}]}``,
    one entry per canonical block in order (``tensors`` = state-dict entries in the block; stats
    blocks add ``reset``, the entries reset to defaults or kept from the architecture; a block
    whose input conv was adapted adds ``adapted``; Gabor adds the parameter ``ranges`` used).
    """
    _check_args(model, init, source, k, options)
    checkpoint = None
    if source is not None:  # published SSL checkpoints: prefixes, wrappers, heads (models.checkpoints)
        source, checkpoint = fit_checkpoint(source, model)
    keys_by_block = block_keys(model)
    body = [name for name in keys_by_block if name != HEAD]
    if k is not None and not 0 <= k <= len(body):
        raise ConfigError(
            f"init {init}: k={k} is out of range; this architecture has {len(body)} blocks "
            f"before the head ({body[0]} … {body[-1]}), so 0 <= k <= {len(body)}"
        )
    origins = INITS.get(init)(body, k)
    head_origin = "new_head" if init in _NEEDS_SOURCE else "random"

    fresh = rebuild(model, seed).state_dict()
    state = {key: value.detach().clone() for key, value in fresh.items()}
    params = dict(model.named_parameters())
    first_conv = _first_conv_key(model)
    prefix = _pos_embed_prefix(model)
    pos_embed = None if prefix is None else (tuple(model.patch_embed.grid_size), prefix)
    generator = torch.Generator().manual_seed(seed + 1_000_003)  # not the rebuild's stream

    records: list[dict[str, Any]] = []
    mismatches: list[str] = []
    for name, origin in zip(body + [HEAD], origins + [head_origin]):
        keys = keys_by_block[name]
        record: dict[str, Any] = {"block": name, "origin": origin, "tensors": len(keys)}
        adapted: list[str] = []
        if origin == "source":
            for key in keys:
                value = _source_tensor(key, state[key], source, first_conv, mismatches, adapted, pos_embed)
                if value is not None:
                    state[key] = value.detach().to(dtype=state[key].dtype).clone()
        elif origin == "stats":
            reset = 0
            for key in keys:
                norm_default = _norm_default(model, key)
                if norm_default is not None:
                    state[key] = norm_default.to(state[key].dtype)
                    reset += 1
                    continue
                if key not in params or not state[key].is_floating_point():
                    reset += 1  # buffers such as attention masks: the architecture's own
                    continue
                value = _source_tensor(key, state[key], source, first_conv, mismatches, adapted, pos_embed)
                if value is None:
                    continue
                value = value.detach().double()
                mean = float(value.mean())
                std = float(value.std()) if value.numel() > 1 else 0.0
                draw = torch.empty(value.shape, dtype=torch.float32).normal_(
                    mean, std if std > 0 else 1.0, generator=generator
                )
                if std == 0 or not math.isfinite(std):
                    draw.fill_(mean)
                state[key] = draw.to(state[key].dtype)
            record["reset"] = reset
        elif origin == "gabor":
            if first_conv is None or first_conv not in keys:
                raise ConfigError(
                    f"init Gabor needs a first conv layer in block {name!r}; "
                    f"{type(model).__name__} has none recorded (pretrained_cfg['first_conv'])"
                )
            record.update(_gabor_weight(state, first_conv, source, generator))
        if adapted:
            record["adapted"] = adapted
        records.append(record)

    if mismatches:
        raise WeightsError(
            f"the source checkpoint does not fit this {_arch_name(model)} (it is of another "
            f"architecture, width or slim setting); first mismatches: {'; '.join(mismatches[:5])}"
            + (f" (+{len(mismatches) - 5} more)" if len(mismatches) > 5 else "")
            + f"; {describe_checkpoint(checkpoint)}"
        )
    if source is not None and "random" not in origins and init != "Gabor":
        head_keys = set(keys_by_block[HEAD])
        model_keys = set(state)
        extra = [
            key for key in source if key not in model_keys and not _is_head_like(key, head_keys)
        ]
        if extra:
            raise WeightsError(
                f"the source checkpoint has entries this {_arch_name(model)} lacks, so it is of "
                f"another architecture: {', '.join(extra[:5])}"
                + (f" (+{len(extra) - 5} more)" if len(extra) > 5 else "")
                + f"; {describe_checkpoint(checkpoint)}"
            )

    model.load_state_dict(state, strict=True)
    record = {"init": init, "k": k, "seed": seed, "options": dict(options), "blocks": records}
    if checkpoint is not None:
        record["checkpoint"] = checkpoint
    return record


def _is_head_like(key: str, head_keys: set[str]) -> bool:
    prefixes = {h.rpartition(".")[0] for h in head_keys}
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def _arch_name(model: nn.Module) -> str:
    args = getattr(model, CREATE_ARGS_ATTR, None) or {}
    return repr(args.get("arch", type(model).__name__))


def _gabor_weight(
    state: dict[str, torch.Tensor],
    key: str,
    source: dict[str, torch.Tensor] | None,
    generator: torch.Generator,
) -> dict[str, Any]:
    target = state[key]
    ranges, fitted = None, None
    target_std = float(target.double().std())
    if source is not None and key in source and source[key].ndim == 4:
        ranges, fitted = gabor.ranges_from_filters(source[key])
        target_std = float(source[key].double().std())
    bank, _ = gabor.gabor_bank(tuple(target.shape), generator, ranges, target_std)
    state[key] = bank.to(target.dtype)
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


__all__ = ["INITS", "apply", "create_kwargs"]
