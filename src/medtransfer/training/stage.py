"""What every stage job builds from its job spec: seeding, loaders, the initialised model, predictions.h5.

Fine-tuning (:mod:`.finetune`), pretraining (:mod:`.pretrain`), the frozen protocols and the
analyses that re-read a run all start from the same spec keys (``cache``, ``training``, ``arch``,
``init``, ``source``, ``seed``), so they build their loaders and models here, one way.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from medtransfer import data, init, models
from medtransfer.atomic import atomic_path
from medtransfer.augmentation import TTA_VIEWS
from medtransfer.data.cache import interpolate
from medtransfer.models import segmentation
from medtransfer.models.fusion import FusionNetwork, Normalise, fusion_head
from medtransfer.training import distributed


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def input_size(spec: dict) -> int | None:
    """Batches are resized on the device to this size: the config's ``train.image_size``, else
    the architecture's required size (ViT/Swin patch grid, ``img_size`` among its options,
    Inception's 299), else the cache's own size (None)."""
    return spec["training"].get("image_size") or models.default_input_size(spec["arch"], **spec.get("arch_options", {}))


def spec_normalize(spec: dict) -> str | dict:
    """The input transform of a job spec's batches, the ``normalize`` that
    :func:`medtransfer.data.input_transform` maps to (mean, std, bgr): the ``preprocess`` of the
    source the spec reads (config ``sources.<name>.preprocess``; the planner puts it in the specs of
    runs, features and pretraining from that source), ``unit`` ([0, 1]) for a fusion whose members
    carry their own (each backbone then transforms the batch itself: :func:`member_normalize`),
    else ``training.normalize``. Every loader of a spec takes its normalisation from here."""
    if spec.get("preprocess") is not None:
        return spec["preprocess"]
    if _members_transform(spec):
        return "unit"
    return spec["training"]["normalize"]


def _members_transform(spec: dict) -> bool:
    """Whether a fusion spec's members bring their own input transform (a member with ``preprocess``)."""
    return any(member.get("preprocess") is not None for member in spec.get("members") or ())


def member_normalize(spec: dict, member: dict) -> str | dict:
    """The input transform of one fused backbone: its source's ``preprocess``, else the run's
    ``training.normalize``."""
    return member["preprocess"] if member.get("preprocess") is not None else spec["training"]["normalize"]


def spec_loader(spec: dict, split: str, device: torch.device, *, batch_size: int | None = None,
                shuffle: bool = False, **overrides: Any):
    """A loader over ``split`` of ``spec["cache"]`` with the spec's training settings (normalisation,
    input size, resize mode, memory, workers, seed); ``batch_size`` defaults to the evaluation
    batch size, and ``overrides`` (``indices``, ``augment``, ``normalize``, ``drop_last``, ``tta``)
    go to :func:`medtransfer.data.make_loader`. Fine-tuning, pretraining, frozen features and the
    augmented linear probe all read their batches through this one function.

    ``train.eval_crop`` applies to every read that is not shuffled (validation, test, frozen
    features of every split, the analyses' reads): a training read (shuffled) is resized or
    randomly cropped to the input size by its augmentation instead."""
    training = spec["training"]
    settings = dict(normalize=spec_normalize(spec), image_size=input_size(spec), resize_mode=training["resize_mode"],
                    max_memory_mb=training["max_memory_mb"], num_workers=training["num_workers"], seed=spec["seed"])
    if training.get("eval_crop") and not shuffle:
        settings["eval_crop"] = training["eval_crop"]
    settings.update(overrides)
    return data.make_loader(spec["cache"], split, batch_size=batch_size or training["eval_batch_size"],
                            shuffle=shuffle, device=device, channels=3, **settings)


def make_loaders(spec: dict, device: torch.device, train_indices: np.ndarray | None,
                 world: distributed.World | None = None, rows: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train (shuffled, augmented, subset), val and test loaders for a run or a pretraining; in a
    job of several processes (``world``) the train loader yields this process's share of each
    global batch of ``batch_size``, and every process reads all of val and test. ``rows``
    (:func:`medtransfer.data.folds.run_rows` of a fold run): all three read its ``split`` (the
    pool), at its ``val`` and ``test`` rows.

    With ``train.tta`` the test loader yields each image's views ([B, V, C, H, W], V = 10 for
    ``tencrop``; :func:`medtransfer.training.trainer.evaluate` averages their probabilities), in
    batches of ``eval_batch_size / V`` images so that a batch holds as many crops as one without
    test-time augmentation holds images. Validation (best epoch, early stopping) sees one view,
    as in Hosseinzadeh Taher et al.'s code."""
    world = world or distributed.World()
    training = spec["training"]
    split = rows["split"] if rows else "train"

    def evaluation(name: str, **options: Any):
        if rows and rows[name] is not None:
            return spec_loader(spec, split, device, indices=rows[name], **options)
        return spec_loader(spec, name, device, **options)

    tta = training.get("tta")
    return {
        "train": spec_loader(spec, split, device, batch_size=training["batch_size"], shuffle=True,
                             indices=train_indices, augment=training["augment"],
                             world=(world.rank, world.size), soft_labels=True),
        "val": evaluation("val"),
        "test": (evaluation("test", tta=tta, batch_size=max(1, training["eval_batch_size"] // TTA_VIEWS[tta]))
                 if tta else evaluation("test")),
    }


def initialised_model(spec: dict, num_classes: int) -> tuple[torch.nn.Module, dict, dict]:
    """The model of ``spec`` (``arch``, ``arch_options``, ``init``, ``source``, ``seed``) right after
    its initialisation, the init record (init.json) and the ``create_kwargs`` that rebuild it.
    A fusion spec (``members``) gives a :class:`~medtransfer.models.fusion.FusionNetwork` whose
    head standardisation is still the identity (:func:`~medtransfer.models.fusion.calibrate`)."""
    if spec.get("members"):
        return fusion_model(spec, num_classes)
    if spec.get("segmentation"):
        return segmentation_model(spec, num_classes)
    init_spec = spec["init"]
    # create_kwargs: a slim top (WT-RI with slim) changes the architecture itself
    create_kwargs = {**spec["arch_options"],
                     **init.create_kwargs(init_spec["name"], k=init_spec["k"], slim=init_spec.get("slim"))}
    model = models.create(spec["arch"], num_classes, in_chans=3, **create_kwargs)
    source = models.read_source(spec["source"]) if spec.get("source") else None
    record = init.apply(model, init_spec["name"], source=source.state if source else None, k=init_spec["k"],
                        seed=spec["seed"], **({"slim": init_spec["slim"]} if init_spec.get("slim") else {}))
    if source is not None:
        record["source_weights"] = source.origin  # the file, its sha256 (and allow_pickle, hub revision)
    return model, record, create_kwargs


def fusion_model(spec: dict, num_classes: int) -> tuple[torch.nn.Module, dict, dict]:
    """The fusion network of ``spec["members"]`` (each its source's WT at its architecture, fed at
    that architecture's input size) under a new DVME or CONCAT head, the init record and the
    ``create_kwargs`` (one per member)."""
    backbones, sizes, records, kwargs = [], [], [], []
    for member in spec["members"]:
        member_spec = {"arch": member["arch"], "arch_options": member["arch_options"], "seed": spec["seed"],
                       "init": {"name": "WT", "k": None}, "source": member["weights"], "training": spec["training"]}
        backbone, record, create_kwargs = initialised_model(member_spec, num_classes)
        backbones.append(backbone)
        sizes.append(input_size(member_spec))
        records.append({"source": member["source"], "arch": member["arch"], **record})
        kwargs.append(create_kwargs)
    # timm's pre-logits width (head_hidden_size) differs from num_features where a model has a
    # pre-logits layer; ours have neither, and then the two agree
    widths = [int(getattr(backbone, "head_hidden_size", None) or backbone.num_features) for backbone in backbones]
    name = spec["init"]["name"]
    torch.manual_seed(spec["seed"])
    head = fusion_head(name, widths, num_classes, **(spec.get("dvme") or {}))
    transforms = None
    if _members_transform(spec):  # the loader yields [0, 1] (spec_normalize): each member normalises
        info = data.read_info(spec["cache"])
        transforms = [Normalise(*data.input_transform(member_normalize(spec, member), info, 3))
                      for member in spec["members"]]
    network = FusionNetwork(backbones, sizes, head, transforms=transforms,
                            resize=functools.partial(interpolate, mode=spec["training"]["resize_mode"]))
    record = {"init": name, "seed": spec["seed"], "members": records,
              "head": {"name": name, "widths": widths, "origin": "random (standardised with the members' "
                       "initial embeddings of the training subset)"}}
    return network, record, {"members": kwargs, "input_sizes": sizes, "widths": widths}


def segmentation_model(spec: dict, num_classes: int) -> tuple[torch.nn.Module, dict, dict]:
    """A :class:`~medtransfer.models.segmentation.SegmentationNetwork`: the encoder is the run's
    architecture initialised exactly as a classification run's (``spec["init"]``: every init
    applies), its classifier then removed; the U-Net decoder is random (drawn under the run's
    seed). The init record says both; ``create_kwargs`` are the encoder's."""
    encoder, record, create_kwargs = initialised_model({**spec, "segmentation": None}, 1)
    options = spec["segmentation"]
    size = input_size(spec) or data.read_info(spec["cache"]).image_size
    torch.manual_seed(spec["seed"])
    network = segmentation.build(encoder, num_classes, size, decoder=options["decoder"],
                                 decoder_channels=options["decoder_channels"])
    record["blocks"] = [block for block in record["blocks"] if block["block"] != models.HEAD]
    record["blocks"].append({"block": models.HEAD, "origin": "random", "tensors": len(network.decoder.state_dict()),
                             "module": f"{options['decoder']} decoder (segmentation_models_pytorch UnetDecoder + "
                                       "SegmentationHead), smp's initialisation under the run's seed"})
    record["segmentation"] = {**network.config, "encoder": f"{spec['arch']} with the init above applied to its "
                              "canonical blocks; its classifier removed", "decoder_origin": "random"}
    return network, record, create_kwargs


def write_predictions(path: Path, evaluations: dict[str, Any], task: str, class_names: list[str]) -> None:
    """predictions.h5: per split ``scores`` float32 [N, K] and ``labels`` (loader order = cache order).

    Segmentation (bounded whatever the image size): ``scores`` is each image's Dice per class
    [N, K], ``labels`` its true pixels per class [N, K]; ``example_masks`` uint8 [E, H, W] and
    ``example_scores`` float16 [E, K, H, W] (softmax) are those of the split's first E images.
    """
    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as handle:
        handle.attrs["task"] = task
        handle.attrs["class_names"] = np.array(class_names, dtype=h5py.string_dtype())
        for split, evaluation in evaluations.items():
            group = handle.create_group(split)
            group.create_dataset("scores", data=evaluation.scores.astype(np.float32))
            group.create_dataset("labels", data=evaluation.labels)
            for name, values in getattr(evaluation, "extras", {}).items():  # segmentation examples
                group.create_dataset(name, data=values, compression="gzip")
