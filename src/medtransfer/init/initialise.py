"""Initialise a model in place: check the arguments, run the init's plan, fill each block by its origin.

The fill of each origin is in :mod:`medtransfer.init.origins`; the plans and their traits are in
:mod:`medtransfer.init.registry`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medtransfer.errors import ConfigError, WeightsError
from medtransfer.init.origins import ORIGINS, Filling
from medtransfer.init.registry import INITS, INITS_WITH_K
from medtransfer.models import HEAD, block_keys, rebuild
from medtransfer.models.checkpoints import describe as describe_checkpoint
from medtransfer.models.checkpoints import fit_checkpoint
from medtransfer.models.factory import CREATE_ARGS_ATTR, init_create_options


def create_kwargs(init: str, *, k: int | None = None, **options: Any) -> dict[str, Any]:
    """Extra ``medtransfer.models.create`` keyword arguments the model for ``init`` needs.

    Only ``WT-RI`` with ``slim`` needs any: ``{"slim_from": k, "slim_factor": slim}``.
    """
    return init_create_options({"name": init, "k": k, "slim": options.get("slim")})


def _check_args(model: nn.Module, init: str, source: Any, k: Any, options: dict[str, Any]) -> None:
    if init not in INITS:
        raise ConfigError(f"unknown initialisation {init!r}; allowed: {', '.join(INITS.names())}")
    traits = INITS.get(init)
    if traits.needs_source and source is None:
        raise ConfigError(
            f"init {init} needs a weight source (e.g. {{{init}: <source name>}} in study.inits)"
        )
    if traits.takes_k:
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
        raise ConfigError(f"k applies only to {', '.join(sorted(INITS_WITH_K))}, not to init {init}")
    unknown = set(options) - set(traits.options)
    if unknown:
        raise ConfigError(
            f"init {init} takes no option(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(traits.options)) or 'none'}"
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
    traits = INITS.get(init)
    origins = traits(body, k)
    head_origin = "new_head" if traits.needs_source else "random"

    fresh = rebuild(model, seed).state_dict()
    state = {key: value.detach().clone() for key, value in fresh.items()}
    generator = torch.Generator().manual_seed(seed + 1_000_003)  # not the rebuild's stream
    filling = Filling.of(model, state, source, generator)

    records: list[dict[str, Any]] = []
    for name, origin in zip(body + [HEAD], origins + [head_origin]):
        keys = keys_by_block[name]
        record: dict[str, Any] = {"block": name, "origin": origin, "tensors": len(keys)}
        record.update(ORIGINS[origin](filling, name, keys))
        records.append(record)

    if filling.mismatches:
        mismatches = filling.mismatches
        raise WeightsError(
            f"the source checkpoint does not fit this {_arch_name(model)} (it is of another "
            f"architecture, width or slim setting); first mismatches: {'; '.join(mismatches[:5])}"
            + (f" (+{len(mismatches) - 5} more)" if len(mismatches) > 5 else "")
            + f"; {describe_checkpoint(checkpoint)}"
        )
    # A source that fills every block must be of this architecture: refuse entries the model lacks.
    if source is not None and "random" not in origins and traits.needs_source:
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
