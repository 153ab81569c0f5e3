"""keras_resnet50 against real Keras: Keras's own ResNet50, saved as Keras saves it, read as a
``file:`` source through the public API, gives Keras's stage outputs and pooled features.

Keras 3 runs here with its numpy backend (convolutions by jax.lax; seconds to build a ResNet-50,
where the jax backend compiles for half a minute). It writes Keras 3 legacy ``.h5`` files
(names without ``:0``); Keras 2 files (``conv1_conv/kernel:0``: RadImageNet's, Keras's ImageNet
weights) are written from them in the layout of Keras 2's ``save_weights``, and Keras itself
reads that copy back before we do. Skipped where Keras is not installed (the ``keras`` extra).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from medtransfer import init as initialisation
from medtransfer.errors import WeightsError
from medtransfer.models import blocks, create, load_source_state_dict
from medtransfer.models.embedding import pooled_features

os.environ.setdefault("KERAS_BACKEND", "numpy")
keras = pytest.importorskip("keras", reason="Keras 3 is an optional test dependency (pip install -e .[keras])")
# Keras's numpy backend under numpy 2 warns on every variable read; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: Juodelyte et al.'s CCA layers (DovileDo/revisiting-transfer, src/CCA.py): our canonical blocks.
STAGE_LAYERS = {"conv1": "conv1_relu", "conv2": "conv2_block3_out", "conv3": "conv3_block4_out",
                "conv4": "conv4_block6_out", "conv5": "conv5_block3_out"}
SIZE = 35  # odd: every padding and stride-2 rounding is exercised (35 -> 18 -> 9 -> 5 -> 3 -> 2)


def randomise(model, seed: int) -> None:
    """Keras's init has zero biases and BatchNorm at identity; draw them all, so a mapping that
    drops or swaps any of them changes the outputs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = layer.get_weights()
        if not values:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = values
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
        else:
            kernel, bias = values
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])


def keras2_copy(keras3_file: Path, out: Path, rename=lambda layer: layer) -> None:
    """``keras3_file`` in the layout Keras 2's ``model.save_weights("x.h5")`` writes: the root's
    ``layer_names``; per layer a group whose ``weight_names`` are TensorFlow variable names
    (``conv1_conv/kernel:0``) and whose datasets sit under those names. ``rename`` maps layer names
    (for the older ``keras.applications.resnet50`` naming)."""
    with h5py.File(keras3_file, "r") as src, h5py.File(out, "w") as dst:
        weights = src["model_weights"]
        names = [n.decode() if isinstance(n, bytes) else n for n in weights.attrs["layer_names"]]
        dst.attrs["layer_names"] = np.array([rename(n).encode() for n in names])
        dst.attrs["backend"] = b"tensorflow"
        dst.attrs["keras_version"] = b"2.6.0"
        for name in names:
            group = dst.create_group(rename(name))
            tf_names = []
            for weight in weights[name].attrs["weight_names"]:
                weight = weight.decode() if isinstance(weight, bytes) else weight
                layer, variable = weight.split("/")
                tf_name = f"{rename(layer)}/{variable}:0"
                group.create_dataset(tf_name, data=weights[name][weight][()])
                tf_names.append(tf_name.encode())
            group.attrs["weight_names"] = np.array(tf_names)


def stage_outputs(model, x: np.ndarray) -> dict[str, np.ndarray]:
    probe = keras.Model(model.input, [model.get_layer(layer).output for layer in STAGE_LAYERS.values()])
    return dict(zip(STAGE_LAYERS, (np.asarray(y) for y in probe.predict(x, verbose=0))))


@pytest.fixture(scope="module")
def keras_resnet50(tmp_path_factory):
    """Keras's ResNet50 (no top, average pooling) with drawn weights, its files and its outputs."""
    folder = tmp_path_factory.mktemp("keras")
    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3),
                                        pooling="avg")
    randomise(model, seed=0)
    x = np.random.default_rng(1).normal(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    reference = {**stage_outputs(model, x), "pooled": np.asarray(model.predict(x, verbose=0))}
    files = {"keras3": folder / "resnet50_keras3.h5", "keras2": folder / "resnet50_keras2.h5"}
    model.save(files["keras3"])  # Keras 3's legacy HDF5 full-model save
    keras2_copy(files["keras3"], files["keras2"])
    # Keras reads the Keras 2 layout back into the model (matching layers by order) and gives the same
    for layer in model.layers:
        layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    model.load_weights(files["keras2"])
    np.testing.assert_array_equal(np.asarray(model.predict(x, verbose=0)), reference["pooled"])
    return {"files": files, "x": x, "reference": reference, "model": model}


def relative_error(ours: torch.Tensor, theirs: np.ndarray) -> float:
    return float(np.abs(ours.numpy() - theirs).max() / np.abs(theirs).max())


def ours_on(model: torch.nn.Module, x: np.ndarray) -> dict[str, torch.Tensor]:
    """Our network's canonical block outputs (NHWC, as Keras's) and pooled feature on Keras's input."""
    model.eval()
    seen: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out))
               for name, module in blocks(model)[:-1]]
    with torch.no_grad():
        pooled = pooled_features(model, torch.from_numpy(x).permute(0, 3, 1, 2))
    for handle in handles:
        handle.remove()
    return {**{name: out.permute(0, 2, 3, 1) for name, out in seen.items()}, "pooled": pooled}


@pytest.mark.parametrize("flavour", ["keras2", "keras3"])
def test_a_keras_file_gives_keras_stage_outputs_and_pooled_features(keras_resnet50, flavour):
    state = load_source_state_dict({"kind": "file", "path": str(keras_resnet50["files"][flavour]),
                                    "arch": "keras_resnet50"})
    model = create("keras_resnet50", 4)
    record = initialisation.apply(model, "WT", source=state)
    assert [b["origin"] for b in record["blocks"]] == ["source"] * 5 + ["new_head"]
    assert record["checkpoint"]["missing"] == 2  # the new head's weight and bias, nothing else
    ours = ours_on(model, keras_resnet50["x"])
    assert list(ours) == [*STAGE_LAYERS, "pooled"]
    for name, reference in keras_resnet50["reference"].items():
        assert ours[name].shape == reference.shape, name
        assert relative_error(ours[name], reference) < 1e-4, name


def test_the_older_keras_layer_names_load_the_same(keras_resnet50, tmp_path):
    """keras.applications.resnet50 before Keras 2.2.5 named the layers conv1, bn_conv1,
    res2a_branch2a, bn2a_branch2a, ..., res2a_branch1 (the shortcut)."""
    branch = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}

    def old_name(layer: str) -> str:
        match = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", layer)
        if match:
            stage, block, index, kind = match.groups()
            return f"{'res' if kind == 'conv' else 'bn'}{stage}{'abcdef'[int(block) - 1]}_branch{branch[index]}"
        return {"conv1_conv": "conv1", "conv1_bn": "bn_conv1"}.get(layer, layer)

    old = tmp_path / "resnet50_old_names.h5"
    keras2_copy(keras_resnet50["files"]["keras3"], old, rename=old_name)
    new = load_source_state_dict({"kind": "file", "path": str(keras_resnet50["files"]["keras2"])})
    state = load_source_state_dict({"kind": "file", "path": str(old)})
    assert state.keys() == new.keys() and all(torch.equal(state[k], new[k]) for k in new)


def test_a_resnet50_nested_in_another_model_loads_and_a_model_with_its_own_head_is_refused(keras_resnet50, tmp_path):
    """Juodelyte et al.'s fine-tuned models wrap ResNet50 as one layer of an outer model
    (src/fine-tuning.py): Keras saves the nested model's variables in that layer's group."""
    base = keras_resnet50["model"]
    inputs = keras.Input((SIZE, SIZE, 3))
    keras.Model(inputs, base(inputs)).save(tmp_path / "nested.h5")
    keras.Model(inputs, keras.layers.Dense(2, name="dense")(base(inputs))).save(tmp_path / "finetuned.h5")
    nested = load_source_state_dict({"kind": "file", "path": str(tmp_path / "nested.h5")})
    plain = load_source_state_dict({"kind": "file", "path": str(keras_resnet50["files"]["keras3"])})
    assert nested.keys() == plain.keys() and all(torch.equal(nested[k], plain[k]) for k in plain)
    with pytest.raises(WeightsError, match="dense/kernel"):
        load_source_state_dict({"kind": "file", "path": str(tmp_path / "finetuned.h5")})


def test_the_width_option_is_keras_resnet_with_narrower_stages_and_the_top_loads(tmp_path):
    """A Keras ResNet with ResNet-50's stages at 1/16 of the filters, with its classifier
    (include_top: Dense 'predictions', no softmax), against ``create(..., width=1/16)``."""
    resnet = pytest.importorskip("keras.src.applications.resnet")

    def stack_fn(x):
        for stage, (filters, count, stride) in enumerate(((4, 3, 1), (8, 4, 2), (16, 6, 2), (32, 3, 2))):
            x = resnet.stack_residual_blocks_v1(x, filters, count, stride1=stride, name=f"conv{stage + 2}")
        return x

    model = resnet.ResNet(stack_fn, False, True, include_top=True, weights=None, input_shape=(SIZE, SIZE, 3),
                          classes=3, classifier_activation=None, name="resnet50")
    randomise(model, seed=2)
    x = np.random.default_rng(3).normal(0, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    logits = np.asarray(model.predict(x, verbose=0))
    model.save(tmp_path / "small.h5")
    state = load_source_state_dict({"kind": "file", "path": str(tmp_path / "small.h5"), "arch": "keras_resnet50"})
    ours = create("keras_resnet50", 3, width=1 / 16)
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and all(key.endswith("num_batches_tracked") for key in missing)
    ours.eval()
    with torch.no_grad():
        out = ours(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert relative_error(out, logits) < 1e-4


def test_a_keras_file_refuses_another_architecture_and_another_network(keras_resnet50, tmp_path):
    with pytest.raises(WeightsError, match="keras_resnet50.*not into 'resnet50'"):
        load_source_state_dict({"kind": "file", "path": str(keras_resnet50["files"]["keras3"]), "arch": "resnet50"})
    vgg = tmp_path / "vgg16_notop.h5"  # a Keras save of another network: its layers are named
    with h5py.File(vgg, "w") as f:
        f.attrs["layer_names"] = np.array([b"block1_conv1"])
        group = f.create_group("block1_conv1")
        group.attrs["weight_names"] = np.array([b"block1_conv1/kernel:0"])
        group.create_dataset("block1_conv1/kernel:0", data=np.zeros((3, 3, 3, 64), np.float32))
    with pytest.raises(WeightsError, match="not of Keras's ResNet-50.*block1_conv1/kernel:0"):
        load_source_state_dict({"kind": "file", "path": str(vgg)})
    other = tmp_path / "data.h5"  # HDF5, but no Keras save
    with h5py.File(other, "w") as f:
        f.create_dataset("images", data=np.zeros(3))
    with pytest.raises(WeightsError, match="no Keras legacy weights save"):
        load_source_state_dict({"kind": "file", "path": str(other)})
