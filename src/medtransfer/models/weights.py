"""Source weights for transfer: our pretrain outputs, local checkpoint files, the timm hub.

:func:`read_source` turns a source spec into a plain state dict (timm key names) that
:func:`medtransfer.init.apply` copies from, and a record of the file it came from (path, sha256,
hub revision) for init.json. Offline, hub weights fail within seconds with a ``WeightsError`` that
says how to supply a local file instead; nothing here can hang on the network. Checkpoint files
are unpickled with torch's ``weights_only`` loader: a file that needs more than tensors and the
few plain globals in :data:`CHECKPOINT_GLOBALS` is refused unless the config opts in for that
source (``sources.<name>.allow_pickle: true``), since unpickling it would run code from the file.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import timm
import torch

from medtransfer.errors import ConfigError, WeightsError
from medtransfer.provenance import file_sha256

from .keras_h5 import is_hdf5, read_keras_resnet50

#: The architecture Keras ResNet-50 ``.h5`` files load into (models.keras_resnet).
KERAS_ARCH = "keras_resnet50"

log = logging.getLogger(__name__)

#: ImageNet-1k weights used for WT, per architecture: timm name → timm name with tag.
#: ResNets and Inception use the torchvision weights (``tv_in1k``): the classic cross-entropy,
#: SGD recipe the transfer studies (Raghu 2019, Matsoukas 2022 and the medical literature they
#: survey) started from, rather than timm's stronger "ResNet strikes back" ``a1_in1k`` weights,
#: whose BCE loss and heavy regularisation give better ImageNet accuracy but less transferable
#: penultimate features (Kornblith et al. 2021). Inception's ``tv_in1k`` are Google's original
#: weights ported by torchvision. DeiT and Swin: their authors' ImageNet-1k releases.
IMAGENET_WEIGHTS: dict[str, str] = {
    "resnet18": "resnet18.tv_in1k",
    "resnet50": "resnet50.tv_in1k",
    "inception_v3": "inception_v3.tv_in1k",
    "deit_tiny_patch16_224": "deit_tiny_patch16_224.fb_in1k",
    "deit_small_patch16_224": "deit_small_patch16_224.fb_in1k",
    "swin_tiny_patch4_window7_224": "swin_tiny_patch4_window7_224.ms_in1k",
}

#: Seconds to wait for the hub's host before declaring it unreachable.
CONNECT_TIMEOUT_S = 3.0

_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")

#: Globals besides tensors that published checkpoints pickle beside their weights, none of which
#: runs code when unpickled: the training script's argparse settings (DINO's ``args``, PyContrast's
#: ``opt``) and numpy scalars (``best_acc1``, ``epoch``) with their dtypes (numpy 2 restores a
#: dtype as its class, e.g. ``numpy.dtypes.Float64DType``). Files written under numpy 1 name the
#: scalar ``numpy.core.multiarray.scalar``, under numpy 2 ``numpy._core.multiarray.scalar``.
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]
CHECKPOINT_GLOBALS: list = [
    argparse.Namespace,
    np.dtype,
    *(type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"),  # bool, integers, floats, complex
    _NUMPY_SCALAR,
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
]


@dataclass(frozen=True)
class SourceWeights:
    """The tensors of a weight source and where they came from.

    ``origin`` (init.json's ``source_weights``): ``kind``; ``file`` and its ``sha256``; for a
    ``file`` source ``allow_pickle`` (true: the file was unpickled fully, on the config's
    word); for a ``timm`` source the model ``name`` and, where the file came from the hub,
    ``hub`` and ``revision`` (the hub commit), or the ``url`` it was downloaded from.
    """

    state: dict[str, torch.Tensor]
    origin: dict[str, Any]


def _offline_flag() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TIMM_OFFLINE", "MEDTRANSFER_OFFLINE")
    )


def _reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Can a TCP connection to ``url``'s host be opened within ``timeout`` s? (DNS included.)"""
    parsed = urlparse(url)
    host = parsed.hostname
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return False
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # also bounds getaddrinfo on most resolvers
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(previous)


def _unreachable(name: str, why: str) -> WeightsError:
    return WeightsError(
        f"timm weights {name!r} could not be downloaded ({why}). Download them on a machine with "
        f"network access (e.g. timm.create_model({name!r}, pretrained=True) fills the Hugging Face "
        "cache, or fetch model.safetensors from the model's hub page), then either copy the cache "
        "(~/.cache/huggingface) here or set the config key sources.<name>.file to the local "
        ".safetensors/.pth file"
    )


def timm_weights_file(name: str) -> str:
    """Local path of the hub weights of timm model ``name`` (``arch`` or ``arch.tag``).

    Uses the Hugging Face cache if the file is there; otherwise downloads it, after checking
    within :data:`CONNECT_TIMEOUT_S` seconds that the host answers. Offline (no route, or
    ``HF_HUB_OFFLINE=1``) and not cached → ``WeightsError`` naming the fix.
    """
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model {name!r}; see timm.list_models()")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        tags = timm.list_pretrained(name.split(".")[0] + ".*")
        raise WeightsError(
            f"timm has no pretrained weights for {name!r}; "
            f"tags with weights: {', '.join(tags) or 'none'}"
        )
    if cfg.file:
        return str(cfg.file)

    from huggingface_hub import constants, hf_hub_download

    filenames = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILENAMES
    repo, _, revision = (cfg.hf_hub_id or "").partition("@")
    if repo:
        for filename in filenames:
            try:
                return hf_hub_download(
                    repo, filename, revision=revision or None, local_files_only=True
                )
            except Exception:  # noqa: BLE001 - any miss means "not in the cache"
                continue
    if cfg.url and not repo:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if cached.is_file():
            return str(cached)

    if _offline_flag():
        raise _unreachable(name, "offline mode is set (HF_HUB_OFFLINE) and they are not cached")
    endpoint = constants.ENDPOINT if repo else cfg.url
    if not _reachable(endpoint):
        raise _unreachable(
            name, f"{urlparse(endpoint).hostname} is unreachable within {CONNECT_TIMEOUT_S:g} s"
        )

    errors = []
    if repo:
        for filename in filenames:
            try:
                return hf_hub_download(repo, filename, revision=revision or None, etag_timeout=10)
            except Exception as e:  # noqa: BLE001 - report all attempts together
                errors.append(f"{filename}: {e}")
    else:
        from timm.models._hub import download_cached_file

        try:  # the hash prefix in torchvision-style file names (resnet18-f37072fd.pth) is checked
            return download_cached_file(cfg.url, check_hash=True, progress=True)
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))
    raise _unreachable(name, "; ".join(errors)[:500])


def _unpickle(path: Path, allow_pickle: bool) -> Any:
    """``torch.load`` of ``path`` with the ``weights_only`` loader and :data:`CHECKPOINT_GLOBALS`;
    fully (running whatever the pickle says) only with ``allow_pickle``."""
    if allow_pickle:
        log.warning("unpickling %s fully: the config sets allow_pickle for this source", path)
        return torch.load(path, map_location="cpu", weights_only=False)
    with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            except Exception:  # noqa: BLE001 - not a readable pickle at all: torch's message says why
                unsafe = []
            if not unsafe:
                raise
            raise WeightsError(
                f"weights file {str(path)!r} holds pickled objects other than tensors "
                f"({', '.join(unsafe)}); loading it would run code that the file names. If you trust "
                "the file, set sources.<name>.allow_pickle: true for its source in the config "
                "(init.json then records it), or convert it to .safetensors"
            ) from e


def _load_file(path: Path, allow_pickle: bool = False) -> dict[str, Any]:
    """The tensors of a checkpoint file, unwrapped (``state_dict``/``model``/DINO's ``teacher`` ...;
    :func:`medtransfer.models.checkpoints.unwrap`); prefixes and heads are mapped later, against
    the model (:func:`medtransfer.models.checkpoints.fit_checkpoint`). An HDF5 file is read as a
    Keras ResNet-50 save (:mod:`medtransfer.models.keras_h5`), keys of ``keras_resnet50``."""
    from .checkpoints import unwrap

    if not path.is_file():
        raise WeightsError(
            f"weights file {str(path)!r} does not exist; check the path in the config"
        )
    if is_hdf5(path):  # a Keras .h5 save (by content: torch files are zip archives or pickles)
        return read_keras_resnet50(path)
    try:
        if path.suffix == ".safetensors":
            return timm.models.load_state_dict(str(path), use_ema=False)
        payload = _unpickle(path, allow_pickle)
    except WeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure means an unreadable checkpoint
        raise WeightsError(
            f"weights file {str(path)!r} could not be read as a state dict "
            f"({type(e).__name__}: {e})"
        ) from e
    return unwrap(payload, repr(str(path)))


def _tensors_only(state: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        raise WeightsError(
            f"{where} is not a state dict of tensors (entries {bad[:3]} are not tensors)"
            if bad
            else f"{where} holds an empty state dict"
        )
    return dict(state)


def _timm_filter(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply timm's checkpoint filter for ``arch`` (maps original releases to timm's keys)."""
    import importlib

    module = importlib.import_module(timm.models.model_entrypoint(arch.split(".")[0]).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    model = timm.create_model(arch, pretrained=False)
    try:
        return filter_fn(state, model)
    except Exception:  # noqa: BLE001 - already in timm's format: leave it for the shape check
        return state


def load_source_state_dict(spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict of a weight source (:func:`read_source` without the record of its file)."""
    return read_source(spec).state


def read_source(spec: dict[str, Any]) -> SourceWeights:
    """The state dict of a weight source, on CPU, keys as the model :func:`create` builds has them,
    and the record of the file it came from (:class:`SourceWeights`).

    ``spec`` is one of
        ``{"kind": "pretrain", "path": ".../model.pt"}``: our pretrain output, a ``torch.save``'d
            dict ``{"state_dict": ..., "arch": ..., "num_classes": ..., ...}``; an optional
            ``"arch"`` in the spec must match the file's.
        ``{"kind": "file", "path": "x.pth" | "x.safetensors" | "x.h5", "arch": optional name,
            "allow_pickle": optional bool}``: a plain state dict or a timm/torchvision checkpoint
            (``state_dict``/``model`` wrappers and ``module.`` prefixes are removed); with ``arch``,
            timm's checkpoint filter for it maps original releases (DeiT, Swin) to timm's keys.
            A pickle that needs more than :data:`CHECKPOINT_GLOBALS` is refused unless
            ``allow_pickle`` is true. An HDF5 file (any suffix) is a Keras ResNet-50 save
            (Keras 2 or Keras 3 legacy ``.h5``, weights or full model: RadImageNet's
            ``RadImageNet-ResNet50_notop.h5``, Keras's ImageNet ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``)
            for the architecture ``keras_resnet50`` (:mod:`medtransfer.models.keras_h5`).
        ``{"kind": "timm", "arch": name, "tag": optional, "file": optional local copy}``: the timm
            hub weights of ``arch.tag`` (default tag: :data:`IMAGENET_WEIGHTS`, else timm's).
            Loaded through ``timm.create_model(..., pretrained=True,
            pretrained_cfg_overlay=dict(file=...))``, so timm's own filters apply (and its
            ``weights_only`` loader).

    Raises ``WeightsError`` for a missing, unreadable or code-carrying file or unreachable hub
    weights and ``ConfigError`` for a malformed spec.
    """
    kind = spec.get("kind")
    if kind == "pretrain":
        path = Path(_required(spec, "path"))
        if not path.is_file():
            raise WeightsError(
                f"pretrained model {str(path)!r} does not exist; "
                "run the pretrain rule that writes it "
                "(snakemake <that path>) first"
            )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise WeightsError(
                f"pretrained model {str(path)!r} could not be read ({type(e).__name__}: {e})"
            ) from e
        if not isinstance(payload, dict) or "state_dict" not in payload:
            raise WeightsError(
                f"{str(path)!r} is not a medtransfer pretrain output (no 'state_dict' entry); "
                "use kind 'file' for plain checkpoints"
            )
        want, have = spec.get("arch"), payload.get("arch")
        if want is not None and have is not None and want != have:
            raise WeightsError(
                f"pretrained model {str(path)!r} is a {have!r}, "
                f"but architecture {want!r} was asked for"
            )
        return SourceWeights(_tensors_only(payload["state_dict"], repr(str(path))), _file_origin(kind, path))
    if kind == "file":
        path = Path(_required(spec, "path"))
        allow_pickle = bool(spec.get("allow_pickle"))
        state = _tensors_only(_load_file(path, allow_pickle), repr(str(path)))
        arch = spec.get("arch")
        if arch and arch != KERAS_ARCH and is_hdf5(path):
            raise WeightsError(
                f"weights file {str(path)!r} is a Keras ResNet-50 save: it loads into the architecture "
                f"{KERAS_ARCH!r} (Keras's ResNet-50: stride on the first 1x1 conv, biased convs, "
                f"BatchNorm eps 1.001e-5), not into {arch!r}"
            )
        if arch and timm.is_model(arch):
            state = _timm_filter(arch, state)
        return SourceWeights(state, {**_file_origin(kind, path), "allow_pickle": allow_pickle})
    if kind == "timm":
        arch = _required(spec, "arch")
        base = arch.split(".")[0]
        name = (
            arch
            if "." in arch
            else (f"{base}.{spec['tag']}" if spec.get("tag") else IMAGENET_WEIGHTS.get(base, base))
        )
        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model or tag {name!r}; see timm.list_pretrained()")
        if spec.get("file"):
            file = Path(spec["file"])
            if not file.is_file():
                raise WeightsError(
                    f"weights file {str(file)!r} (for {name}) does not exist; "
                    "check sources.<name>.file"
                )
            file = str(file)
        else:
            file = timm_weights_file(name)
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": file})
        except Exception as e:  # noqa: BLE001
            raise WeightsError(
                f"weights file {file!r} does not fit timm model {name!r}: {e}"
            ) from e
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return SourceWeights(state, {**_file_origin(kind, Path(file)), "name": name,
                                     **({} if spec.get("file") else _download_origin(name, Path(file)))})
    raise ConfigError(f"unknown weight source kind {kind!r}; allowed: 'pretrain', 'file', 'timm'")


def _file_origin(kind: str, path: Path) -> dict[str, Any]:
    return {"kind": kind, "file": str(path), "sha256": file_sha256(path)}


def _download_origin(name: str, file: Path) -> dict[str, Any]:
    """Where timm's weights file for ``name`` was downloaded from: the hub repository and the
    commit (the Hugging Face cache keeps each file under ``snapshots/<commit>/``), or the URL."""
    cfg = timm.models.get_pretrained_cfg(name)
    repo = (cfg.hf_hub_id or "").partition("@")[0] if cfg is not None else ""
    if repo:
        parts = file.parts
        revision = parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None
        return {"hub": repo, "revision": revision}
    return {"url": cfg.url} if cfg is not None and cfg.url else {}


def _required(spec: dict[str, Any], key: str) -> Any:
    if not spec.get(key):
        raise ConfigError(f"weight source {spec!r} needs the key {key!r}")
    return spec[key]
