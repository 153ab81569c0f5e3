"""The canonical block list of a model, shared by transfer (which blocks to copy) and analysis
(where to record activations).

=================  ==========================================================  =======================
family             blocks, in forward order                                    output of each block
=================  ==========================================================  =======================
CBR                ``block1`` … ``blockN``, ``head``                           [N, C, H, W]
ResNet (timm and   ``stem`` (conv1, bn1, act1, maxpool as a :class:`BlockGroup`),  [N, C, H, W]
resnet*_28)        each residual block ``layer1.0`` … ``layer4.{last}``, ``head``
ViT / DeiT         ``patch_embed``, ``blocks.0`` … ``blocks.{L-1}``, ``head``  [N, T, D] tokens
                                                                               (patch_embed: patches
                                                                               only; blocks: with the
                                                                               class token first)
Swin               ``patch_embed``, each block of each stage                   [N, H, W, C] (timm's
                   ``layers.{s}.blocks.{b}``, ``head``                         channels-last)
keras_resnet50     the stem ``conv1`` (output ``conv1_relu``, before the max-pool),  [N, C, H, W]
                   the stages ``conv2`` … ``conv5`` (models.keras_resnet), ``head``
Inception-v3       stem convs ``Conv2d_1a_3x3`` … ``Conv2d_4a_3x3``, each      [N, C, H, W]
                   ``Mixed_*`` block, ``head``
other timm models  heuristic: the modules of timm's ``feature_info`` (usually   as the module returns
                   one per stage), else the top-level children with
                   parameters, then ``head``
=================  ==========================================================  =======================

``head`` is always the final linear classifier (``model.get_classifier()``), output
[N, num_classes]. Register forward hooks on the returned modules to record activations; a
:class:`BlockGroup` forwards the hook to its last member.

:func:`block_keys` assigns every state-dict entry to exactly one block. Entries that live outside
every block module (ViT ``cls_token``/``pos_embed``, the final ``norm``, Swin's between-stage
``downsample``) go to the neighbouring block (previous or next in state-dict order) whose module
path shares the longer prefix with theirs, preferring the previous one; never to the head. So
ViT's token and position embeddings travel with ``patch_embed``, its final norm with the last
block, and Swin's patch merging with the first block of the stage it opens.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from .cbr import CBR

#: Canonical name of the classifier block.
HEAD = "head"


class BlockGroup(nn.Module):
    """Sibling modules that together form one canonical block but have no parent of their own
    (e.g. the ResNet stem: ``conv1``, ``bn1``, ``act1``, ``maxpool``).

    ``forward`` runs the members in order; ``register_forward_hook`` attaches to the last member,
    so a hook sees the block's output (and ``module`` is this group).
    """

    def __init__(self, members: dict[str, nn.Module], paths: dict[str, str]) -> None:
        super().__init__()
        for name, module in members.items():
            self.add_module(name, module)
        #: qualified name of each member inside the model it belongs to
        self.paths = dict(paths)

    def forward(self, x):  # noqa: D401 - same contract as the members
        for module in self.children():
            x = module(x)
        return x

    def register_forward_hook(self, hook, *args, **kwargs):  # type: ignore[override]
        last = list(self.children())[-1]

        def relay(_module, *rest):
            return hook(self, *rest)

        return last.register_forward_hook(relay, *args, **kwargs)


def _children_with_params(model: nn.Module, exclude: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, child in model.named_children():
        if child is exclude or any(m is exclude for m in child.modules()):
            continue
        if any(True for _ in child.parameters()):
            yield name, child


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The canonical blocks of ``model`` in forward order, the classifier ``head`` last.

    Works for every model :func:`medtransfer.models.create` returns; see the module docstring for
    the rule per family and the shape each block outputs.
    """
    from timm.models.inception_v3 import InceptionV3
    from timm.models.resnet import ResNet
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    own = getattr(model, "canonical_blocks", None)
    if callable(own):  # a model that defines its own (models.segmentation: encoder blocks, decoder as head)
        return own()
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"{type(model).__name__} has no linear classifier (get_classifier() returned "
            f"{type(head).__name__}); build it with num_classes >= 1"
        )
    out: list[tuple[str, nn.Module]] = []
    if isinstance(model, CBR):
        out = [(f"block{i + 1}", getattr(model, f"block{i + 1}")) for i in range(model.num_blocks)]
    elif isinstance(model, ResNet):
        members = {
            "conv1": model.conv1,
            "bn1": model.bn1,
            "act1": model.act1,
            "maxpool": model.maxpool,
        }
        out = [("stem", BlockGroup(members, {n: n for n in members}))]
        for s in range(1, 5):
            stage = getattr(model, f"layer{s}")
            out += [(f"layer{s}.{j}", block) for j, block in enumerate(stage)]
    elif isinstance(model, VisionTransformer):
        out = [("patch_embed", model.patch_embed)]
        out += [(f"blocks.{i}", block) for i, block in enumerate(model.blocks)]
    elif isinstance(model, SwinTransformer):
        out = [("patch_embed", model.patch_embed)]
        for s, stage in enumerate(model.layers):
            out += [(f"layers.{s}.blocks.{b}", block) for b, block in enumerate(stage.blocks)]
    elif isinstance(model, InceptionV3):
        for name, child in model.named_children():
            if name.startswith(("Conv2d_", "Mixed_")):
                out.append((name, child))
    else:
        feature_info = getattr(model, "feature_info", None)
        seen: set[str] = set()
        for info in feature_info or []:
            name = info.get("module") if isinstance(info, dict) else None
            if name and name not in seen:
                seen.add(name)
                out.append((name, model.get_submodule(name)))
        if not out:
            out = list(_children_with_params(model, head))
    return out + [(HEAD, head)]


def block_layout(model: nn.Module) -> str:
    """How the body blocks of ``model`` lay out their outputs: ``"nhwc"`` (timm's Swin: [N, H, W,
    C]), ``"tokens"`` (ViT/DeiT: [N, T, D]) or ``"nchw"`` (CNNs: [N, C, H, W]). The head always
    outputs [N, num_classes].
    """
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(getattr(model, "encoder_layout", None), str):  # a segmentation network: its encoder's
        return model.encoder_layout
    if isinstance(model, SwinTransformer) or str(getattr(model, "output_fmt", "")).upper().endswith(
        "NHWC"
    ):
        return "nhwc"
    if isinstance(model, VisionTransformer):
        return "tokens"
    return "nchw"


def _module_paths(model: nn.Module) -> dict[int, str]:
    paths: dict[int, str] = {}
    for name, module in model.named_modules():
        paths.setdefault(id(module), name)
    return paths


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def block_keys(model: nn.Module) -> dict[str, list[str]]:
    """Map each canonical block name to the state-dict keys it owns (every key exactly once).

    Keys are in ``model.state_dict()`` order; the block order is that of :func:`blocks`.
    """
    block_list = blocks(model)
    paths = _module_paths(model)
    prefixes: list[list[str]] = []
    for _, module in block_list:
        if isinstance(module, BlockGroup):
            prefixes.append(list(module.paths.values()))
        else:
            prefixes.append([paths[id(module)]])
    head_index = len(block_list) - 1

    keys = list(model.state_dict().keys())
    owner: list[int | None] = []
    for key in keys:
        best, best_len = None, -1
        for i, plist in enumerate(prefixes):
            for p in plist:
                if (key == p or key.startswith(p + ".")) and len(p) > best_len:
                    best, best_len = i, len(p)
        owner.append(best)

    # leftovers: the neighbour (previous/next owned key) whose path shares more with theirs
    resolved = list(owner)
    for i, key in enumerate(keys):
        if owner[i] is not None:
            continue
        prev = next((j for j in range(i - 1, -1, -1) if owner[j] not in (None, head_index)), None)
        nxt = next((j for j in range(i + 1, len(keys)) if owner[j] not in (None, head_index)), None)
        if prev is None and nxt is None:
            resolved[i] = 0
        elif nxt is None or (
            prev is not None and _shared_prefix(key, keys[prev]) >= _shared_prefix(key, keys[nxt])
        ):
            resolved[i] = owner[prev]
        else:
            resolved[i] = owner[nxt]

    result: dict[str, list[str]] = {name: [] for name, _ in block_list}
    for key, i in zip(keys, resolved):
        result[block_list[i][0]].append(key)
    return result
