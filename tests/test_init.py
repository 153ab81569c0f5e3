"""Initialisations, per canonical block: what comes from the source, its statistics, or chance.

Coverage (to stay under a minute on a 2-core CPU):
- every init (RI, WT, ST, WT-ST-k, WT-RI-k, WT-RI-k slim, Gabor) × our six architectures
  (at width 0.25; resnet*_28 are timm's ResNet class), each followed by one training step;
- timm's resnet18, resnet50, inception_v3, deit_tiny, deit_small and swin_tiny: WT-ST-k, which
  exercises both the source path (bit-for-bit below k) and the statistics path (above k, norm
  layers included) on their own blocks, and one training step; the other inits differ only in
  the per-block origin, covered above. The training step of resnet50 and deit_small is left to
  resnet18 and deit_tiny (same class, same code). Also: slim top on timm's resnet18, Gabor on
  its 7×7 conv1.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from medtransfer.errors import ConfigError, WeightsError
from medtransfer.init import INITS, apply, create_kwargs
from medtransfer.init import registry
from medtransfer.init import gabor as G
from medtransfer.models import HEAD, block_keys, blocks, create

torch.set_num_threads(1)

SMALL = {
    "cbr_large_t": {"width": 0.25},
    "cbr_large_w": {"width": 0.25},
    "cbr_small": {"width": 0.25},
    "cbr_tiny": {"width": 0.25},
    "resnet18_28": {"width": 0.25},
    "resnet50_28": {"width": 0.125},
    "keras_resnet50": {"width": 0.125},
}
LARGE = {
    "resnet18": 32,
    "resnet50": 32,
    "inception_v3": 96,  # any size >= 75 runs; 299 is only the policy
    "deit_tiny_patch16_224": 224,
    "deit_small_patch16_224": 224,
    "swin_tiny_patch4_window7_224": 224,
}
# Same model class and code path as a smaller sibling whose training step is tested.
STEP_COVERED_BY = {"resnet50": "resnet18", "deit_small_patch16_224": "deit_tiny_patch16_224"}
# A value to test each init option with; every registered init runs plain and with each option.
OPTION_VALUES = {"slim": 0.5}
INIT_CASES = [
    (name, 2 if registry.takes_k(name) else None, case)
    for name in registry.LISTED
    for case in [{}] + [{option: OPTION_VALUES[option]} for option in registry.options(name)]
]
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
SEED = 3


def make_source(arch: str, **kw) -> dict[str, torch.Tensor]:
    """A 10-class "pretrained" state dict whose norm layers are far from their defaults."""
    torch.manual_seed(100)
    state = create(arch, 10, **kw).state_dict()
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value.clone()
        elif key.endswith("running_var"):
            out[key] = torch.rand_like(value) + 0.5
        else:
            out[key] = value + 0.1 * torch.randn_like(value) + 0.03
    return out


def ri_state(arch: str, seed: int, **kw) -> dict[str, torch.Tensor]:
    model = create(arch, 2, **kw)
    apply(model, "RI", seed=seed)
    return model.state_dict()


def norm_keys(model: nn.Module) -> set[str]:
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, NORMS):
            keys.update(f"{name}.{k}" for k in module.state_dict())
    return keys


def assert_stats(model: nn.Module, state, source, keys) -> None:
    """ST property: non-norm parameters ~ N(mean, std) of their source tensor, norms reset."""
    params = dict(model.named_parameters())
    norms = norm_keys(model)
    for key in keys:
        got, src = state[key], source[key]
        if key in norms:
            leaf = key.rsplit(".", 1)[1]
            expected = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
            if leaf in expected:
                assert torch.all(got == expected[leaf]), key
            continue
        if key not in params:
            continue
        assert not torch.equal(got, src), key
        n = src.numel()
        if n < 20:
            continue
        mu, sd = src.double().mean().item(), src.double().std().item()
        # sampling error of the mean and the std of n i.i.d. normal draws, at 6 sigma
        assert abs(got.double().mean().item() - mu) <= 6 * sd / math.sqrt(n) + 1e-6, key
        assert abs(got.double().std().item() / sd - 1) <= 6 / math.sqrt(2 * n) + 1e-3, key


def train_step(model: nn.Module, size: int, in_chans: int = 3) -> None:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, in_chans, size, size)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
    assert torch.isfinite(loss)
    loss.backward()
    before = model.get_classifier().weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.get_classifier().weight)


# --- an independent Gabor fit (not medtransfer.init.gabor's) ---------------------------------


def _gabor(coords, amp, theta, freq, phase, sigma, gamma, x0, y0, c):
    x, y = coords[0] - x0, coords[1] - y0
    xr = x * np.cos(theta) + y * np.sin(theta)
    yr = -x * np.sin(theta) + y * np.cos(theta)
    return (
        amp
        * np.exp(-(xr**2 + gamma**2 * yr**2) / (2 * sigma**2))
        * np.cos(2 * np.pi * freq * xr + phase)
        + c
    )


@functools.lru_cache(maxsize=None)
def _grid(k: int):
    """Zero-mean unit-amplitude Gabor templates on a coarse parameter grid: (params, [G, k*k])."""
    r = np.arange(k) - (k - 1) / 2
    yy, xx = np.meshgrid(r, r, indexing="ij")
    coords = np.stack([xx.ravel(), yy.ravel()])
    params, rows = [], []
    for theta in np.linspace(0, np.pi, 12, endpoint=False):
        for freq in np.linspace(0.05, 0.5, 10):
            for phase in np.linspace(0, 2 * np.pi, 8, endpoint=False):
                for sigma in (k / 6, k / 4, k / 3):
                    g = _gabor(coords, 1, theta, freq, phase, sigma, 1, 0, 0, 0)
                    params.append((theta, freq, phase, sigma))
                    rows.append(g - g.mean())
    return coords, params, np.array(rows)


def gabor_r2(w: np.ndarray) -> float:
    """R² of a least-squares Gabor fit, started from the best point of a coarse grid."""
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    coords, params, templates = _grid(w.shape[0])
    t = w.ravel() - w.mean()
    amps = templates @ t / np.maximum((templates**2).sum(1), 1e-12)
    errs = ((amps[:, None] * templates - t) ** 2).sum(1)
    i = int(np.argmin(errs))
    theta, freq, phase, sigma = params[i]
    p0 = (amps[i], theta, freq, phase, sigma, 1.0, 0, 0, float(w.mean()))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            p, _ = curve_fit(_gabor, coords, w.ravel(), p0=p0, maxfev=800)
        resid = ((_gabor(coords, *p) - w.ravel()) ** 2).sum()
    except RuntimeError:
        resid = errs[i]
    return 1 - resid / ((w - w.mean()) ** 2).sum()


# --- every init on the small architectures ------------------------------------------------------


@pytest.mark.parametrize("init,k,options", INIT_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("arch", list(SMALL))
def test_init_properties(arch, init, k, options):
    kw = SMALL[arch]
    source = make_source(arch, **kw)
    model = create(arch, 2, **kw, **create_kwargs(init, k=k, **options))
    # Gabor with a source: see the ranges test
    record = apply(model, init, source if registry.needs_source(init) else None, k=k, seed=SEED, **options)
    json.dumps(record)  # the trainer writes it as init.json
    state = model.state_dict()
    owned = block_keys(model)
    names = [n for n, _ in blocks(model)]
    assert [b["block"] for b in record["blocks"]] == names
    assert [b["tensors"] for b in record["blocks"]] == [len(owned[n]) for n in names]
    origins = {b["block"]: b["origin"] for b in record["blocks"]}
    assert record["init"] == init and record["k"] == k and record["seed"] == SEED
    body = names[:-1]
    ri = ri_state(arch, SEED, **kw, **create_kwargs(init, k=k, **options))

    for i, name in enumerate(body):
        keys = owned[name]
        transferred = init == "WT" or (init in ("WT-ST", "WT-RI") and i < k)
        if transferred:
            assert origins[name] == "source"
            for key in keys:  # bit-for-bit, BatchNorm running statistics included
                assert torch.equal(state[key], source[key]), key
        elif init == "ST" or init == "WT-ST":
            assert origins[name] == "stats"
            assert_stats(model, state, source, keys)
        else:  # random: the architecture's own seeded init, not the source
            assert origins[name] == ("gabor" if init == "Gabor" and i == 0 else "random")
            weights = [key for key in keys if key.endswith("weight") and state[key].ndim > 1]
            for key in weights:
                if key in source and state[key].shape == source[key].shape:
                    assert not torch.equal(state[key], source[key]), key
            if origins[name] == "random":
                for key in keys:
                    assert torch.equal(state[key], ri[key]), key

    # the head is always new: random, seeded, never the source's
    assert origins[HEAD] == ("random" if init in ("RI", "Gabor") else "new_head")
    for key in owned[HEAD]:
        assert torch.equal(state[key], ri[key]), key
    train_step(model, 32)


@pytest.mark.parametrize("arch", ["cbr_small", "resnet18_28"])
def test_ri_is_seed_deterministic_and_not_the_source(arch):
    kw = SMALL[arch]
    source = make_source(arch, **kw)
    states = []
    for global_seed, seed in ((1, 7), (2, 7), (3, 8)):
        torch.manual_seed(global_seed)  # the model's own creation draws differ
        model = create(arch, 2, **kw)
        apply(model, "RI", source, seed=seed)  # a source is ignored by RI
        states.append(model.state_dict())
    a, b, c = states
    assert all(torch.equal(a[key], b[key]) for key in a)
    convs = [key for key in a if key.endswith("weight") and a[key].ndim == 4]
    assert all(not torch.equal(a[key], c[key]) for key in convs)
    assert all(not torch.equal(a[key], source[key]) for key in convs)


def test_st_is_seeded():
    source = make_source("cbr_tiny", width=0.25)
    a, b = (create("cbr_tiny", 2, width=0.25) for _ in range(2))
    apply(a, "ST", source, seed=1)
    apply(b, "ST", source, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_slim_top_has_fewer_parameters_and_keeps_the_bottom():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for arch, k in (("cbr_large_t", 2), ("resnet18_28", 3), ("resnet50_28", 4), ("resnet18", 3)):
        kw = SMALL.get(arch, {})
        full = create(arch, 2, **kw)
        slim = create(arch, 2, **kw, **create_kwargs("WT-RI", k=k, slim=0.5))
        assert count(slim) < count(full), arch
        source = make_source(arch, **kw)
        apply(slim, "WT-RI", source, k=k, seed=0, slim=0.5)
        owned = block_keys(slim)
        for name in list(owned)[:k]:
            for key in owned[name]:
                assert torch.equal(slim.state_dict()[key], source[key])


def test_input_conv_is_adapted_to_one_channel():
    source = make_source("cbr_small", width=0.25)
    model = create("cbr_small", 2, in_chans=1, width=0.25)
    record = apply(model, "WT", source, seed=0)
    # timm's rule for one input channel: the sum over the source's RGB filters
    expected = source["block1.conv.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(model.block1.conv.weight, expected)
    assert record["blocks"][0]["adapted"] == ["block1.conv.weight"]
    train_step(model, 32, in_chans=1)



@pytest.mark.parametrize("arch", ["deit_tiny_patch16_224", "vit_tiny_patch16_224"])
def test_vit_pos_embed_is_resampled_to_another_input_size(arch):
    """ImageNet weights (224 px, 14x14 patches) into a ViT built for 64 px (4x4 patches)."""
    source = make_source(arch)
    grid = source["pos_embed"][:, 1:].reshape(1, 14, 14, -1)
    # a field that is constant along x and linear along y keeps those properties when resampled
    ramp = torch.linspace(-1, 1, 14).view(1, 14, 1, 1).expand(1, 14, 14, grid.shape[-1])
    source["pos_embed"] = torch.cat([source["pos_embed"][:, :1], ramp.reshape(1, 196, -1)], dim=1)
    model = create(arch, 2, img_size=64)
    record = apply(model, "WT", source, seed=0)
    assert record["blocks"][0]["adapted"] == ["pos_embed"]
    pos = model.pos_embed.detach()
    assert pos.shape == (1, 1 + 16, source["pos_embed"].shape[-1])
    assert torch.equal(pos[:, :1], source["pos_embed"][:, :1])  # the class token's row is kept as is
    new_grid = pos[:, 1:].reshape(4, 4, -1)
    assert torch.allclose(new_grid, new_grid[:, :1], atol=1e-6)  # still constant along x
    rows = new_grid[:, 0, 0]
    assert torch.all(rows.diff() > 0) and rows.abs().max() <= 1  # still increasing along y, in range
    # what timm's own loader does for a checkpoint at another size (an independent path)
    from timm.models.vision_transformer import checkpoint_filter_fn

    expected = checkpoint_filter_fn({"pos_embed": source["pos_embed"]}, model)["pos_embed"]
    assert torch.allclose(pos, expected, atol=1e-6)
    for key in source:  # every other tensor is the source's
        if key != "pos_embed" and not key.startswith("head"):
            assert torch.equal(model.state_dict()[key], source[key]), key
    train_step(model, 64)
    st = create(arch, 2, img_size=64)
    apply(st, "ST", source, seed=0)  # the statistics path adapts the same way
    assert st.pos_embed.shape == pos.shape and not torch.equal(st.pos_embed, pos)


# --- Gabor ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["cbr_small", "cbr_tiny", "resnet18"])
def test_gabor_filters_fit_a_gabor_form(arch):
    kw = SMALL.get(arch, {})
    model = create(arch, 2, **kw)
    record = apply(model, "Gabor", seed=SEED)
    key = record["blocks"][0]["gabor"]["tensor"]
    weight = model.state_dict()[key]
    assert torch.equal(weight[:, :1].expand_as(weight), weight)  # one filter per output, all inputs
    filters = weight[:8, 0].double().numpy()
    r2 = [gabor_r2(f) for f in filters]
    assert min(r2) > 0.95, r2
    # the fit discriminates: the architecture's random filters are not Gabors
    ri_weight = ri_state(arch, SEED, **kw)[key]
    random_filters = ri_weight[:4].mean(dim=1).double().numpy()
    assert np.median([gabor_r2(f) for f in random_filters]) < 0.8
    # scaled like the weights it replaces
    ri_std = ri_weight.std()
    assert torch.isclose(weight.std(), ri_std, rtol=1e-4)


def test_gabor_ranges_follow_the_source_filters():
    torch.manual_seed(0)
    model = create("cbr_small", 2, width=0.5)  # 16 first-layer filters of 7×7
    source = make_source("cbr_small", width=0.5)
    narrow = {"frequency": (0.2, 0.25), "sigma": (0.2, 0.25), "gamma": (0.8, 0.9)}
    bank, _ = G.gabor_bank(
        tuple(source["block1.conv.weight"].shape), torch.Generator().manual_seed(5), narrow
    )
    source["block1.conv.weight"] = bank
    record = apply(model, "Gabor", source, seed=0)
    info = record["blocks"][0]["gabor"]
    assert info["ranges_from"] == "source filters"
    for name, (lo, hi) in narrow.items():
        got_lo, got_hi = info["ranges"][name]
        assert lo - 0.01 <= got_lo <= got_hi <= hi + 0.01, (name, info["ranges"][name])


# --- large timm architectures -----------------------------------------------------------------


@pytest.mark.parametrize("arch", list(LARGE))
def test_large_architectures_wt_st(arch):
    source = make_source(arch)
    model = create(arch, 2)
    owned = block_keys(model)

    k = 2
    record = apply(model, "WT-ST", source, k=k, seed=0)
    state = model.state_dict()
    names = list(owned)
    assert [b["origin"] for b in record["blocks"]] == ["source"] * k + ["stats"] * (
        len(names) - 1 - k
    ) + ["new_head"]
    for name in names[:k]:
        for key in owned[name]:
            assert torch.equal(state[key], source[key]), key
    for name in names[k:-1]:
        assert_stats(model, state, source, owned[name])
    if arch not in STEP_COVERED_BY:
        train_step(model, LARGE[arch])


# --- bad input --------------------------------------------------------------------------------


def test_registry_names():
    assert INITS.names() == sorted(["RI", "WT", "ST", "WT-ST", "WT-RI", "Gabor"])


def test_source_of_another_architecture_is_refused():
    model = create("cbr_tiny", 2, width=0.25)
    with pytest.raises(WeightsError) as err:
        apply(model, "WT", make_source("cbr_small", width=0.25))
    msg = str(err.value)
    assert "another architecture" in msg and "block1.conv.weight" in msg and "(8, 3, 7, 7)" in msg
    with pytest.raises(WeightsError, match="another architecture"):
        apply(model, "ST", make_source("cbr_tiny", width=0.5))
    extra = make_source("cbr_tiny", width=0.25)
    extra["block9.conv.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="block9.conv.weight"):
        apply(model, "WT", extra)


@pytest.mark.parametrize(
    "init,source,k,options,match",
    [
        ("WT", None, None, {}, "needs a weight source"),
        ("WT-ST", "src", None, {}, "needs k"),
        ("WT-ST", "src", 99, {}, "out of range"),
        ("WT-ST", "src", [1, 2], {}, "one integer"),
        ("WT", "src", 2, {}, "k applies only"),
        ("XX", None, None, {}, "unknown initialisation"),
        ("WT", "src", None, {"slim": 0.5}, "no option"),
        ("WT-RI", "src", 2, {"slim": 0.5}, "create_kwargs"),
    ],
)
def test_config_errors(init, source, k, options, match):
    model = create("cbr_tiny", 2, width=0.25)
    src = make_source("cbr_tiny", width=0.25) if source else None
    with pytest.raises(ConfigError, match=match):
        apply(model, init, src, k=k, **options)
