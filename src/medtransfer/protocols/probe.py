"""One run of a frozen-feature protocol (linear or k-NN): the classifier on the training subset
of the cached features, scored on val and test; writes ``predictions.h5`` and ``metrics.json``
in the protocol's run directory (``medtransfer.paths.protocol_run_file``), in the same formats
as a fine-tuning run, with ``protocol``, ``fraction`` and ``n_train``."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from medtransfer import data
from medtransfer.atomic import write_json
from medtransfer.errors import ConfigError, DataError
from medtransfer.specs import spec_hash
from medtransfer.protocols.dvme import dvme_scores, select_dvme
from medtransfer.protocols.features import read_features
from medtransfer.protocols.knn import knn_predict
from medtransfer.protocols.linear import probe_scores, select_probe
from medtransfer.provenance import git_commit, provenance
from medtransfer.training.stage import write_predictions
from medtransfer.training.metrics import classification_metrics


def _fold_features(features: dict, cache: str, fold: int) -> dict:
    """``train``, ``val``, ``test`` of a fold: the features of train, val and test concatenated (the
    cache's pool order, :mod:`medtransfer.data.folds`), at the fold's rows. A fusion's features
    (one array per source) are cut the same way."""
    from medtransfer.data.cache import read_folds
    from medtransfer.data.folds import fold_rows

    def pooled(i: int):
        parts = [features[split][i] for split in ("train", "val", "test")]
        if isinstance(parts[0], list):
            return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
        return np.concatenate(parts)

    x, y = pooled(0), pooled(1)
    roles = read_folds(cache)
    if len(y) != roles.shape[0]:
        raise DataError(f"features of {len(y)} images, but the folds of {cache} cover {roles.shape[0]}; the cache "
                        "changed after the features were computed: rerun them")
    rows = fold_rows(roles, fold)
    cut = (lambda idx: [part[idx] for part in x]) if isinstance(x, list) else (lambda idx: x[idx])
    return {role: (cut(idx), y[idx]) for role, idx in rows.items()}


def probe(spec: dict) -> dict:
    """Run ``spec["protocol"]`` on ``spec["features"]``; return the metrics written to metrics.json."""
    wall_start = time.monotonic()
    commit = git_commit()
    protocol = spec["protocol"]
    fusion = spec["init"]["name"] if isinstance(spec["features"], list) else None
    features = _fused(spec["features"]) if fusion else read_features(spec["features"])
    if fusion == "CONCAT":  # the baseline of DVME: one linear probe on the sources side by side
        features.update({split: (np.concatenate(features[split][0], axis=1), features[split][1])
                         for split in ("train", "val", "test")})
    if spec.get("fold") is not None:  # a fold run: the fold's rows of the pooled features
        features.update(_fold_features(features, spec["cache"], int(spec["fold"])))
    task, class_names = features["task"], features["class_names"]
    train_x, train_y = features["train"]
    indices = data.subset_indices(train_y, spec["fraction"], spec["seed"], num_classes=len(class_names),
                                  dataset=spec["dataset"])
    start = time.monotonic()
    if fusion == "DVME":
        if protocol != "linear":
            raise ConfigError(f"{spec['run']}: DVME fuses frozen sources under the linear protocol, not {protocol}")
        train = ([x[indices] for x in train_x], train_y[indices])
        result = select_dvme(train, features["val"], task=task, num_outputs=len(class_names),
                             options=spec["dvme"], seed=spec["seed"])

        def scores_of(split):
            return dvme_scores(result.head, features[split][0], task)

        chosen = {"head": "DVME", "sources": spec["init"]["sources"], "weight_decay": result.weight_decay,
                  "grid": result.grid, "options": spec["dvme"]}
    elif protocol == "linear":
        train = (train_x[indices], train_y[indices])
        options = spec["linear"]
        if options.get("augment"):  # the head sees augmented views through the frozen backbone
            from medtransfer.protocols.augmented import select_augmented_probe

            result = select_augmented_probe(spec, indices, features, task=task, num_outputs=len(class_names))
        else:
            result = select_probe(train, features["val"], task=task, num_outputs=len(class_names),
                                  weight_decays=options["weight_decays"], max_iter=options["max_iter"],
                                  standardize=options["standardize"])

        def scores_of(split):
            return probe_scores(result.head, features[split][0], task)

        chosen = {"weight_decay": result.weight_decay, "grid": result.grid, "augment": bool(options.get("augment"))}
    elif protocol == "knn":
        train = (train_x[indices], train_y[indices])
        options = spec["knn"]
        k = int(options["k"])
        if k > len(indices):
            if not options["cap_k"]:
                raise ConfigError(
                    f"config key knn.k: k = {k} is larger than the training set of {spec['run']} "
                    f"({len(indices)} images at fraction {spec['fraction']:g} of {spec['dataset']!r}); "
                    "lower knn.k or set knn.cap_k: true to vote over all of them")
            k = len(indices)

        def scores_of(split):
            return knn_predict(train[0], train[1], features[split][0], task=task, num_classes=len(class_names),
                               k=k, temperature=float(options["temperature"]))

        chosen = {"k": k, "temperature": float(options["temperature"])}
    else:
        raise ConfigError(f"protocol {protocol!r} does not read frozen features (frozen: linear, knn)")
    evaluations = {}
    for split in ("val", "test"):
        scores, labels = scores_of(split), features[split][1]
        evaluations[split] = SimpleNamespace(scores=scores, labels=labels,
                                             metrics=classification_metrics(task, labels, scores))
    fit_seconds = time.monotonic() - start
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(run_dir / "predictions.h5", evaluations, task, class_names)
    metrics = {
        "run": spec["run"],
        "protocol": protocol,
        "task": task,
        "test": evaluations["test"].metrics,
        "val": evaluations["val"].metrics,
        protocol: chosen,
        "fraction": float(spec["fraction"]),
        "n_train": int(len(indices)),
        "num_train": int(len(indices)),
        "feature_dim": [int(x.shape[1]) for x in train_x] if fusion == "DVME" else int(train_x.shape[1]),
        "fit_seconds": fit_seconds,
        "features_provenance": features["provenance"],
        "provenance": provenance(spec_hash=spec_hash(spec), seed=spec["seed"], device="cpu",
                                 wall_seconds=time.monotonic() - wall_start, commit=commit),
        "spec": spec,
    }
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _fused(paths: list[str]) -> dict:
    """The features of several sources on one dataset: per split ([features of each source], labels)."""
    parts = [read_features(path) for path in paths]
    first = parts[0]
    for path, part in zip(paths[1:], parts[1:]):
        for split in ("train", "val", "test"):
            if not np.array_equal(part[split][1], first[split][1], equal_nan=True):
                raise ConfigError(f"{path}: its {split} labels differ from those of {paths[0]}; the fused "
                                  "features must come from the same dataset cache")
    fused = {split: ([p[split][0] for p in parts], first[split][1]) for split in ("train", "val", "test")}
    fused.update(task=first["task"], class_names=first["class_names"], init=[p["init"] for p in parts],
                 provenance=[p["provenance"] for p in parts])
    return fused
