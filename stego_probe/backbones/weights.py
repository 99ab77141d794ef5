"""Official weight files: where they come from, where they live, and how they are checked.

A :class:`WeightsSpec` names one official checkpoint (file name, URL, optional pinned SHA-256).
:func:`resolve_weights` turns it into a local path, in this order:

1. an explicit ``weights=`` path (must exist);
2. the torch hub checkpoint cache, ``torch.hub.get_dir()/checkpoints/<file name>`` (where
   ``torch.hub.load("facebookresearch/dino", ...)`` and ``.../dinov2`` put the same files);
3. a download with :func:`torch.hub.download_url_to_file` into that cache, but only when
   downloads are allowed, i.e. neither ``STEGO_PROBE_OFFLINE`` nor ``HF_HUB_OFFLINE`` is set.

If none of these works, a :class:`FileNotFoundError` says which file to fetch from which URL and
where to put it. :func:`read_state_dict` reads the file (``.pth`` / ``.pt`` / ``.bin`` via
``torch.load(weights_only=True)``, or ``.safetensors``) and unwraps the usual checkpoint
containers into a flat ``{key: tensor}`` dict.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from stego_probe.provenance import sha256_file

OFFLINE_ENV_VARS = ("STEGO_PROBE_OFFLINE", "HF_HUB_OFFLINE")
_FALSE_VALUES = {"", "0", "false", "no", "off"}


@dataclass(frozen=True)
class WeightsSpec:
    """One official weight file.

    Attributes:
        file_name: base name of the file, e.g. ``"dino_deitsmall8_300ep_pretrain.pth"``.
        url: where the file is published (None for files that must be supplied by hand).
        sha256: pinned hex digest, or None when not known (then only recorded, not checked).
    """

    file_name: str
    url: str | None = None
    sha256: str | None = None

    def cache_path(self) -> Path:
        """Where the file is looked for / downloaded to: ``<torch hub dir>/checkpoints/<file>``."""
        return hub_checkpoint_dir() / self.file_name


def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints`` (respects ``TORCH_HOME`` and ``torch.hub.set_dir``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def downloads_allowed() -> bool:
    """False when ``STEGO_PROBE_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true-ish value."""
    for var in OFFLINE_ENV_VARS:
        if os.environ.get(var, "").strip().lower() not in _FALSE_VALUES:
            return False
    return True


def _missing_message(spec: WeightsSpec, what: str, reason: str) -> str:
    dst = spec.cache_path()
    where = f" from {spec.url}" if spec.url else ""
    return (
        f"{what}: weight file {spec.file_name!r} not found ({reason}). Download it{where} and "
        f"put it at {dst} (the torch hub checkpoint cache), or pass its path with "
        f"weights=... / --weights PATH."
    )


def verify_sha256(path: str | os.PathLike, expected: str | None) -> str:
    """SHA-256 of ``path``; raises ``ValueError`` naming the file if ``expected`` differs.

    Args:
        path: the weight file.
        expected: hex digest to enforce (case-insensitive), or None to only compute it.

    Returns:
        the actual hex digest (lower case).
    """
    actual = sha256_file(path)
    if expected is not None and actual != expected.strip().lower():
        raise ValueError(
            f"weight file {os.fspath(path)!r} has sha256 {actual}, expected {expected.strip()}; "
            "the file is corrupt, truncated or a different checkpoint"
        )
    return actual


def download_weights(
    spec: WeightsSpec, dst: str | os.PathLike | None = None, progress=True
) -> Path:
    """Download ``spec.url`` to ``dst`` (default :meth:`WeightsSpec.cache_path`) atomically.

    The pinned hash (if any) is checked before the file is moved into place, so a corrupt
    download never lands in the cache.

    Raises:
        ValueError: no URL is known, or the download does not match the pinned hash.
        FileNotFoundError: the download failed (no network, 404, ...).
    """
    if not spec.url:
        raise ValueError(f"weight file {spec.file_name!r} has no download URL; pass weights=PATH")
    dst = Path(dst) if dst is not None else spec.cache_path()
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".partial", dir=dst.parent)
    os.close(fd)
    try:
        try:
            torch.hub.download_url_to_file(spec.url, tmp, progress=progress)
        except Exception as e:  # urllib / http errors of all kinds
            raise FileNotFoundError(
                _missing_message(spec, "download", f"downloading {spec.url} failed: {e}")
            ) from e
        verify_sha256(tmp, spec.sha256)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst


def resolve_weights(
    spec: WeightsSpec | None,
    weights: str | os.PathLike | None = None,
    *,
    allow_download: bool | None = None,
    progress: bool = True,
    what: str = "backbone",
) -> Path:
    """Local path of a weight file: explicit path, else torch hub cache, else download.

    Args:
        spec: the official file (None if the backbone has no official file; then ``weights``
            is required).
        weights: explicit path to a local file; takes priority and must exist.
        allow_download: override for :func:`downloads_allowed`.
        progress: show a download progress bar.
        what: name used in error messages (the backbone name).

    Raises:
        FileNotFoundError: ``weights`` does not exist, or the file is not cached and cannot be
            downloaded; the message names the file, its URL and the cache path.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{what}: weights file {os.fspath(path)!r} does not exist")
        return path
    if spec is None:
        raise FileNotFoundError(f"{what}: no official weight file is known; pass weights=PATH")
    cached = spec.cache_path()
    if cached.is_file():
        return cached
    if allow_download is None:
        allow_download = downloads_allowed()
    if not allow_download:
        env = " / ".join(OFFLINE_ENV_VARS)
        raise FileNotFoundError(_missing_message(spec, what, f"offline: {env} is set"))
    return download_weights(spec, cached, progress=progress)


def _strip_prefixes(sd: Mapping[str, torch.Tensor], prefixes=("module.", "backbone.")) -> dict:
    out = {}
    for k, v in sd.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p) :]
        out[k] = v
    return out


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Flatten a loaded checkpoint object into ``{key: tensor}``.

    Accepts a plain state dict (the official DINO / DINOv2 files), a full DINO training
    checkpoint (``obj["teacher"]``, with ``module.`` / ``backbone.`` prefixes stripped, as the
    reference does), or a wrapper with ``"state_dict"`` / ``"model"``.

    Raises:
        ValueError: ``obj`` is not a mapping of tensors (names ``source``).
    """
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{source}: expected a state dict (mapping of parameter names to tensors), got "
            f"{type(obj).__name__}"
        )
    for key in ("teacher", "state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and not isinstance(obj.get("pos_embed"), torch.Tensor):
            obj = inner
            break
    sd = _strip_prefixes(obj)
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad or not sd:
        raise ValueError(
            f"{source}: expected a state dict of tensors; non-tensor entries: {bad[:8]}"
            if bad
            else f"{source}: the checkpoint contains no tensors"
        )
    return sd


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat state dict on the CPU (see :func:`unwrap_state_dict`).

    ``.safetensors`` files are read with safetensors; everything else with
    ``torch.load(map_location="cpu", weights_only=True)`` (``argparse.Namespace``, stored in DINO
    training checkpoints, is allowed).
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"could not read weight file {os.fspath(path)!r}: expected a PyTorch state dict "
            f"(.pth / .pt / .bin) or a .safetensors file ({_load_error_summary(e)})"
        ) from e
    return unwrap_state_dict(obj, os.fspath(path))


def _load_error_summary(e: Exception, limit: int = 300) -> str:
    """One line saying why a weight file could not be read (torch's weights-only error is a
    paragraph; the useful part is the unpickler's reason)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    text = " ".join(text.split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
