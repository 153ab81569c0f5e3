"""Models: our architectures (CBR family, MedMNIST's ResNet (28), Keras's ResNet-50 for Keras
weight files) and any timm model, each with one ordered list of canonical blocks that transfer
and analysis share.

Public API::

    create(arch, num_classes, in_chans=3, **kwargs) -> nn.Module
    blocks(model) -> list[tuple[str, nn.Module]]
    block_keys(model) -> dict[str, list[str]]
    block_layout(model) -> "nchw" | "tokens" | "nhwc"
    default_input_size(arch) -> int | None
    init_create_options(init_spec) -> dict          # extra create() kwargs an init needs
    rebuild(model, seed) -> nn.Module               # fresh seeded copy of the architecture
    IMAGENET_WEIGHTS: dict[str, str]
    load_source_state_dict(spec) -> dict[str, Tensor]
    read_source(spec) -> SourceWeights              # the state dict and its file's record (sha256)
    segmentation.build(encoder, num_classes, input_size)   # an encoder under a U-Net (models/segmentation.py)
"""

from .blocks import HEAD, BlockGroup, block_keys, block_layout, blocks
from .cbr import CBR_SPECS
from .factory import (
    ARCHITECTURES,
    CREATE_ARGS_ATTR,
    create,
    default_input_size,
    init_create_options,
    is_known_arch,
    rebuild,
)
from .weights import IMAGENET_WEIGHTS, SourceWeights, load_source_state_dict, read_source, timm_weights_file

__all__ = [
    "ARCHITECTURES",
    "BlockGroup",
    "CBR_SPECS",
    "CREATE_ARGS_ATTR",
    "HEAD",
    "IMAGENET_WEIGHTS",
    "SourceWeights",
    "block_keys",
    "block_layout",
    "blocks",
    "create",
    "default_input_size",
    "init_create_options",
    "is_known_arch",
    "load_source_state_dict",
    "read_source",
    "rebuild",
    "timm_weights_file",
]
