"""Every pretraining method's options and their defaults, without importing torch.

The study grid (imported by the Snakefile) checks ``sources.<name>.pretrain.options`` against
these before any job starts, through :func:`resolve_options`; the method classes read their
resolved options. Why a table here and not traits beside each class: the classes (one module per
method) import torch and lightly, which the planner must not. So this table is the method
registry's key set: ``base.register_method`` refuses a class whose name has no row here, and
``tests/test_ssl.py`` runs every row through its class (a row without a class fails there).
A new method is its row here (options and view recipe, with where they come from) and its module.

Torch-free API: ``METHOD_DEFAULTS`` (name -> its options over ``VIEW_DEFAULTS``), ``METHODS``
(every method a source may name, ``supervised`` first), ``resolve_options(method, options, key)``.

Where the defaults come from. Losses, temperatures, EMA schedules, DINO's centering and
sharpening, SwAV's Sinkhorn and the view recipes are each paper's own. Head widths are scaled to
small backbones and small data the way lightly's CIFAR-10 benchmark scales them (e.g. DINO's
65,536-way output becomes 2,048, SwAV's 3,000 prototypes 512, MoCo's 65,536-key queue 4,096),
because a 128-d ResNet-18 (28) at quarter width cannot fill the ImageNet-sized heads.
Views at small sizes: Gaussian blur is the papers' ImageNet setting; SimCLR's CIFAR-10 runs drop
it, and at 28-32 px a blur kernel of ~10 % of the side is 3 px, so ``blur: auto`` applies it
only to images of 64 px and more. DINO/SwAV local crops are 96/224 of the global size.
"""

from __future__ import annotations

from typing import Any

#: Options of the on-device view pipeline (medtransfer.training.ssl.views), shared by every method.
#: Probabilities given as a list apply per global view (BYOL's asymmetric blur and solarisation).
VIEW_DEFAULTS: dict[str, Any] = {
    "crop_scale": [0.08, 1.0],        # RandomResizedCrop area range of the global views
    "local_crops": 0,                 # multi-crop: number of small views (DINO, SwAV)
    "local_crop_scale": [0.05, 0.4],
    "local_size": None,               # pixels; None = round(96 / 224 * global size)
    "hflip": 0.5,
    "jitter_p": 0.8,                  # colour jitter probability
    "jitter": [0.4, 0.4, 0.4, 0.1],   # brightness, contrast, saturation, hue (gray images: no s, h)
    "grayscale_p": 0.2,               # RGB images only
    "blur": "auto",                   # auto: on for images >= 64 px; true / false
    "blur_p": [0.5, 0.5],             # per global view
    "local_blur_p": 0.5,
    "solarize_p": [0.0, 0.0],         # per global view
}

_SIMCLR_VIEWS = {"jitter": [0.4, 0.4, 0.4, 0.1], "blur_p": [0.5, 0.5]}
_BYOL_VIEWS = {"jitter": [0.4, 0.4, 0.2, 0.1], "blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.2]}

#: Method name -> its own options (heads, loss, teacher) merged over VIEW_DEFAULTS.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # Chen et al. 2020: 2-layer MLP projection, NT-Xent; tau = 0.5 is SimCLR's CIFAR-10 choice.
    "simclr": {"proj_hidden_dim": 512, "out_dim": 128, "temperature": 0.5,
               **_SIMCLR_VIEWS},
    # Chen et al. 2020 (MoCo v2): MLP head, tau 0.2, momentum key encoder, a queue of keys,
    # shuffled BN for the keys; crop 0.2-1.
    "mocov2": {"proj_hidden_dim": 512, "out_dim": 128, "temperature": 0.2, "queue_size": 4096,
               "momentum": 0.99, "shuffle_bn": True, **_SIMCLR_VIEWS, "crop_scale": [0.2, 1.0]},
    # Grill et al. 2020: projection + prediction MLPs, target EMA tau from base to 1 (cosine),
    # symmetric 2 - 2 cos loss, asymmetric blur / solarisation.
    "byol": {"proj_hidden_dim": 1024, "out_dim": 256, "pred_hidden_dim": 1024, "momentum": 0.99,
             "momentum_end": 1.0, **_BYOL_VIEWS},
    # Caron et al. 2021: student / EMA teacher with the DINO head, teacher centering (momentum
    # 0.9) and sharpening (teacher temperature, warmed up linearly), student temperature 0.1,
    # multi-crop (2 global at 0.4-1, local at 0.05-0.4), last layer frozen in the first epoch.
    "dino": {"proj_hidden_dim": 2048, "bottleneck_dim": 256, "out_dim": 2048, "head_batch_norm": True,
             "student_temp": 0.1, "teacher_temp": 0.04, "warmup_teacher_temp": 0.04,
             "warmup_teacher_temp_epochs": 0, "center_momentum": 0.9, "momentum": 0.996,
             "momentum_end": 1.0, "freeze_last_layer_epochs": 1,
             **_BYOL_VIEWS, "crop_scale": [0.4, 1.0], "local_crops": 6, "local_crop_scale": [0.05, 0.4]},
    # Caron et al. 2020: projection, L2-normalised prototypes, swapped prediction with Sinkhorn-
    # Knopp codes (3 iterations, epsilon 0.05), temperature 0.1, multi-crop 2 x (0.14-1) +
    # 6 x (0.05-0.14), prototypes frozen during the first epoch; at batch 256 the paper's queue of
    # 3,840 features, here from epoch 2 of a short run (the paper: epoch 15 of 200-800).
    "swav": {"proj_hidden_dim": 512, "out_dim": 128, "n_prototypes": 512, "temperature": 0.1,
             "sinkhorn_iterations": 3, "sinkhorn_epsilon": 0.05, "freeze_prototypes_epochs": 1,
             "queue_size": 3840, "queue_start_epoch": 2,
             "jitter": [0.8, 0.8, 0.8, 0.2], "crop_scale": [0.14, 1.0], "local_crops": 6,
             "local_crop_scale": [0.05, 0.14]},
    # Zbontar et al. 2021: 3-layer projector, cross-correlation to the identity, lambda 5e-3,
    # BYOL's views.
    "barlowtwins": {"proj_hidden_dim": 2048, "out_dim": 2048, "lambda_param": 5e-3, **_BYOL_VIEWS},
}

#: Every method a source can be pretrained with; ``supervised`` is the default and takes no options.
METHODS: tuple[str, ...] = ("supervised", *METHOD_DEFAULTS)


def resolve_options(method: str, options: dict[str, Any] | None, key: str) -> dict[str, Any]:
    """The full option set of ``method`` with the user's ``options`` over its defaults.

    Raises ``ConfigError`` naming ``key`` for an unknown method or option, listing the valid ones.
    """
    from medtransfer.errors import ConfigError

    if method not in METHODS:
        raise ConfigError(f"config key {key}.method: unknown pretraining method {method!r}; "
                          f"allowed: {', '.join(METHODS)}")
    options = dict(options or {})
    if method == "supervised":
        if options:
            raise ConfigError(f"config key {key}.options: method supervised takes no options "
                              f"(got {', '.join(sorted(options))}); its training is under {key}.training")
        return {}
    defaults = {**VIEW_DEFAULTS, **METHOD_DEFAULTS[method]}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(f"config key {key}.options: unknown option(s) {', '.join(unknown)} for method "
                          f"{method}; allowed: {', '.join(sorted(defaults))}")
    return {**defaults, **options}
