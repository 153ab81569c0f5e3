"""Training augmentation and evaluation views (train.augment, train.eval_crop, train.tta).

Each op is checked against an independent computation: torchvision's functionals (rotate,
resized_crop, adjust_*, Resize + CenterCrop, TenCrop), scipy.ndimage.affine_transform (what
Keras's ImageDataGenerator runs), the luminance formula; the draws against a transcription of the
loader's stream before this module existed, and against torchvision's RandomResizedCrop sampler.
"""

from __future__ import annotations

import copy
import os
import signal

import kornia
import numpy as np
import pytest
import scipy.ndimage
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from conftest import REPO, tiny_config
from test_data_loader import make_cache

from medtransfer.augmentation import AUGMENT_KEYS, resolve_augment
from medtransfer.data import make_loader, read_split
from medtransfer.data.augment import Augmenter, crop_matrices, rrc_boxes
from medtransfer.data.loader import _AUGMENT_STREAM, epoch_generator
from medtransfer.errors import ConfigError
from medtransfer.study import DEFAULT_TRAINING, Study, deep_merge, validate_config
from medtransfer.training.precision import Precision
from medtransfer.training.trainer import Preempted, evaluate, fit

FULL = {"crop_padding": 1, "random_resized_crop": {"scale": [0.5, 1.0]}, "vflip": 0.5, "hflip": 0.5,
        "rotation": 10, "affine": {"translate": 0.1, "shear": 5, "scale": 0.1},
        "color_jitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.1, "hue": 0.1, "p": 0.5},
        "grayscale": 0.2, "fill": "nearest"}
RAW = {"normalize": {"mean": 0.0, "std": 1.0}}  # batches are images / 255


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("rgb") / "rgb.h5", channels=3, size=20, n=(40, 6, 6), seed=2)


@pytest.fixture(scope="module")
def gray(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("gray") / "gray.h5", channels=1, size=20, n=(40, 6, 6), seed=3)


def batches(loader):
    return [x.clone() for x, _ in loader]


def images_of(cache, split="train"):
    return torch.from_numpy(read_split(cache, split)[0]).float()


# --- the draws ---------------------------------------------------------------------------------

def test_crop_and_flip_draw_the_stream_of_before_and_true_is_a_probability_of_one_half(rgb):
    """The loader before probabilities: per batch, randint(0, 2p + 1, (B, 2)) crop offsets, then
    rand(B) < 0.5 flips, from one generator per (seed, epoch). Transcribed here per image."""
    images = images_of(rgb)
    kwargs = dict(batch_size=16, shuffle=True, seed=4, channels=3, **RAW)
    for hflip in (True, 0.5):
        loader = make_loader(rgb, "train", augment={"hflip": hflip, "crop_padding": 2}, **kwargs)
        loader.set_epoch(3)
        got = [torch.round(x * 255) for x, _ in loader]
        generator = epoch_generator(4, 3, _AUGMENT_STREAM)
        for positions, batch in zip(loader._batches(), got, strict=True):
            offsets = torch.randint(0, 5, (len(positions), 2), generator=generator)
            flips = torch.rand(len(positions), generator=generator) < 0.5
            for i, position in enumerate(positions):
                padded = torch.nn.functional.pad(images[position], (2, 2, 2, 2))
                top, left = offsets[i].tolist()
                expected = padded[:, top:top + 20, left:left + 20]
                if flips[i]:
                    expected = torch.flip(expected, [-1])
                assert torch.equal(batch[i], expected)


def test_draws_are_a_function_of_seed_and_epoch_for_every_op(rgb):
    a = make_loader(rgb, "train", batch_size=16, shuffle=True, seed=1, augment=FULL, **RAW)
    b = make_loader(rgb, "train", batch_size=16, shuffle=True, seed=1, augment=FULL, **RAW)
    a.set_epoch(2)
    b.set_epoch(2)
    first = batches(a)
    assert all(torch.equal(x, y) for x, y in zip(first, batches(b), strict=True))
    assert all(torch.equal(x, y) for x, y in zip(first, batches(a), strict=True))  # the same epoch again
    a.set_epoch(3)
    assert not any(torch.equal(x, y) for x, y in zip(first, batches(a), strict=True))
    assert all(x.shape == (len(x), 3, 20, 20) and torch.isfinite(x).all() for x in first)


def test_each_process_gets_its_share_of_the_global_batch_draws(rgb):
    """Under DDP every process draws for the global batch and keeps its images' draws, so the
    processes' batches interleaved are the one-process batch, for every op."""
    common = dict(batch_size=8, shuffle=True, seed=5, augment=FULL, **RAW)
    single = make_loader(rgb, "train", **common)
    ranks = [make_loader(rgb, "train", world=(rank, 2), **common) for rank in range(2)]
    for loader in (single, *ranks):
        loader.set_epoch(1)
    for (x, _), (x0, _), (x1, _) in zip(single, *ranks, strict=True):
        torch.testing.assert_close(x[0::2], x0, rtol=0, atol=1e-6)
        torch.testing.assert_close(x[1::2], x1, rtol=0, atol=1e-6)


def test_a_run_preempted_mid_epoch_resumes_with_exactly_the_same_augmented_batches(rgb, tmp_path):
    """SIGTERM in the middle of an epoch, rerun: the same weights as a run never stopped."""

    class Stopping:
        def __init__(self, loader, at=None):
            self.loader, self.at = loader, at

        def set_epoch(self, epoch):
            self.loader.set_epoch(epoch)
            self.epoch = epoch

        def __len__(self):
            return len(self.loader)

        def __iter__(self):
            for batch, item in enumerate(self.loader):
                if (self.epoch, batch) == self.at:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield item

    def run(name, at=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 20 * 20, 3))
        train = make_loader(rgb, "train", batch_size=8, shuffle=True, seed=2, augment=FULL, **RAW)
        val = make_loader(rgb, "val", batch_size=8, shuffle=False, **RAW)
        training = deep_merge(DEFAULT_TRAINING, {"epochs": 3, "batch_size": 8, "select_on": "val_loss"})
        fit(model, Stopping(train, at), val, task="multiclass", training=training, device=torch.device("cpu"),
            checkpoint_path=tmp_path / name, spec_hash="x", progress=False)
        return model

    reference = run("a.pt")
    with pytest.raises(Preempted):
        run("b.pt", at=(1, 2))
    resumed = run("b.pt")
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


# --- each op against an independent computation ----------------------------------------------

def apply(augment, x, seed=0):
    return Augmenter(augment, x.shape[-1])(x, torch.Generator().manual_seed(seed), len(x), slice(None))


def test_forced_flips_are_torch_flips():
    x = torch.rand(5, 3, 9, 11) * 255
    assert torch.equal(apply({"vflip": 1.0}, x), torch.flip(x, [-2]))
    assert torch.equal(apply({"hflip": 1.0}, x), torch.flip(x, [-1]))
    assert torch.equal(apply({"hflip": 1.0, "vflip": 1.0}, x), torch.flip(x, [-2, -1]))
    halves = apply({"hflip": 0.5}, torch.rand(400, 1, 2, 2))
    assert halves.shape == (400, 1, 2, 2)


def test_rotation_is_torchvision_rotate_by_the_drawn_angle():
    x = torch.rand(6, 3, 17, 17) * 255
    augmenter = Augmenter({"rotation": 30}, 17)
    out = augmenter(x, torch.Generator().manual_seed(7), 6, slice(None))
    angles = augmenter.affine_params(torch.Generator().manual_seed(7), 6, 17, 17)[:, 0]
    assert angles.abs().max() <= 30 and len(set(angles.tolist())) == 6
    for image, angle, got in zip(x, angles, out, strict=True):
        expected = TF.rotate(image, float(angle), interpolation=T.InterpolationMode.BILINEAR)
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)


@pytest.mark.parametrize("fill,mode", [("zeros", "grid-constant"), ("nearest", "nearest")])
def test_affine_is_the_keras_transform_that_scipy_ndimage_computes(fill, mode):
    """Keras's apply_affine_transform: output pixel p reads the input at c + R(Sh Z (p - c) + t),
    through scipy.ndimage.affine_transform (order 1); here in (row, col) coordinates."""
    h, w = 15, 19
    x = torch.rand(4, 2, h, w, dtype=torch.float64) * 255
    settings = {"rotation": 20, "affine": {"translate": 0.2, "shear": 15, "scale": 0.2}, "fill": fill}
    augmenter = Augmenter(settings, w)
    out = augmenter(x.float(), torch.Generator().manual_seed(3), 4, slice(None))
    params = augmenter.affine_params(torch.Generator().manual_seed(3), 4, h, w)
    assert (params[:, 1].abs() <= 0.2 * w).all() and (params[:, 4:] >= 0.8).all() and (params[:, 4:] <= 1.2).all()
    for image, (angle, tx, ty, shear, zx, zy), got in zip(x, params.tolist(), out, strict=True):
        t, s = np.deg2rad(angle), np.deg2rad(shear)
        rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        a_xy = rotation @ np.array([[1, -np.sin(s)], [0, np.cos(s)]]) @ np.diag([zx, zy])
        c_xy = np.array([(w - 1) / 2, (h - 1) / 2])
        offset_xy = c_xy + rotation @ np.array([tx, ty]) - a_xy @ c_xy
        swap = np.array([[0, 1], [1, 0]])
        expected = np.stack([scipy.ndimage.affine_transform(channel.numpy(), swap @ a_xy @ swap, swap @ offset_xy,
                                                            order=1, mode=mode, cval=0.0) for channel in image])
        np.testing.assert_allclose(got.numpy(), expected, atol=0.02)


def test_random_resized_crop_boxes_follow_torchvisions_sampler():
    """Every box lies in the image with its area and aspect ratio in range (or is torchvision's
    centred fallback); the area fractions have the distribution of torchvision's own sampler,
    also with Matsoukas et al.'s scale [0.8, 1.2] where most draws are rejected."""
    h, w, n = 24, 40, 4000  # wider than ratio allows: the fallback is a centred 24 x 32 box
    for scale, ratio in (((0.08, 1.0), (3 / 4, 4 / 3)), ((0.8, 1.2), (3 / 4, 4 / 3))):
        top, left, bh, bw = rrc_boxes(torch.Generator().manual_seed(0), n, h, w, scale, ratio).T.double()
        assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
        fraction = bh * bw / (h * w)
        fallback = (bh == h) & (bw == 32) & (top == 0) & (left == 4)
        # w and h are rounded: some box of w +- 0.5, h +- 0.5 has the drawn area and aspect ratio
        ok = (((bw + 0.5) / (bh - 0.5) >= ratio[0]) & ((bw - 0.5) / (bh + 0.5) <= ratio[1])
              & ((bw + 0.5) * (bh + 0.5) >= scale[0] * h * w) & ((bw - 0.5) * (bh - 0.5) <= scale[1] * h * w))
        assert (ok | fallback).all()
        torch.manual_seed(0)
        reference = torch.tensor([np.prod(T.RandomResizedCrop.get_params(torch.zeros(1, h, w), list(scale),
                                                                            list(ratio))[2:]) / (h * w)
                                  for _ in range(n)], dtype=torch.float64)
        assert abs(fraction.mean() - reference.mean()) < 0.015
        assert abs(fraction.std() - reference.std()) < 0.015
        largest = 24 * 32 / (h * w)  # the largest box of an allowed aspect ratio, and the fallback
        assert abs((fraction == largest).double().mean() - (reference == largest).double().mean()) < 0.02


@pytest.mark.parametrize("box", [(3, 5, 20, 22), (0, 0, 24, 32), (6, 2, 9, 7)])
def test_random_resized_crop_resamples_the_box_as_torchvision_resized_crop(box):
    """Bilinear without antialiasing, on the grid of torchvision's resized_crop (the border pixel
    where the box reaches beyond the image's centres)."""
    x = torch.rand(1, 3, 24, 32) * 255
    matrices = crop_matrices(torch.tensor([box]), 16)
    got = kornia.geometry.transform.warp_affine(x, matrices.float(), (16, 16), mode="bilinear",
                                                padding_mode="border")
    expected = TF.resized_crop(x, *box, [16, 16], interpolation=T.InterpolationMode.BILINEAR, antialias=False)
    if box[2] < 16:  # upscaled: torchvision clamps at the box's edge, the warp reads the pixels beyond it
        got, expected = got[..., 2:-2, 2:-2], expected[..., 2:-2, 2:-2]
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)


def test_random_resized_crop_in_the_loader_gives_the_input_size(rgb):
    loader = make_loader(rgb, "train", batch_size=16, shuffle=True, image_size=32,
                         augment={"random_resized_crop": True}, **RAW)
    x, _ = next(iter(loader))
    assert x.shape == (16, 3, 32, 32) and x.min() >= 0 and x.max() <= 1


def test_brightness_and_contrast_are_torchvisions_with_a_factor_in_range_per_image():
    x = torch.rand(30, 3, 8, 8) * 200 + 20
    for name, function in (("brightness", TF.adjust_brightness), ("contrast", TF.adjust_contrast)):
        out = apply({"color_jitter": {name: 0.3}}, x) / 255
        factors = []
        for image, got in zip(x / 255, out, strict=True):
            # the factor torchvision would need: least squares on the pixels (clamping aside)
            grid = torch.linspace(0.7, 1.3, 601)
            errors = torch.stack([(function(image, float(f)) - got).abs().max() for f in grid])
            factors.append(float(grid[errors.argmin()]))
            assert errors.min() < 2e-3
        assert min(factors) >= 0.7 and max(factors) <= 1.3 and len(set(factors)) > 10


def test_saturation_keeps_luminance_hue_keeps_value_and_both_leave_gray_images_alone():
    x = torch.rand(20, 3, 8, 8) * 150 + 50
    saturated = apply({"color_jitter": {"saturation": 0.5}}, x)
    luminance = lambda t: 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]
    torch.testing.assert_close(luminance(saturated), luminance(x), rtol=0, atol=1e-3)
    assert not torch.allclose(saturated, x)
    hued = apply({"color_jitter": {"hue": 0.3}}, x)
    torch.testing.assert_close(hued.amax(1), x.amax(1), rtol=0, atol=1e-2)  # HSV value is max(R, G, B)
    torch.testing.assert_close(hued.amin(1), x.amin(1), rtol=0, atol=1e-2)
    assert (hued - x).abs().max() > 10
    gray = torch.rand(6, 1, 8, 8) * 255
    assert torch.equal(apply({"color_jitter": {"saturation": 0.5, "hue": 0.3}}, gray), gray)


def test_grayscale_is_the_luminance_in_every_channel_and_a_no_op_on_gray_images():
    x = torch.rand(8, 3, 6, 6) * 255
    expected = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None].expand(-1, 3, -1, -1)
    torch.testing.assert_close(apply({"grayscale": 1.0}, x), expected, rtol=0, atol=1e-3)
    gray = torch.rand(8, 1, 6, 6) * 255
    assert torch.equal(apply({"grayscale": 1.0}, gray), gray)


def test_segmentation_masks_move_with_the_images_and_stay_class_ids():
    image = torch.zeros(4, 1, 16, 16)
    image[:, :, 4:9, 3:12] = 255
    x = torch.cat([image, (image > 0).float() * 2], dim=1)  # the mask is class 2 where the image is bright
    augmenter = Augmenter({"vflip": 1.0, "rotation": 25, "random_resized_crop": {"scale": [0.6, 1.0]}}, 16)
    out = augmenter(x, torch.Generator().manual_seed(1), 4, slice(None), mask=True)
    assert set(out[:, 1].unique().tolist()) <= {0.0, 2.0}
    bright, labelled = out[:, 0] > 200, out[:, 1] == 2
    assert (bright & ~labelled).sum() == 0 and labelled.sum() > 0


# --- evaluation views -----------------------------------------------------------------------

def test_eval_crop_is_torchvision_resize_then_centre_crop(rgb):
    loader = make_loader(rgb, "val", batch_size=4, shuffle=False, image_size=14, eval_crop=0.875,
                         resize_mode="bilinear", **RAW)
    got = torch.cat([x for x, _ in loader])
    expected = T.Compose([T.Resize(16, antialias=True), T.CenterCrop(14)])(images_of(rgb, "val")) / 255
    assert got.shape == (6, 3, 14, 14)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_tencrop_scores_are_the_mean_probability_of_torchvisions_ten_crops(tmp_path, task):
    cache = make_cache(tmp_path / "c.h5", channels=3, size=20, n=(12, 5, 7), task=task)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3))
    loader = make_loader(cache, "test", batch_size=3, shuffle=False, image_size=14, eval_crop=0.875, tta="tencrop",
                         resize_mode="bilinear", **RAW)
    result = evaluate(model, loader, task, torch.device("cpu"), Precision(None, False))
    resized = T.Resize(16, antialias=True)(images_of(cache, "test")) / 255
    activation = torch.sigmoid if task == "multilabel" else (lambda z: torch.softmax(z, dim=1))
    with torch.no_grad():
        expected = torch.stack([torch.stack([activation(model(crop[None]))[0] for crop in TF.ten_crop(image, [14, 14])])
                                .mean(0) for image in resized])
    np.testing.assert_allclose(result.scores, expected.numpy(), atol=1e-5)


def test_tencrop_needs_a_larger_image_than_the_crop(rgb):
    with pytest.raises(ConfigError, match="eval_crop"):
        make_loader(rgb, "test", batch_size=4, shuffle=False, tta="tencrop", **RAW)  # 20 px crops of 20 px
    loader = make_loader(rgb, "test", batch_size=4, shuffle=False, image_size=16, tta="tencrop", **RAW)
    assert next(iter(loader))[0].shape == (4, 10, 3, 16, 16)  # crops of the cached 20 px image


# --- plan-time checks ------------------------------------------------------------------------

@pytest.mark.parametrize("augment,message", [
    ({"mixup": 0.2}, r"train.augment: unknown keys \['mixup'\]; allowed: crop_padding, random_resized_crop"),
    ({"hflip": 1.5}, r"train.augment.hflip: 1.5; give a probability in \[0, 1\] \(true = 0.5"),
    ({"affine": {"rotate": 3}}, r"train.augment.affine: unknown keys \['rotate'\]; allowed: translate, shear"),
    ({"color_jitter": {"hue": 0.7}}, r"train.augment.color_jitter.hue: 0.7"),
    ({"random_resized_crop": {"scale": [1.0, 0.5]}}, r"random_resized_crop.scale: \[1.0, 0.5\]"),
    ({"fill": "reflect"}, r"train.augment.fill: 'reflect'; allowed: zeros, nearest"),
])
def test_a_bad_augment_key_or_value_names_itself_and_the_allowed_ones_when_planning(augment, message):
    config = tiny_config()
    config["train"]["augment"] = augment
    with pytest.raises(ConfigError, match=message):
        Study(config)


def test_bad_evaluation_views_and_tta_on_segmentation_stop_the_plan():
    config = tiny_config()
    config["train"]["tta"] = "fivecrop"
    with pytest.raises(ConfigError, match=r"train.tta: 'fivecrop'; allowed: tencrop"):
        Study(config)
    config["train"].pop("tta")
    config["train"]["eval_crop"] = 1.3
    with pytest.raises(ConfigError, match=r"train.eval_crop: 1.3; give a fraction in \(0, 1\]"):
        Study(config)


def test_the_issues_augment_block_plans_and_reaches_the_spec_only_when_set():
    config = tiny_config()
    plain = Study(copy.deepcopy(config))
    assert "eval_crop" not in plain.run_spec(plain.runs[0])["training"]
    config["train"].update(augment={"hflip": 0.5, "vflip": 0.5, "random_resized_crop": {
        "scale": [0.8, 1.0], "ratio": [0.75, 1.333]}, "rotation": 10, "affine": {
        "translate": 0.1, "shear": 0.1, "scale": 0.1}, "color_jitter": {
        "brightness": 0.2, "contrast": 0.2, "saturation": 0.1, "hue": 0.1, "p": 0.2}, "grayscale": 0.2,
        "crop_padding": 4}, eval_crop=0.875, tta="tencrop")
    validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml")
    study = Study(config)
    training = study.run_spec(study.runs[0])["training"]
    assert training["eval_crop"] == 0.875 and training["tta"] == "tencrop" and training["augment"]["rotation"] == 10
    assert set(resolve_augment(training["augment"])) == set(AUGMENT_KEYS)
