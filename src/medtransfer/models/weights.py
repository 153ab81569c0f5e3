"""Source weights for transfer: our pretrain outputs, local checkpoint files, the timm hub.

:func:`load_source_state_dict` turns a source spec into a plain state dict (timm key names) that
:func:`medtransfer.init.apply` copies from. Offline, hub weights fail within seconds with a
``WeightsError`` that says how to supply a local file instead; nothing here can hang on the network.
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch

from medtransfer.errors import ConfigError, WeightsError

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

        try:
            return download_cached_file(cfg.url, check_hash=False, progress=True)
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))
    raise _unreachable(name, "; ".join(errors)[:500])


def _load_file(path: Path) -> dict[str, Any]:
    """The tensors of a checkpoint file, unwrapped (``state_dict``/``model``/DINO's ``teacher`` ...;
    :func:`medtransfer.models.checkpoints.unwrap`); prefixes and heads are mapped later, against
    the model (:func:`medtransfer.models.checkpoints.fit_checkpoint`)."""
    from .checkpoints import unwrap

    if not path.is_file():
        raise WeightsError(
            f"weights file {str(path)!r} does not exist; check the path in the config"
        )
    try:
        if path.suffix == ".safetensors":
            return timm.models.load_state_dict(str(path), use_ema=False)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # released SSL checkpoints pickle their argparse settings (DINO's "args") beside the
            # weights; the file is the user's own choice in the config
            payload = torch.load(path, map_location="cpu", weights_only=False)
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
    """The state dict of a weight source, on CPU, keys as the model :func:`create` builds has them.

    ``spec`` is one of
        ``{"kind": "pretrain", "path": ".../model.pt"}``: our pretrain output, a ``torch.save``'d
            dict ``{"state_dict": ..., "arch": ..., "num_classes": ..., ...}``; an optional
            ``"arch"`` in the spec must match the file's.
        ``{"kind": "file", "path": "x.pth" | "x.safetensors", "arch": optional timm name}``: a plain
            state dict or a timm/torchvision checkpoint (``state_dict``/``model`` wrappers and
            ``module.`` prefixes are removed); with ``arch``, timm's checkpoint filter for it maps
            original releases (DeiT, Swin) to timm's keys.
        ``{"kind": "timm", "arch": name, "tag": optional, "file": optional local copy}``: the timm
            hub weights of ``arch.tag`` (default tag: :data:`IMAGENET_WEIGHTS`, else timm's).
            Loaded through ``timm.create_model(..., pretrained=True,
            pretrained_cfg_overlay=dict(file=...))``, so timm's own filters apply.

    Raises ``WeightsError`` for a missing or unreadable file or unreachable hub weights and
    ``ConfigError`` for a malformed spec.
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
        return _tensors_only(payload["state_dict"], repr(str(path)))
    if kind == "file":
        path = Path(_required(spec, "path"))
        state = _tensors_only(_load_file(path), repr(str(path)))
        arch = spec.get("arch")
        if arch and timm.is_model(arch):
            state = _timm_filter(arch, state)
        return state
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
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    raise ConfigError(f"unknown weight source kind {kind!r}; allowed: 'pretrain', 'file', 'timm'")


def _required(spec: dict[str, Any], key: str) -> Any:
    if not spec.get(key):
        raise ConfigError(f"weight source {spec!r} needs the key {key!r}")
    return spec[key]
