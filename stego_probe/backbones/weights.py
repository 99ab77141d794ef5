"""Official weight files: where they come from, where they live, and how they are checked.

A :class:`WeightsSpec` names one official checkpoint (file name, URL, optional pinned SHA-256).
:func:`resolve_weights` turns it into a local path, in this order:

1. an explicit ``weights=`` path (must exist);
2. the torch hub checkpoint cache, ``torch.hub.get_dir()/checkpoints/<file name>`` (where
   ``torch.hub.load("facebookresearch/dino", ...)`` and ``.../dinov2`` put the same files);
3. a download with :func:`torch.hub.download_url_to_file` into that cache, but only when
   downloads are possible: neither ``STEGO_PROBE_OFFLINE`` nor ``HF_HUB_OFFLINE`` is set, and a
   quick TCP probe of the URL's host (or proxy) answers within ``STEGO_PROBE_NETWORK_TIMEOUT``
   seconds (default 3; see :func:`offline_reason`).

If none of these works, a :class:`FileNotFoundError` says which file to fetch from which URL and
where to put it, at once (no retries against an unreachable host). :func:`read_state_dict`
reads the file (``.pth`` / ``.pt`` / ``.bin`` via ``torch.load(weights_only=True)``, or
``.safetensors``) and unwraps the usual checkpoint containers into a flat ``{key: tensor}``
dict. :func:`seeded_init` and :func:`state_dict_fingerprint` make random-init backbones
reproducible and identifiable; :func:`hf_hub_cache_dir` locates the Hugging Face hub cache.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from stego_probe.fileio import atomic_write
from stego_probe.provenance import sha256_file

OFFLINE_ENV_VARS = ("STEGO_PROBE_OFFLINE", "HF_HUB_OFFLINE")
NETWORK_TIMEOUT_ENV = "STEGO_PROBE_NETWORK_TIMEOUT"
DEFAULT_NETWORK_TIMEOUT = 3.0
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


def offline_env_vars() -> list[str]:
    """The offline variables (``STEGO_PROBE_OFFLINE``, ``HF_HUB_OFFLINE``) set to a true-ish value
    now (read at call time, unlike ``huggingface_hub``, which reads ``HF_HUB_OFFLINE`` once at
    import)."""
    return [
        v for v in OFFLINE_ENV_VARS if os.environ.get(v, "").strip().lower() not in _FALSE_VALUES
    ]


def downloads_allowed() -> bool:
    """False when ``STEGO_PROBE_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true-ish value."""
    return not offline_env_vars()


def network_timeout() -> float:
    """Seconds the connectivity probe waits: ``STEGO_PROBE_NETWORK_TIMEOUT`` or 3."""
    text = os.environ.get(NETWORK_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_NETWORK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(
            f"{NETWORK_TIMEOUT_ENV}: expected a positive number of seconds, got {text!r}"
        )
    return value


def _probe_target(url: str) -> tuple[str, int] | None:
    """``(host, port)`` a download of ``url`` connects to first (its proxy, if one is set), or
    None for non-network URLs (``file://``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    proxy = None
    if not urllib.request.proxy_bypass(parts.hostname):
        proxies = urllib.request.getproxies()
        proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy:
        pp = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if pp.hostname:
            return pp.hostname, pp.port or (443 if pp.scheme == "https" else 80)
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def offline_reason(url: str | None = None, timeout: float | None = None) -> str | None:
    """Why ``url`` cannot be downloaded right now, or None if it probably can.

    Offline means: ``STEGO_PROBE_OFFLINE`` / ``HF_HUB_OFFLINE`` is set (no network access at
    all), or a TCP connection to the URL's host (or its HTTP(S) proxy) cannot be opened within
    ``timeout`` seconds (default :func:`network_timeout`). Name resolution and the connection run
    in a daemon thread, so a resolver that never answers costs ``timeout`` and not minutes; the
    probe replaces the retry loops of ``huggingface_hub`` (5 retries, ~23 s per file) and
    ``urllib`` (no timeout) against a machine without network.

    Args:
        url: the download URL; None checks only the environment variables.
        timeout: probe timeout in seconds.

    Returns:
        a short reason, e.g. ``"offline: HF_HUB_OFFLINE is set"`` or ``"no network: cannot
        reach huggingface.co:443 ([Errno -2] Name or service not known)"``; None when online or
        for non-network URLs (``file://``).
    """
    env = offline_env_vars()
    if env:
        return f"offline: {' / '.join(env)} is set"
    target = _probe_target(url) if url else None
    if target is None:
        return None
    timeout = network_timeout() if timeout is None else float(timeout)
    result: list = []

    def probe() -> None:
        try:
            with socket.create_connection(target, timeout=timeout):
                result.append(None)
        except OSError as e:
            result.append(e)

    thread = threading.Thread(target=probe, name="stego-probe-network-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    host = f"{target[0]}:{target[1]}"
    if not result:
        return f"no network: no answer from {host} within {timeout:g} s"
    if result[0] is not None:
        return f"no network: cannot reach {host} ({result[0]})"
    return None


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
        raise ValueError(
            f"weight file {spec.file_name!r} has no download URL; pass weights=PATH "
            "(`--weights PATH`)"
        )
    dst = Path(dst) if dst is not None else spec.cache_path()

    def download(tmp: Path) -> None:
        try:
            torch.hub.download_url_to_file(spec.url, os.fspath(tmp), progress=progress)
        except Exception as e:  # urllib / http errors of all kinds
            raise FileNotFoundError(
                _missing_message(spec, "download", f"downloading {spec.url} failed: {e}")
            ) from e
        verify_sha256(tmp, spec.sha256)

    return atomic_write(dst, download)


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
        allow_download: True / False forces / forbids the download; None (default) downloads
            unless :func:`offline_reason` finds the machine offline (environment variables or
            an unreachable host), in which case the error comes at once.
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
        raise FileNotFoundError(
            f"{what}: no official weight file is known; pass weights=PATH (`--weights PATH`)"
        )
    cached = spec.cache_path()
    if cached.is_file():
        return cached
    if allow_download is None:
        reason = offline_reason(spec.url)
    else:
        reason = None if allow_download else "downloads disabled (allow_download=False)"
    if reason:
        raise FileNotFoundError(_missing_message(spec, what, reason))
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


# ------------------------------------------------------------------ random init: seed, fingerprint


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run the enclosed model construction with the CPU torch RNG seeded with ``seed``.

    The RNG is forked (:func:`torch.random.fork_rng`), so the global torch random state after
    the block is what it was before: building a backbone never changes a caller's random stream.

    Raises:
        ValueError: ``seed`` is not a non-negative integer.
    """
    seed = check_init_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def check_init_seed(seed, what: str = "seed") -> int:
    """``seed`` as an int; ``ValueError`` naming ``what`` unless it is an integer in [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"{what}: expected an integer in [0, 2**63), got {seed!r}")
    return int(seed)


def state_dict_fingerprint(state: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 fingerprint of the weights actually in a model (hex, 64 characters).

    The hash runs over the state dict in sorted key order; for each entry it covers the key, the
    dtype, the shape and the raw bytes of the (contiguous, CPU) tensor. Two models have the same
    fingerprint exactly when they hold bitwise-identical tensors under the same names, so it
    identifies random-init weights (which have no file to hash) in provenance records.

    Args:
        state: a module (its ``state_dict()``) or a ``{name: tensor}`` mapping.

    Returns:
        the lower-case hex digest.

    Raises:
        ValueError: a value is not a tensor, or a tensor has no data (meta device).
    """
    sd = state.state_dict() if isinstance(state, torch.nn.Module) else state
    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"state_dict_fingerprint: entry {key!r} is not a tensor")
        if t.is_meta:
            raise ValueError(f"state_dict_fingerprint: tensor {key!r} is on the meta device")
        t = t.detach().to("cpu").contiguous()
        h.update(f"{key}\0{str(t.dtype)}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- Hugging Face hub cache


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment at call time.

    ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub`` (the order
    ``huggingface_hub`` uses; it reads them once at import, this reads them now).
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"
