"""One front door for every model: our registered architectures and any timm model by name."""

from __future__ import annotations

import copy
from typing import Any

import timm
import torch
from torch import nn

from medtransfer.errors import ConfigError
from medtransfer.registry import Registry

from .cbr import CBR_SPECS, build_cbr
from .keras_resnet import build_keras_resnet50
from .resnet import RESNET28_DEPTHS, build_resnet28, slim_resnet

ARCHITECTURES: Registry = Registry("architecture")

#: Attribute on every model :func:`create` returns: the arguments that rebuild it (without
#: ``pretrained``), so an init can draw a fresh seeded copy of exactly this architecture.
CREATE_ARGS_ATTR = "medtransfer_create_args"

#: Keyword arguments that :func:`create` handles itself rather than passing on to timm.
_OWN_KWARGS = ("width", "slim_from", "slim_factor")


def _register_cbr(name: str) -> None:
    @ARCHITECTURES.register(name)
    def _build(num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
        return build_cbr(name, num_classes, in_chans, **kwargs)


def _register_resnet28(name: str) -> None:
    @ARCHITECTURES.register(name)
    def _build(num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
        return build_resnet28(name, num_classes, in_chans, **kwargs)


for _name in CBR_SPECS:
    _register_cbr(_name)
for _name in RESNET28_DEPTHS:
    _register_resnet28(_name)


@ARCHITECTURES.register("keras_resnet50")
def _build_keras_resnet50(num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    unknown = set(kwargs) - {"width", "drop_rate", "slim_from", "slim_factor"}
    if unknown:
        raise ConfigError(f"architecture 'keras_resnet50' takes the options width and drop_rate, "
                          f"not {', '.join(sorted(unknown))}")
    return build_keras_resnet50(num_classes, in_chans, **kwargs)


def is_known_arch(arch: str) -> bool:
    """True for our registered names and for every timm model name; a name with a pretrained tag
    (``resnet18.tv_in1k``) only where timm has weights under that exact tag (``timm.is_model``
    alone ignores what follows the first ``.``, so a mistyped tag would pass and fail every job)."""
    if arch in ARCHITECTURES:
        return True
    if not timm.is_model(arch):
        return False
    _, tag = timm.models.split_model_name_tag(arch)
    return not tag or arch in timm.list_pretrained(arch)


def unknown_arch_message(arch: str) -> str:
    """What to tell a user whose architecture name is neither ours nor timm's."""
    base, tag = timm.models.split_model_name_tag(arch)
    if tag and timm.is_model(base):
        tags = [name.partition(".")[2] for name in timm.list_pretrained(f"{base}.*")]
        return (f"unknown pretrained tag {tag!r} of timm model {base!r}; its tags: "
                f"{', '.join(tags) or 'none (timm has no weights for it)'}")
    return (
        f"unknown architecture {arch!r}: it is neither one of ours "
        f"({', '.join(ARCHITECTURES.names())}) nor a timm model name; "
        "see timm.list_models() for timm's names"
    )


def _unknown_arch(arch: str) -> ConfigError:
    return ConfigError(unknown_arch_message(arch))


def create(arch: str, num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build architecture ``arch`` with a ``num_classes``-way linear head for ``in_chans`` inputs.

    ``arch`` is one of ``ARCHITECTURES.names()`` (``cbr_large_t``, ``cbr_large_w``, ``cbr_small``,
    ``cbr_tiny``, ``resnet18_28``, ``resnet50_28``, ``keras_resnet50``: Keras's ResNet-50 for Keras
    weight files, :mod:`medtransfer.models.keras_resnet`) or any timm model name (``resnet50``,
    ``deit_small_patch16_224``, ``resnet18.tv_in1k``, …), passed to ``timm.create_model``.

    Keyword options:
        pretrained (bool): timm models only: load the timm hub weights (ImageNet tag of the name,
            or timm's default tag). Offline this fails within seconds with ``WeightsError``.
        width (float): our architectures only: multiplies every channel count (default 1.0;
            keras_resnet50: the four stages' filters, its stem stays 64 wide as in Keras).
        slim_from, slim_factor (int, float): rebuild the canonical blocks with index >= slim_from
            with ``slim_factor`` × their channels (Raghu's slim top). Our CBR, ResNet (28) and
            keras_resnet50 architectures and timm's ``resnet*``; other timm models raise ``ConfigError``.
        anything else: passed to the builder (timm: e.g. ``img_size``, ``drop_rate``).

    The returned module carries its creation arguments as ``model.medtransfer_create_args``.
    Raises ``ConfigError`` for an unknown ``arch`` or an option the architecture does not take.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1 for architecture {arch!r}, got {num_classes}")
    kwargs = dict(kwargs)
    pretrained = bool(kwargs.pop("pretrained", False))
    slim_from, slim_factor = kwargs.get("slim_from"), kwargs.get("slim_factor")
    if (slim_from is None) != (slim_factor is None):
        raise ConfigError(f"architecture {arch!r}: give both slim_from and slim_factor, or neither")
    if slim_factor is not None and not 0 < float(slim_factor) <= 1:
        raise ConfigError(f"slim factor must be in (0, 1], got {slim_factor}")

    stored = copy.deepcopy(kwargs)
    if arch in ARCHITECTURES:
        if pretrained:
            raise ConfigError(
                f"architecture {arch!r} has no ImageNet weights on the timm hub; "
                "use a pretrain source (sources.<name>.pretrain) or a local file instead"
            )
        model = ARCHITECTURES.get(arch)(num_classes, in_chans, **kwargs)
    elif timm.is_model(arch):
        model = _create_timm(arch, num_classes, in_chans, pretrained, dict(kwargs))
    else:
        raise _unknown_arch(arch)

    setattr(
        model,
        CREATE_ARGS_ATTR,
        {"arch": arch, "num_classes": num_classes, "in_chans": in_chans, **stored},
    )
    return model


def _create_timm(
    arch: str, num_classes: int, in_chans: int, pretrained: bool, kwargs: dict[str, Any]
) -> nn.Module:
    width = kwargs.pop("width", 1.0)
    slim_from = kwargs.pop("slim_from", None)
    slim_factor = kwargs.pop("slim_factor", None)
    if width != 1.0:
        raise ConfigError(
            f"option width applies to our architectures ({', '.join(ARCHITECTURES.names())}) "
            f"only, not to the timm model {arch!r}"
        )
    timm_kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, **kwargs)
    name = arch
    if pretrained:
        from .weights import IMAGENET_WEIGHTS, timm_weights_file  # weights imports this module

        # an untagged name means "the ImageNet weights of our table", not timm's newest default
        name = arch if "." in arch else IMAGENET_WEIGHTS.get(arch, arch)
        timm_kwargs.update(
            pretrained=True, pretrained_cfg_overlay={"file": timm_weights_file(name)}
        )
    model = timm.create_model(name, **timm_kwargs)
    if slim_from is not None:
        from timm.models.resnet import ResNet

        if not isinstance(model, ResNet):
            raise ConfigError(
                f"a slim top is implemented for the CBR family and ResNets, not for {arch!r}"
            )
        slim_resnet(model, int(slim_from), float(slim_factor))
        model.init_weights(zero_init_last=kwargs.get("zero_init_last", True))
    return model


def init_create_options(init_spec: dict[str, Any]) -> dict[str, Any]:
    """Extra :func:`create` kwargs the init of ``init_spec`` needs (the study grid's init dict
    ``{"name", "k", "slim", ...}``): a ``WT-RI`` with ``slim`` needs a model built with a slim top
    from block k (``{"slim_from": k, "slim_factor": slim}``); every other init needs nothing.
    """
    if init_spec.get("name") == "WT-RI" and init_spec.get("slim") is not None:
        if init_spec.get("k") is None:
            raise ConfigError("init WT-RI with slim needs k (the first slimmed block)")
        return {"slim_from": int(init_spec["k"]), "slim_factor": float(init_spec["slim"])}
    return {}


def rebuild(model: nn.Module, seed: int) -> nn.Module:
    """A fresh copy of ``model``'s architecture with its default init drawn under ``seed``.

    Same seed → bit-identical weights. The global torch RNG is left as it was.
    """
    args = getattr(model, CREATE_ARGS_ATTR, None)
    if args is None:
        raise ValueError(
            "this model was not built by medtransfer.models.create(), so it cannot be rebuilt; "
            "create models through create()"
        )
    args = dict(args)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = create(args.pop("arch"), args.pop("num_classes"), args.pop("in_chans"), **args)
    return fresh


def default_input_size(arch: str, **options: Any) -> int | None:
    """Input side length in pixels that ``arch`` needs, or ``None`` when any size works.

    ViT/DeiT/Swin need their patch grid (timm marks them ``fixed_input_size``; 224 for the
    ``*_224`` models, or the ``img_size`` among ``options``, the model's create() arguments);
    Inception-v3 is built for 299 (it needs >= 75 px); CNNs take any size.
    """
    if options.get("img_size") and arch not in ARCHITECTURES:
        size = options["img_size"]
        return int(size if isinstance(size, int) else size[-1])
    if arch in ARCHITECTURES:
        return None
    if not timm.is_model(arch):
        raise _unknown_arch(arch)
    if arch.split(".")[0].startswith("inception"):
        return 299
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is not None and cfg.fixed_input_size:
        return int(cfg.input_size[-1])
    return None
