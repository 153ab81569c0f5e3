"""``imagefolder`` and ``csv`` stream: memory bounded by the writer's chunks, not the dataset size;
the cache holds what PIL decodes from each file; an interrupted conversion resumes (issue 27)."""

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from PIL import Image

import medtransfer.data.images as images_module
from medtransfer.data import build_cache, read_dataset, read_split
from medtransfer.data.streaming import partial_path

# Runs in a fresh interpreter so that its peak RSS is the conversion's alone: builds the cache of
# an image folder and prints the process's peak resident memory (Linux: ru_maxrss in KiB).
# Chunks of 8 MiB (75 images at 96 px) instead of 64 MiB, so that 1,000 small images already
# fill the READ_AHEAD + 1 chunks in flight, as 1,000 at 224 px (111 a chunk) do with the default.
CONVERT = textwrap.dedent("""
    import json, resource, sys
    import medtransfer.data.streaming as streaming
    from medtransfer.data import build_cache
    streaming.CHUNK_BYTES = 8 << 20
    root, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    build_cache("mine", {"format": "imagefolder", "root": root, "size": size, "workers": 2}, out)
    print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def write_tree(root, n, source_size=12, seed=0):
    """n small random PNGs in two class folders (the cache upsamples them; decoding stays cheap)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = root / ("a" if i % 2 else "b") / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (source_size, source_size, 3), dtype=np.uint8)).save(path)


def peak_rss_mib(root, out, size):
    run = subprocess.run([sys.executable, "-c", CONVERT, str(root), str(out), str(size)],
                         capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])["peak_kib"] / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_four_times_the_images_need_no_more_memory(tmp_path):
    size = 96  # 27 KiB per cached image: 1,000 -> 26 MiB, 4,000 -> 105 MiB if held whole
    write_tree(tmp_path / "small", 1000)
    write_tree(tmp_path / "large", 4000, seed=1)
    small = peak_rss_mib(tmp_path / "small", tmp_path / "small.h5", size)
    large = peak_rss_mib(tmp_path / "large", tmp_path / "large.h5", size)
    held_difference = 3000 * 3 * size * size / 2**20  # 79 MiB: what decoding everything at once adds
    assert large - small < held_difference / 5, (small, large)  # measured: 3.7 MiB
    with h5py.File(tmp_path / "large.h5", "r") as h5:
        assert sum(h5[s]["images"].shape[0] for s in ("train", "val", "test")) == 4000


def pil_decode(path, size, channels):
    """The independent expectation: PIL's own open -> convert -> bilinear resize, channels first."""
    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB" if channels == 3 else "L").resize((size, size), Image.BILINEAR))
    return array.transpose(2, 0, 1) if channels == 3 else array[None]


def test_cache_equals_pil_decode_of_each_file_and_resumes(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    for split, n in (("train", 30), ("val", 6), ("test", 8)):
        write_tree(root / split, n, source_size=10 + n % 7, seed=n)
    entry = {"format": "imagefolder", "root": str(root), "size": 16, "workers": 2}
    decoded = []
    original = images_module.load_image

    def interrupted(path, *args):
        if len(decoded) == 12:
            raise KeyboardInterrupt  # the job is killed part-way through
        decoded.append(path)
        return original(path, *args)

    monkeypatch.setattr(images_module, "load_image", interrupted)
    monkeypatch.setattr("medtransfer.data.streaming.CHUNK_BYTES", 4 * 3 * 16 * 16 * 4)  # 4 images a chunk
    out = tmp_path / "cache.h5"
    with pytest.raises(KeyboardInterrupt):
        build_cache("mine", entry, out)
    assert partial_path(out).exists() and not out.exists()
    decoded.clear()
    monkeypatch.setattr(images_module, "load_image", lambda path, *args: decoded.append(path) or original(path, *args))
    build_cache("mine", entry, out)
    assert 0 < 44 - len(decoded) <= 12  # resumed: what the first run wrote is not decoded again
    for split in ("train", "val", "test"):
        images, labels = read_split(out, split)
        # torchvision ImageFolder order: class folders sorted, files sorted in each
        files = sorted((root / split / "a").iterdir()) + sorted((root / split / "b").iterdir())
        np.testing.assert_array_equal(labels, [0 if f.parent.name == "a" else 1 for f in files])
        np.testing.assert_array_equal(images, np.stack([pil_decode(f, 16, 3) for f in files]))


def test_csv_streams_with_its_rows_in_the_cache(tmp_path):
    root = tmp_path / "csvdata"
    write_tree(root / "img", 20, source_size=9)
    files = sorted((root / "img").rglob("*.png"))
    lines = ["path,label,split"] + [f"{f.relative_to(root)},{f.parent.name},{['train', 'test'][i % 2]}"
                                    for i, f in enumerate(files)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    entry = {"format": "csv", "root": str(root), "file": "labels.csv", "path_column": "path",
             "label_column": "label", "split_column": "split", "size": 8, "channels": 1, "val_fraction": 0.2}
    raw = read_dataset("c", entry)
    assert type(raw.splits["train"][0]).__name__ == "DecodedImages"  # nothing decoded yet
    build_cache("c", entry, tmp_path / "c.h5")
    test_images, test_labels = read_split(tmp_path / "c.h5", "test")
    expected = [f for i, f in enumerate(files) if i % 2]
    np.testing.assert_array_equal(test_images, np.stack([pil_decode(f, 8, 1) for f in expected]))
    np.testing.assert_array_equal(test_labels, [0 if f.parent.name == "a" else 1 for f in expected])
    sizes = {s: len(read_split(tmp_path / "c.h5", s)[1]) for s in ("train", "val")}
    assert sizes == {"train": 8, "val": 2}  # val: 20 % of each class of the 10 train rows
