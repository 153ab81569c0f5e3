"""Segmentation data: masks in the cache, the `masks` format, the synthetic lesion_segmentation
task, segmentation fractions and the loader's masks (medtransfer.data)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from medtransfer.cli import main as cli_main
from medtransfer.data import (SCHEMA_VERSION, build_cache, make_loader, read_dataset, read_info, read_masks,
                              read_split, segmentation_subset, train_subset)
from medtransfer.data.formats.synthetic import TASKS, generate, generate_segmentation
from medtransfer.errors import ConfigError, DataError

# --------------------------------------------------------------------------- files on disk


def write_pair(folder_images, folder_masks, stem, image, mask, mask_stem=None, image_ext=".png", mask_ext=".png"):
    """Write a gray image (uint8 [H, W]) and its mask (uint8 [H, W]) as files."""
    folder_images.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder_images / f"{stem}{image_ext}")
    if mask is not None:
        folder_masks.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(folder_masks / f"{mask_stem or stem}{mask_ext}")


def random_pair(rng, shape=(12, 10), foreground=True):
    """An image whose bright pixels are exactly the mask's foreground (so a pixel's class can be
    read off the image after any resize or augmentation)."""
    mask = (rng.random(shape) < 0.3) if foreground else np.zeros(shape, bool)
    image = np.where(mask, rng.integers(180, 256, shape), rng.integers(0, 80, shape)).astype(np.uint8)
    return image, mask


@pytest.fixture
def lung_set(tmp_path):
    """Montgomery-like: CXR_png/ and left/right mask folders (0/255), same stems."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mont"
    truth = {}
    for i in range(30):
        image, mask = random_pair(rng, foreground=i % 5 != 0)
        left, right = mask.copy(), mask.copy()
        left[:, 5:], right[:, :5] = False, False
        stem = f"MCUCXR_{i:04d}_0"
        write_pair(root / "CXR_png", root / "ManualMask" / "leftMask", stem, image, left.astype(np.uint8) * 255)
        write_pair(root / "CXR_png", root / "ManualMask" / "rightMask", stem, image, right.astype(np.uint8) * 255)
        truth[stem] = (image, mask)
    return root, truth


def lung_entry(root, **extra):
    return {"format": "masks", "root": str(root), "images": "CXR_png",
            "masks": ["ManualMask/leftMask", "ManualMask/rightMask"], "classes": ["background", "lung"],
            "size": 12, "channels": 1, "resize": "nearest", "workers": 2, **extra}


def test_masks_format_merges_left_and_right_and_pairs_every_image(lung_set, tmp_path):
    root, truth = lung_set
    out = tmp_path / "lungs.h5"
    build_cache("lungs", lung_entry(root), out, progress=False)
    info = read_info(out)
    assert info.task == "segmentation" and info.class_names == ["background", "lung"]
    assert sum(info.split_sizes.values()) == 30 and "stratified by foreground" in info.attributes["split_policy"]
    rows = 0
    for split in ("train", "val", "test"):
        images, labels = read_split(out, split)
        masks = read_masks(out, split)
        assert masks.dtype == np.uint8 and masks.shape == (len(images), 1, 12, 12)
        # independent of the pairing code: each cached image's own bright pixels are its mask
        # (the union of its left and right files), resized like it with nearest neighbour
        np.testing.assert_array_equal(masks[:, 0], (images[:, 0] >= 180).astype(np.uint8))
        np.testing.assert_array_equal(labels, masks.reshape(len(masks), -1).any(1))
        rows += len(images)
    assert rows == 30


def test_drive_layout_split_folders_and_key_regex(tmp_path):
    """DRIVE: training/ and test/ folders, images 21_training.tif, masks 1st_manual/21_manual1.gif."""
    rng = np.random.default_rng(1)
    root = tmp_path / "DRIVE"
    for split, ids in (("training", range(21, 31)), ("test", range(1, 6))):
        for i in ids:
            image, mask = random_pair(rng, (14, 13))
            name = "training" if split == "training" else "test"
            write_pair(root / split / "images", root / split / "1st_manual", f"{i:02d}_{name}", image,
                       mask.astype(np.uint8) * 255, mask_stem=f"{i:02d}_manual1", image_ext=".tif", mask_ext=".gif")
    entry = {"format": "masks", "root": str(root), "splits": {"train": "training", "test": "test"},
             "images": "images", "masks": "1st_manual", "key": r"^(\d+)_", "classes": ["background", "vessel"],
             "size": 14, "channels": 1, "resize": "nearest", "val_fraction": 0.2}
    raw = read_dataset("drive", entry)
    assert {s: len(raw.splits[s][1]) for s in raw.splits} == {"train": 8, "val": 2, "test": 5}
    images = np.asarray(raw.splits["test"][0])
    masks = np.asarray(raw.masks["test"])
    np.testing.assert_array_equal(masks[:, 0], (images[:, 0] >= 180).astype(np.uint8))


def test_csv_of_pairs_with_its_own_splits(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "siim"
    lines = ["image,mask,split"]
    for i in range(12):
        image, mask = random_pair(rng, (16, 16), foreground=i % 3 == 0)  # most pneumothorax masks are empty
        write_pair(root / "png_images", root / "png_masks", f"{i}", image, mask.astype(np.uint8) * 255)
        lines.append(f"png_images/{i}.png,png_masks/{i}.png,{['train', 'valid', 'test'][i % 3]}")
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    entry = {"format": "masks", "root": str(root), "file": "pairs.csv", "image_column": "image",
             "mask_column": "mask", "split_column": "split", "classes": ["background", "pneumothorax"],
             "size": 16, "channels": 1}
    raw = read_dataset("siim", entry)
    assert raw.attributes["split_policy"] == "source splits"
    assert [len(raw.splits[s][1]) for s in ("train", "val", "test")] == [4, 4, 4]
    assert raw.splits["train"][1].tolist() == [1, 1, 1, 1] and raw.splits["val"][1].tolist() == [0, 0, 0, 0]


def test_multiclass_mask_values_map_to_class_ids(tmp_path):
    root = tmp_path / "organs"
    mask = np.array([[0, 50, 100], [100, 50, 0]], np.uint8)
    for i in range(10):
        write_pair(root / "images", root / "masks", f"a{i}", np.full((2, 3), 7, np.uint8), mask)
    entry = {"format": "masks", "root": str(root), "classes": ["background", "liver", "kidney"],
             "mask_values": [0, 50, 100], "size": 3, "resize": "nearest", "val_fraction": 0.2, "test_fraction": 0.2}
    raw = read_dataset("organs", entry)
    np.testing.assert_array_equal(np.asarray(raw.masks["train"])[0, 0, :2], [[0, 1, 2], [2, 1, 0]])


# --------------------------------------------------------------------------- bad input


def assert_no_cache(out):
    assert not out.exists(), "a failed conversion must leave no cache file"


def test_mask_of_another_size_names_the_file_and_writes_nothing(lung_set, tmp_path):
    root, _ = lung_set
    bad = root / "ManualMask" / "rightMask" / "MCUCXR_0007_0.png"
    Image.fromarray(np.zeros((12, 11), np.uint8)).save(bad)
    out = tmp_path / "lungs.h5"
    with pytest.raises(DataError, match=r"mask .*rightMask/MCUCXR_0007_0\.png is 11x12 px but its image .* is 10x12"):
        build_cache("lungs", lung_entry(root), out, progress=False)
    assert_no_cache(out)


def test_mask_value_outside_the_classes_names_the_file_and_the_key(lung_set, tmp_path):
    root, _ = lung_set
    bad = root / "ManualMask" / "leftMask" / "MCUCXR_0003_0.png"
    mask = np.asarray(Image.open(bad)).copy()
    mask[0, 0] = 128  # e.g. an antialiased or JPEG-compressed mask
    Image.fromarray(mask).save(bad)
    out = tmp_path / "lungs.h5"
    with pytest.raises(DataError, match=r"leftMask/MCUCXR_0003_0\.png has value\(s\) \[128\].*\[0, 255\].*mask_values"):
        build_cache("lungs", lung_entry(root), out, progress=False)
    assert_no_cache(out)


def test_image_without_a_mask_names_it_unless_skipped(lung_set, tmp_path):
    root, _ = lung_set
    (root / "ManualMask" / "rightMask" / "MCUCXR_0011_0.png").unlink()
    out = tmp_path / "lungs.h5"
    with pytest.raises(DataError, match=r"image .*MCUCXR_0011_0\.png has no mask in .*rightMask.*missing_masks: skip"):
        build_cache("lungs", lung_entry(root), out, progress=False)
    assert_no_cache(out)
    raw = read_dataset("lungs", lung_entry(root, missing_masks="skip"))
    assert sum(len(raw.splits[s][1]) for s in raw.splits) == 29
    assert raw.attributes["skipped_without_mask"]["count"] == 1


def test_bad_input_through_the_cli_is_one_line_exit_2(lung_set, tmp_path, capsys):
    import json

    root, _ = lung_set
    Image.fromarray(np.full((12, 10), 3, np.uint8)).save(root / "ManualMask" / "leftMask" / "MCUCXR_0002_0.png")
    out = tmp_path / "lungs.h5"
    spec = {"name": "lungs", "entry": lung_entry(root), "out": str(out)}
    assert cli_main(["preprocess", "--spec", json.dumps(spec), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MCUCXR_0002_0.png" in err[0] and "Traceback" not in err[0]
    assert_no_cache(out)


def test_bad_keys_are_config_errors(lung_set):
    root, _ = lung_set
    with pytest.raises(ConfigError, match="mask_values"):
        read_dataset("lungs", lung_entry(root, mask_values=[0]))
    with pytest.raises(ConfigError, match="missing_masks.*error, skip"):
        read_dataset("lungs", lung_entry(root, missing_masks="ignore"))
    with pytest.raises(ConfigError, match="classes"):
        read_dataset("lungs", lung_entry(root, classes=["lung"]))


def test_a_version_1_classification_cache_is_read_as_it_is(tmp_path):
    """Version 2 changed nothing for classification: an old cache needs no new conversion."""
    out = tmp_path / "old.h5"
    build_cache("plain", synthetic_entry(task="lesion_presence"), out, progress=False)
    images, labels = read_split(out, "val")
    with h5py.File(out, "r+") as h5:
        h5.attrs["schema_version"] = 1
    old_images, old_labels = read_split(out, "val")
    assert read_info(out).task == "binary" and np.array_equal(images, old_images)
    assert np.array_equal(labels, old_labels)


def test_old_schema_cache_is_refused_with_the_fix(tmp_path):
    out = tmp_path / "old.h5"
    build_cache("seg", synthetic_entry(), out, progress=False)
    with h5py.File(out, "r+") as h5:
        h5.attrs["schema_version"] = 1
    assert SCHEMA_VERSION == 2
    with pytest.raises(DataError, match=r"schema version 1, this medtransfer reads version 2; delete it and rerun"):
        read_info(out)


# --------------------------------------------------------------------------- synthetic task


def synthetic_entry(**extra):
    return {"format": "synthetic", "task": "lesion_segmentation", "n_train": 300, "n_val": 40, "n_test": 40,
            "size": 32, **extra}


def test_lesion_segmentation_masks_are_up_to_three_lesion_footprints():
    images, masks, labels = generate_segmentation("lesion_segmentation", 512, 32)
    assert images.shape == masks.shape == (512, 1, 32, 32) and masks.dtype == np.uint8
    np.testing.assert_array_equal(labels, masks.reshape(512, -1).any(1))
    assert labels.mean() == pytest.approx(0.75, abs=0.01), "counts 0..3 are balanced: a quarter has no lesion"
    components = [ndimage.label(m[0])[1] for m in masks]
    assert max(components) <= 3 and min(c for c in components if c) >= 1
    area = masks.reshape(512, -1).sum(1)
    assert area[labels == 1].min() >= 5 and area.max() <= 3 * np.pi * (3.2 * 1.25) ** 2 + 10
    # the lesions are visible: pixels under the mask differ from the organ around them
    inside = np.abs(images.astype(float) - ndimage.uniform_filter(images.astype(float), (1, 1, 11, 11)))
    assert inside[masks == 1].mean() > 1.5 * inside[masks == 0].mean()


def test_lesion_segmentation_is_deterministic_and_prefix_stable():
    a, ma, _ = generate_segmentation("lesion_segmentation", 300, 32, seed=3)
    b, mb, _ = generate_segmentation("lesion_segmentation", 100, 32, seed=3)
    np.testing.assert_array_equal(a[:100], b)
    np.testing.assert_array_equal(ma[:100], mb)
    images, labels = generate("lesion_segmentation", 100, 32, seed=3)
    np.testing.assert_array_equal(images, b)
    assert list(TASKS)[:3] == ["natural_shapes", "lesion_presence", "lesion_grade"], \
        "new tasks go last: a task's index seeds its images"


def test_synthetic_cache_holds_the_generated_masks_resized_by_repetition(tmp_path):
    from medtransfer.data.streaming import write_cache

    out = tmp_path / "seg.h5"
    build_cache("seg", synthetic_entry(size=16), out, progress=False)
    _, masks16, _ = generate_segmentation("lesion_segmentation", 40, 16, split="test")
    np.testing.assert_array_equal(read_masks(out, "test"), masks16)
    # a cache at twice the size: masks are class ids, so nearest neighbour = each pixel repeated 2 x 2
    # (also with bilinear image resizing)
    big = tmp_path / "seg32.h5"
    write_cache("seg", {"size": 32, "resize": "bilinear"}, read_dataset("seg", synthetic_entry(size=16)), big,
                progress=False)
    np.testing.assert_array_equal(read_masks(big, "test"), np.repeat(np.repeat(masks16, 2, -1), 2, -2))


# --------------------------------------------------------------------------- fractions


def test_segmentation_fractions_are_nested_seeded_and_keep_a_foreground_image():
    foreground = np.zeros(200, bool)
    foreground[[17, 150]] = True
    subsets = {f: segmentation_subset(foreground, f, seed=4) for f in (0.01, 0.1, 0.5, 1.0)}
    for f, subset in subsets.items():
        assert foreground[subset].any() and len(np.unique(subset)) == len(subset)
        assert len(subset) in (max(1, round(f * 200)), max(1, round(f * 200)) + 1)
    for small, large in ((0.01, 0.1), (0.1, 0.5), (0.5, 1.0)):
        assert set(subsets[small]) <= set(subsets[large])
    np.testing.assert_array_equal(segmentation_subset(foreground, 0.1, 4), subsets[0.1])
    assert not np.array_equal(segmentation_subset(foreground, 0.1, 5), subsets[0.1])
    # not stratified: the proportion of foreground is whatever the permutation gives
    many = np.random.default_rng(0).random(1000) < 0.5
    assert abs(many[segmentation_subset(many, 0.1, 0)].mean() - 0.5) < 0.2
    np.testing.assert_array_equal(train_subset("segmentation", foreground, 0.1, 4), subsets[0.1])
    with pytest.raises(ConfigError, match="'x'.*no image with foreground"):
        segmentation_subset(np.zeros(10, bool), 0.5, 0, dataset="x")


# --------------------------------------------------------------------------- loader


@pytest.mark.parametrize("max_memory_mb", [64, 0])  # in memory, and streamed from the file
def test_loader_moves_masks_with_their_images(lung_set, tmp_path, max_memory_mb):
    root, _ = lung_set
    out = tmp_path / "lungs.h5"
    build_cache("lungs", lung_entry(root), out, progress=False)
    loader = make_loader(out, "train", batch_size=7, shuffle=True, seed=3, channels=1,
                         normalize={"mean": 0.0, "std": 1.0}, image_size=36, resize_mode="nearest",
                         augment={"hflip": True, "crop_padding": 3}, max_memory_mb=max_memory_mb, num_workers=0)
    loader.set_epoch(1)
    seen = 0
    for x, y in loader:
        assert y.dtype == torch.int64 and y.shape == (x.shape[0], 36, 36)
        # the invariant every crop, flip and resize must keep: bright pixel <=> foreground
        # (padding is black image and background mask)
        torch.testing.assert_close(y, (x[:, 0] * 255 >= 180).long(), rtol=0, atol=0)
        seen += len(y)
    assert seen == read_info(out).split_sizes["train"]
