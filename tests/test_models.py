"""Architectures and their canonical blocks: forward passes, block order, published shapes."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from medtransfer.errors import ConfigError
from medtransfer.models import (
    ARCHITECTURES,
    IMAGENET_WEIGHTS,
    BlockGroup,
    block_keys,
    block_layout,
    blocks,
    create,
    default_input_size,
    init_create_options,
    rebuild,
)

torch.set_num_threads(1)

OURS = ["cbr_large_t", "cbr_large_w", "cbr_small", "cbr_tiny", "keras_resnet50", "resnet18_28", "resnet50_28"]
TIMM = [
    "resnet18",
    "resnet50",
    "inception_v3",
    "deit_tiny_patch16_224",
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
]
# CNNs take any size: test them small; the others at the size they need.
SIZE = {"resnet18": 32, "resnet50": 32, "inception_v3": 299, "keras_resnet50": 33}

# Raghu et al. 2019, App. A (see REFERENCES.md): (kernel, widths, pool after the last block)
CBR_PAPER = {
    "cbr_large_t": (7, [32, 64, 128, 256, 512], False),
    "cbr_large_w": (7, [64, 128, 256, 512], True),
    "cbr_small": (7, [32, 64, 128, 256], True),
    "cbr_tiny": (5, [64, 128, 256, 512], True),
}


def _size(arch: str) -> int:
    return default_input_size(arch) or SIZE.get(arch, 28)


def test_registry_holds_our_architectures():
    assert sorted(OURS) == ARCHITECTURES.names()


@pytest.mark.parametrize("arch", OURS + TIMM)
def test_forward_and_blocks_in_forward_order(arch):
    torch.manual_seed(0)
    model = create(arch, num_classes=3, in_chans=3, pretrained=False).eval()
    size = _size(arch)
    block_list = blocks(model)
    assert len(block_list) >= 3
    names = [n for n, _ in block_list]
    assert len(set(names)) == len(names)
    assert names[-1] == "head"
    head = block_list[-1][1]
    assert isinstance(head, nn.Linear) and head is model.get_classifier()
    assert head.out_features == 3

    seen: list[tuple[str, torch.Tensor]] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, out, name=name: seen.append((name, out)))
        for name, module in block_list
    ]
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    for h in handles:
        h.remove()
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    # every block fires exactly once, in the list's order, with a batch-first tensor
    assert [n for n, _ in seen] == names
    for name, out in seen:
        assert isinstance(out, torch.Tensor) and out.shape[0] == 2, name
    assert torch.equal(seen[-1][1], logits)

    # every state-dict entry belongs to exactly one block; the head owns the classifier only
    owned = block_keys(model)
    assert list(owned) == names
    flat = [k for keys in owned.values() for k in keys]
    assert sorted(flat) == sorted(model.state_dict())
    head_keys = {f"{n}" for n, p in model.named_parameters() if p is head.weight or p is head.bias}
    assert set(owned["head"]) == head_keys


def test_block_output_shapes_documented_for_transformers():
    vit = create("deit_tiny_patch16_224", 2).eval()
    swin = create("swin_tiny_patch4_window7_224", 2).eval()
    out = {}
    for prefix, model in (("vit", vit), ("swin", swin)):
        bl = dict(blocks(model))
        name = "blocks.0" if prefix == "vit" else "layers.0.blocks.0"
        bl[name].register_forward_hook(lambda _m, _i, o, p=prefix: out.__setitem__(p, o.shape))
        with torch.no_grad():
            model(torch.randn(1, 3, 224, 224))
    assert out["vit"] == (1, 1 + 14 * 14, 192)  # [N, T, D] with the class token
    assert out["swin"] == (1, 56, 56, 96)  # [N, H, W, C]


@pytest.mark.parametrize("arch", sorted(CBR_PAPER))
def test_cbr_widths_and_kernels_match_the_paper(arch):
    kernel, widths, pool_last = CBR_PAPER[arch]
    model = create(arch, num_classes=2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == widths
    assert all(c.kernel_size == (kernel, kernel) and c.stride == (1, 1) for c in convs)
    assert all(
        isinstance(m, nn.BatchNorm2d) for m in model.modules() if "bn" in type(m).__name__.lower()
    )
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == len(widths) - (0 if pool_last else 1)
    assert all(p.kernel_size == 3 and p.stride == 2 for p in pools)
    block_names = [n for n, _ in blocks(model)]
    assert block_names == [f"block{i + 1}" for i in range(len(widths))] + ["head"]
    assert model.get_classifier().in_features == widths[-1]


def test_resnet18_28_has_the_medmnist_stem_and_keeps_28px():
    model = create("resnet18_28", num_classes=2).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    seen = {}
    model.layer1.register_forward_pre_hook(lambda _m, args: seen.__setitem__("in", args[0].shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 28, 28))
    assert seen["in"][-2:] == (28, 28)
    # closed form: torchvision resnet18 (11,689,512 parameters) with a 3×3 stem and 2 classes
    expected = 11_689_512 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64 - (512 * 1000 + 1000) + (512 * 2 + 2)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_resnet28_init_is_pytorch_default_not_zeroed_residuals():
    model = create("resnet18_28", num_classes=2)
    assert torch.all(model.layer1[0].bn2.weight == 1)  # timm would zero-init it


def test_stem_blockgroup_relays_hooks():
    model = create("resnet18_28", num_classes=2).eval()
    stem = dict(blocks(model))["stem"]
    assert isinstance(stem, BlockGroup)
    got = {}
    stem.register_forward_hook(lambda m, _i, o: got.update(module=m, shape=o.shape))
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        model(x)
        direct = stem(x)
    assert got["module"] is stem and got["shape"] == direct.shape == (1, 64, 28, 28)


def test_width_multiplier_and_slim_top():
    half = create("cbr_small", 2, width=0.5)
    assert [m.out_channels for m in half.modules() if isinstance(m, nn.Conv2d)] == [16, 32, 64, 128]
    slim = create("cbr_small", 2, slim_from=2, slim_factor=0.5)
    assert [m.out_channels for m in slim.modules() if isinstance(m, nn.Conv2d)] == [32, 64, 64, 128]
    full_r = create("resnet18_28", 2, width=0.25)
    slim_r = create("resnet18_28", 2, width=0.25, slim_from=3, slim_factor=0.5)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(slim_r) < n(full_r)
    # blocks below slim_from keep their shapes, so weights can be transferred into them
    keep = [k for name in ("stem", "layer1.0", "layer1.1") for k in block_keys(full_r)[name]]
    fs, ss = full_r.state_dict(), slim_r.state_dict()
    assert all(fs[k].shape == ss[k].shape for k in keep)
    assert slim_r(torch.randn(2, 3, 28, 28)).shape == (2, 2)
    slim_t = create("resnet18", 2, slim_from=5, slim_factor=0.5)
    assert slim_t(torch.randn(2, 3, 32, 32)).shape == (2, 2)
    with pytest.raises(ConfigError, match="slim"):
        create("deit_tiny_patch16_224", 2, slim_from=3, slim_factor=0.5)


def test_in_chans_one():
    for arch in ("cbr_tiny", "resnet18_28", "resnet18"):
        model = (
            create(arch, 2, in_chans=1, width=0.25)
            if arch != "resnet18"
            else create(arch, 2, in_chans=1)
        )
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)


def test_unknown_architecture_message():
    with pytest.raises(ConfigError) as err:
        create("resnet_9000", 2)
    msg = str(err.value)
    assert "resnet_9000" in msg and "resnet18_28" in msg and "cbr_small" in msg
    assert "timm.list_models()" in msg


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="ImageNet"):
        create("cbr_small", 2, pretrained=True)
    with pytest.raises(ConfigError, match="width"):
        create("resnet18", 2, width=0.5)
    with pytest.raises(ConfigError, match="num_classes"):
        create("cbr_small", 0)


def test_input_size_policy():
    assert default_input_size("deit_tiny_patch16_224") == 224
    assert default_input_size("deit_small_patch16_224") == 224
    assert default_input_size("swin_tiny_patch4_window7_224") == 224
    assert default_input_size("inception_v3") == 299
    assert default_input_size("resnet50") is None
    assert default_input_size("cbr_tiny") is None and default_input_size("resnet18_28") is None
    # a ViT built for another size (architectures: {deit_tiny_patch16_224: {img_size: 64}}) gets
    # batches of that size, in fine-tuning and in activation extraction alike
    from medtransfer.training.stage import input_size

    assert default_input_size("deit_tiny_patch16_224", img_size=64) == 64
    spec = {"arch": "deit_tiny_patch16_224", "arch_options": {"img_size": 64}, "training": {}}
    assert input_size(spec) == 64
    assert input_size({**spec, "training": {"image_size": 96}}) == 96  # the config's own size wins
    model = create("deit_tiny_patch16_224", 2, img_size=input_size(spec))
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2)


def test_imagenet_weight_table_names_real_timm_tags():
    assert set(IMAGENET_WEIGHTS) == set(TIMM)
    pretrained = set(timm.list_pretrained())
    for arch, tagged in IMAGENET_WEIGHTS.items():
        assert tagged.split(".")[0] == arch and tagged in pretrained
        assert "in1k" in tagged


def test_rebuild_is_seeded_and_keeps_global_rng():
    model = create("cbr_tiny", 2, width=0.25)
    state = torch.random.get_rng_state()
    a, b, c = rebuild(model, 1), rebuild(model, 1), rebuild(model, 2)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["block1.conv.weight"], sc["block1.conv.weight"])


def test_generic_timm_model_falls_back_to_feature_info():
    model = create("mobilenetv3_small_050", 3).eval()
    block_list = blocks(model)
    assert block_list[-1][0] == "head" and len(block_list) > 3
    owned = block_keys(model)
    assert sorted(k for v in owned.values() for k in v) == sorted(model.state_dict())
    seen = []
    for name, module in block_list:
        module.register_forward_hook(lambda _m, _i, o, n=name: seen.append((n, o)))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert [n for n, _ in seen] == [n for n, _ in block_list]
    assert all(isinstance(o, torch.Tensor) for _, o in seen)


def test_block_layout():
    assert block_layout(create("swin_tiny_patch4_window7_224", 2)) == "nhwc"
    assert block_layout(create("deit_tiny_patch16_224", 2)) == "tokens"
    assert block_layout(create("cbr_tiny", 2, width=0.25)) == "nchw"
    assert block_layout(create("resnet18_28", 2, width=0.25)) == "nchw"


def test_init_create_options():
    assert init_create_options({"name": "WT-RI", "k": 3, "slim": 0.5}) == {
        "slim_from": 3,
        "slim_factor": 0.5,
    }
    assert init_create_options({"name": "WT-RI", "k": 3, "slim": None}) == {}
    assert init_create_options({"name": "WT", "source": "natural", "k": None}) == {}
    assert init_create_options({}) == {}
