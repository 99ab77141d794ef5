"""timm-based ViT backbones: DINO, DINOv2 and any timm model.

The feature is the STEGO feature of PROTOCOL §1.2: ``model.forward_features(x)`` (output of the
final LayerNorm), prefix tokens (CLS and registers, ``model.num_prefix_tokens``) dropped,
reshaped to (B, C, h, w). ``forward_intermediates`` is never used (its ``norm=False`` default
returns pre-norm tokens, quirk Q3).

Weights are loaded from explicit files (see :mod:`stego_probe.backbones.weights`): the model is
built with ``pretrained=False``, the file is read, passed through timm's own checkpoint filter
for the architecture (which e.g. converts the official DINOv2 layout) and loaded strictly; the
only keys allowed to be unused are the classifier / DINO projection head (``head.*``) when the
model has no head, and DINOv2's ``mask_token``.

Random weights (``pretrained=False``) are drawn from a forked torch RNG seeded with ``seed``
(default 0), so two builds are identical and the caller's random state is untouched; their
provenance records ``init_seed`` and ``weights_fingerprint`` (:func:`state_dict_fingerprint`),
which is also stored as ``weights_sha256`` so that stores, projections and results built on
different random weights are never mixed.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from stego_probe.backbones.base import Backbone
from stego_probe.backbones.pos_embed import install_reference_pos_embed, supports_reference
from stego_probe.backbones.weights import (
    WeightsSpec,
    check_init_seed,
    hf_hub_cache_dir,
    offline_reason,
    read_state_dict,
    resolve_weights,
    seeded_init,
    state_dict_fingerprint,
    verify_sha256,
)
from stego_probe.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from stego_probe.fileio import to_jsonable

POS_INTERP = ("reference", "timm")
IGNORABLE_UNUSED = ("head.", "mask_token")
DINO_URL = "https://dl.fbaipublicfiles.com/dino"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"


class TimmBackbone(Backbone):
    """A frozen timm model as a :class:`Backbone` (ViTs, and CNN-like models as a bonus).

    ``features(images (B, 3, H, W))`` returns (B, C, H/p, W/p) float: for token models the
    post-final-norm patch tokens without the ``num_prefix_tokens`` prefix; for models whose
    ``forward_features`` already returns a map, that map (NCHW or NHWC) with ``p`` its stride.

    Args:
        model: a timm model (built with ``num_classes=0``; ViTs with ``dynamic_img_size=True``).
        name: registry name.
        pos_interp: ``"reference"`` (PROTOCOL §1.3, installed on the model) or ``"timm"``.
        mean, std: input normalisation (default: the model's pretrained config).
        provenance: extra provenance entries (weights file, sha256, url, timm name, ...).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str,
        pos_interp: str = "reference",
        mean=None,
        std=None,
        provenance: Mapping | None = None,
    ) -> None:
        super().__init__()
        if pos_interp not in POS_INTERP:
            raise ValueError(f"pos_interp: expected one of {POS_INTERP}, got {pos_interp!r}")
        if pos_interp == "reference":
            install_reference_pos_embed(model)
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.pos_interp = pos_interp
        self.patch_size = _patch_size(model)
        self.embed_dim = int(getattr(model, "num_features", 0) or model.embed_dim)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(float(v) for v in (mean or cfg.get("mean") or IMAGENET_MEAN))
        self.std = tuple(float(v) for v in (std or cfg.get("std") or IMAGENET_STD))
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self._provenance = {"pos_interp": pos_interp, **(provenance or {})}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, C, H/p, W/p) post-final-norm features."""
        b, _, hh, ww = images.shape
        h, w = hh // self.patch_size, ww // self.patch_size
        out = self.model.forward_features(images)
        if out.ndim == 3:
            tokens = out[:, self.num_prefix_tokens :]
            if tokens.shape[1] != h * w:
                raise RuntimeError(
                    f"{self.name}: {tokens.shape[1]} patch tokens for a {h}x{w} grid "
                    f"(input {hh}x{ww}, patch {self.patch_size}, {self.num_prefix_tokens} "
                    "prefix tokens)"
                )
            return tokens.reshape(b, h, w, tokens.shape[-1]).permute(0, 3, 1, 2)
        if out.ndim == 4:
            if out.shape[1] != self.embed_dim and out.shape[-1] == self.embed_dim:
                out = out.permute(0, 3, 1, 2)  # NHWC (e.g. Swin) -> NCHW
            if tuple(out.shape[-2:]) != (h, w):
                raise RuntimeError(
                    f"{self.name}: feature map {tuple(out.shape)} does not have the expected "
                    f"{h}x{w} grid for input {hh}x{ww} at stride {self.patch_size}"
                )
            return out
        raise RuntimeError(f"{self.name}: unsupported forward_features output {tuple(out.shape)}")


def _check_pos_interp(pos_interp: str, what: str) -> str:
    if pos_interp not in POS_INTERP:
        raise ValueError(f"{what}: pos_interp must be one of {POS_INTERP}, got {pos_interp!r}")
    return pos_interp


def _patch_size(model: torch.nn.Module) -> int:
    pe = getattr(model, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    if ps is not None:
        ps = tuple(ps) if isinstance(ps, (tuple, list)) else (ps, ps)
        if ps[0] != ps[1]:
            raise ValueError(f"non-square patch size {ps} is not supported")
        return int(ps[0])
    info = getattr(model, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else info.info[-1]
        return int(last["reduction"])
    raise ValueError(f"cannot determine the patch size / stride of {type(model).__name__}")


def create_timm_model(
    timm_name: str, model_kwargs: Mapping | None = None, seed: int = 0
) -> torch.nn.Module:
    """Build ``timm_name`` with random weights, no classifier and (ViTs) dynamic image size.

    Args:
        timm_name: any name ``timm.create_model`` accepts (with or without a ``.tag``).
        model_kwargs: extra constructor arguments (e.g. ``depth=2, embed_dim=48, num_heads=3,
            img_size=64`` for a tiny test model).
        seed: the random initialisation is drawn from a forked CPU torch RNG seeded with it
            (:func:`~stego_probe.backbones.weights.seeded_init`): same seed, same weights; the
            global torch random state is not changed.

    Raises:
        KeyError: timm does not know the model.
        ValueError: bad ``seed``.
    """
    import timm  # imported lazily: listing the registry should not pay for importing timm

    kwargs = {"num_classes": 0, **(model_kwargs or {})}
    with seeded_init(seed):
        try:
            return timm.create_model(timm_name, pretrained=False, dynamic_img_size=True, **kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise KeyError(f"timm does not know the model {timm_name!r} ({e})") from e
            raise
        except TypeError as e:
            if "dynamic_img_size" not in str(e):
                raise
    with seeded_init(seed):
        return timm.create_model(timm_name, pretrained=False, **kwargs)


def _checkpoint_filter(model: torch.nn.Module):
    module = sys.modules.get(type(model).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def _check_pos_grid(model: torch.nn.Module, sd: Mapping, source: str) -> None:
    """Refuse checkpoints whose position grid differs from the model's (no silent resampling)."""
    pos = sd.get("pos_embed")
    if not isinstance(pos, torch.Tensor) or getattr(model, "pos_embed", None) is None:
        return
    grid = tuple(model.patch_embed.grid_size)
    n_model = grid[0] * grid[1]
    extra = pos.shape[1] - n_model
    if extra in {0, 1, int(getattr(model, "num_prefix_tokens", 1))}:
        return
    side = next((math.isqrt(pos.shape[1] - k) for k in (1, 0) if _is_square(pos.shape[1] - k)), 0)
    p = model.patch_embed.patch_size[0]
    hint = ""
    if side:
        hint = f" (a {side}x{side} grid: build with model_kwargs={{'img_size': {side * p}}})"
    raise ValueError(
        f"{source}: position embedding has {pos.shape[1]} rows{hint}, but the model was built "
        f"for a {grid[0]}x{grid[1]} token grid ({n_model} patch positions)"
    )


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def load_state_dict_strict(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    ignorable: tuple[str, ...] = IGNORABLE_UNUSED,
) -> None:
    """Load ``state_dict`` into ``model`` after timm's checkpoint filter, strictly.

    Every model parameter / buffer must be present with the right shape. Checkpoint keys the
    model does not use are allowed only if they start with one of ``ignorable`` (the DINO
    projection head ``head.*`` and DINOv2's ``mask_token``) and the model has no such key.

    Raises:
        ValueError: missing keys, unexpected keys or shape mismatches, listed by name with the
            file (``source``).
    """
    _check_pos_grid(model, state_dict, source)
    filt = _checkpoint_filter(model)
    sd = dict(filt(dict(state_dict), model) if filt is not None else state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own and not k.startswith(ignorable)]
    shapes = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:10]}" + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys {unexpected[:10]}" + (" ..." if len(unexpected) > 10 else "")
            )
        if shapes:
            parts.append("shape mismatches " + "; ".join(shapes[:10]))
        raise ValueError(
            f"{source}: checkpoint does not match the {type(model).__name__} architecture: "
            + "; ".join(parts)
        )
    model.load_state_dict({k: sd[k] for k in own}, strict=True)


@dataclass(frozen=True)
class ViTEntry:
    """A registry entry for an official ViT checkpoint.

    Attributes:
        name: registry name (``dino_vits8``).
        timm_name: timm architecture + tag used to build the model.
        weights: the official file.
        pos_interp: default position interpolation.
        notes: one line for ``stego-probe backbones``.
    """

    name: str
    timm_name: str
    weights: WeightsSpec
    patch_size: int
    embed_dim: int
    pos_interp: str = "reference"
    notes: str = ""


def _dino(name, timm_name, stem, p, c, notes=""):
    return ViTEntry(name, timm_name, WeightsSpec(f"{stem}.pth", f"{DINO_URL}/{stem}/{stem}.pth"), p, c, notes=notes)  # fmt: skip


def _dinov2(size, c, reg, notes=""):
    arch = {"s": "small", "b": "base", "l": "large", "g": "giant"}[size]
    base = f"dinov2_vit{size}14"
    full = base + ("_reg4" if reg else "")
    timm_name = f"vit_{arch}_patch14_{'reg4_' if reg else ''}dinov2.lvd142m"
    spec = WeightsSpec(f"{full}_pretrain.pth", f"{DINOV2_URL}/{base}/{full}_pretrain.pth")
    return ViTEntry(base + ("_reg" if reg else ""), timm_name, spec, 14, c, notes=notes)


VIT_ENTRIES: dict[str, ViTEntry] = {
    e.name: e
    for e in [
        _dino("dino_vits16", "vit_small_patch16_224.dino", "dino_deitsmall16_pretrain", 16, 384),
        _dino(
            "dino_vits8",
            "vit_small_patch8_224.dino",
            "dino_deitsmall8_300ep_pretrain",
            8,
            384,
            "STEGO's ViT-S/8 file (Potsdam); not the file timm ships",
        ),
        _dino(
            "dino_vits8_timm",
            "vit_small_patch8_224.dino",
            "dino_deitsmall8_pretrain",
            8,
            384,
            "the ViT-S/8 file timm's vit_small_patch8_224.dino uses",
        ),
        _dino("dino_vitb16", "vit_base_patch16_224.dino", "dino_vitbase16_pretrain", 16, 768),
        _dino(
            "dino_vitb8",
            "vit_base_patch8_224.dino",
            "dino_vitbase8_pretrain",
            8,
            768,
            "STEGO's backbone for CocoStuff-27 and Cityscapes-27",
        ),
        *[
            _dinov2(s, c, reg, "native grid 37x37 (518 px)" + "; 4 registers dropped" * reg)
            for s, c in (("s", 384), ("b", 768), ("l", 1024), ("g", 1536))
            for reg in (False, True)
        ],
    ]
}


def _weights_provenance(path: Path, sha: str, url: str | None) -> dict:
    return {"weights": path.name, "weights_sha256": sha, "url": url}


def _check_options(what: str, pretrained: bool, weights, seed, extra: Mapping) -> int | None:
    """Validate the options of a ViT / timm build; returns the random-init seed (None when
    pretrained)."""
    if extra:
        raise ValueError(
            f"{what}: unknown options {sorted(extra)}; timm constructor arguments (depth, "
            "embed_dim, img_size, ...) go in model_kwargs={...}"
        )
    if not isinstance(pretrained, bool):
        raise ValueError(f"{what}: pretrained must be true or false, got {pretrained!r}")
    if not pretrained and weights is not None:
        raise ValueError(f"{what}: pretrained=False and weights={weights!r} conflict")
    if pretrained:
        if seed is not None:
            raise ValueError(
                f"{what}: seed={seed!r} only applies to random weights; pass pretrained=False "
                "(`--backbone-kwargs pretrained=false`)"
            )
        return None
    return check_init_seed(0 if seed is None else seed, f"{what}: seed")


def _random_init_provenance(model: torch.nn.Module, seed: int, expected: str | None, what: str):
    """Provenance of random weights: the seed and the fingerprint of the weights actually used
    (also as ``weights_sha256``, the key stores / results compare); enforces ``expected``."""
    fingerprint = state_dict_fingerprint(model)
    if expected is not None and fingerprint != expected.strip().lower():
        raise ValueError(
            f"{what}: random weights (seed {seed}) have fingerprint {fingerprint}, expected "
            f"{expected.strip()}; a different seed, architecture or timm version"
        )
    return {"init_seed": seed, "weights_fingerprint": fingerprint, "weights_sha256": fingerprint}


def build_vit_backbone(
    entry: ViTEntry,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    pos_interp: str | None = None,
    expected_sha256: str | None = None,
    model_kwargs: Mapping | None = None,
    progress: bool = True,
    seed: int | None = None,
    **extra,
) -> TimmBackbone:
    """Build a registry ViT and load its official weights (see :func:`get_backbone`).

    Args:
        entry: the registry entry.
        weights: local file; default: torch hub cache, else download (if allowed).
        pretrained: False builds with random weights (tests / CI); ``weights`` must be None.
        pos_interp: ``"reference"`` / ``"timm"``; None = the entry's default.
        expected_sha256: hash to enforce; default: the entry's pinned hash (may be None). With
            ``pretrained=False`` it is compared with the random weights' fingerprint.
        model_kwargs: extra timm constructor arguments (tiny test architectures).
        progress: download progress bar.
        seed: random-init seed (``pretrained=False`` only; default 0); recorded as
            ``init_seed`` next to ``weights_fingerprint``.

    Raises:
        FileNotFoundError: weights missing and not downloadable.
        ValueError: hash / fingerprint mismatch, checkpoint / architecture mismatch, bad or
            unknown options.
    """
    seed = _check_options(entry.name, pretrained, weights, seed, extra)
    pos_interp = _check_pos_interp(pos_interp or entry.pos_interp, entry.name)
    path = None
    if pretrained:  # find the file first: a missing one fails before the model is built
        path = resolve_weights(entry.weights, weights, progress=progress, what=entry.name)
    model = create_timm_model(entry.timm_name, model_kwargs, seed=seed or 0)
    prov = {
        "timm_name": entry.timm_name,
        "weights": None,
        "weights_sha256": None,
        "url": entry.weights.url,
        "pretrained": bool(pretrained),
    }
    if model_kwargs:
        prov["model_kwargs"] = to_jsonable(dict(model_kwargs))
    if pretrained:
        expected = expected_sha256 or entry.weights.sha256
        sha = verify_sha256(path, expected)
        load_state_dict_strict(model, read_state_dict(path), source=os.fspath(path))
        prov.update(_weights_provenance(path, sha, entry.weights.url))
    else:
        prov.update(_random_init_provenance(model, seed, expected_sha256, entry.name))
    return TimmBackbone(model, name=entry.name, pos_interp=pos_interp, provenance=prov)


def _registry_pretrained_cfg(timm_name: str, model_kwargs: Mapping | None) -> dict | None:
    """timm's pretrained config for ``timm_name`` without building the model (None when timm
    has none, or ``model_kwargs`` overrides it)."""
    if model_kwargs and ({"pretrained_cfg", "pretrained_cfg_overlay"} & set(model_kwargs)):
        return None
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(timm_name)
    except Exception:  # unknown names etc.: create_timm_model gives the proper error
        return None
    return cfg.to_dict() if cfg is not None else None


def _hub_file(cfg: Mapping, timm_name: str, progress: bool = True) -> tuple[Path, str]:
    """Local path (cached / downloaded) of a timm model's pretrained file, and its source.

    Order: the Hugging Face hub cache (:func:`hf_hub_cache_dir`; no network), a hub download,
    then the config's URL through the torch hub cache. When :func:`offline_reason` says the
    machine is offline (``HF_HUB_OFFLINE`` / ``STEGO_PROBE_OFFLINE``, or the host does not
    answer a short probe) nothing is downloaded, and a missing file fails at once.
    """
    what = f"timm:{timm_name}"
    cfg = dict(cfg or {})
    hub_id, url, custom = cfg.get("hf_hub_id"), cfg.get("url"), cfg.get("custom_load")
    if custom and (not hub_id or custom == "hf"):
        raise ValueError(
            f"{what}: its pretrained weights need timm's custom loader; "
            "convert them to a state dict and pass weights=PATH (`--weights PATH`)"
        )
    if custom:
        url = None  # the URL is in a custom format (e.g. .npz); the hub copy is a state dict
    problems = []
    if hub_id:
        from huggingface_hub import errors as hf_errors
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = str(hub_id).partition("@")
        revision = revision or None
        cache = hf_hub_cache_dir()
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else []
        names += [n for n in ("model.safetensors", "pytorch_model.bin") if n not in names]
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        file_url = f"{endpoint}/{repo}/resolve/{revision or 'main'}/{names[0]}"
        for fname in names:
            hit = try_to_load_from_cache(repo, fname, cache_dir=cache, revision=revision)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit), f"hf-hub:{repo}/{fname}"
        reason = offline_reason(file_url)
        if reason:
            problems.append(
                f"Hugging Face hub file {repo}/{' or '.join(names)} ({file_url}) is not in the "
                f"hub cache {cache} and cannot be downloaded ({reason})"
            )
        else:
            from huggingface_hub import hf_hub_download

            missing = getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError)
            for fname in names:
                try:
                    path = hf_hub_download(
                        repo, fname, revision=revision, cache_dir=cache, library_name="timm"
                    )
                    return Path(path), f"hf-hub:{repo}/{fname}"
                except Exception as e:  # 404 -> next name; anything else: stop retrying
                    problems.append(f"Hugging Face hub {repo}/{fname}: {type(e).__name__}: {e}")
                    if not isinstance(e, missing) or isinstance(
                        e, hf_errors.LocalEntryNotFoundError
                    ):
                        break
    if url:  # e.g. the official DINO URL: the torch hub cache may already hold the file
        spec = WeightsSpec(url.rsplit("/", 1)[-1], url)
        try:
            return resolve_weights(spec, progress=progress, what=what), url
        except FileNotFoundError as e:
            problems.append(str(e).removeprefix(f"{what}: "))
    raise FileNotFoundError(
        f"{what}: pretrained weights not available: "
        + ("; ".join(p.rstrip(".") for p in problems) or "timm lists no source for them")
        + ". Fetch a file on a machine with network and pass it with weights=PATH / "
        "--weights PATH, or put it in a cache named above; or use random weights with "
        "pretrained=False"
    )


def build_timm_backbone(
    timm_name: str,
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    pos_interp: str | None = None,
    expected_sha256: str | None = None,
    model_kwargs: Mapping | None = None,
    progress: bool = True,
    seed: int | None = None,
    **extra,
) -> TimmBackbone:
    """``timm:<name>``: any timm model, ``timm.create_model(name, dynamic_img_size=True)``.

    Weights: ``weights=`` file, else timm's pretrained source (Hugging Face hub cache /
    download, or the config's URL via the torch hub cache), loaded strictly like the DINO
    entries. The file is located before the model is built, and offline (``HF_HUB_OFFLINE`` /
    ``STEGO_PROBE_OFFLINE`` set, or no network) a missing file raises ``FileNotFoundError`` at
    once, naming the hub file, its URL and the cache. ``pretrained=False`` keeps random weights
    drawn with ``seed`` (default 0; recorded with their fingerprint, see :func:`get_backbone`).
    ``pos_interp`` defaults to ``"timm"`` here; ``"reference"`` works for ViTs with a learned
    absolute position embedding.
    """
    what = f"timm:{timm_name}"
    seed = _check_options(what, pretrained, weights, seed, extra)
    pos_interp = _check_pos_interp(pos_interp or "timm", what)
    path = source = None
    if pretrained:  # locate the file first: a missing one fails before the model is built
        if weights is not None:
            path = resolve_weights(None, weights, what=what)
        else:
            cfg = _registry_pretrained_cfg(timm_name, model_kwargs)
            if cfg is not None:
                path, source = _hub_file(cfg, timm_name, progress=progress)
    model = create_timm_model(timm_name, model_kwargs, seed=seed or 0)
    if pos_interp == "reference" and not supports_reference(model):
        raise ValueError(
            f"timm:{timm_name}: pos_interp='reference' needs a ViT with a learned absolute "
            "position embedding; use pos_interp='timm'"
        )
    prov = {"timm_name": timm_name, "weights": None, "weights_sha256": None, "url": None}
    prov["pretrained"] = bool(pretrained)
    if model_kwargs:
        prov["model_kwargs"] = to_jsonable(dict(model_kwargs))
    if pretrained:
        if path is None:
            cfg = getattr(model, "pretrained_cfg", None) or {}
            path, source = _hub_file(cfg, timm_name, progress=progress)
        sha = verify_sha256(path, expected_sha256)
        load_state_dict_strict(model, read_state_dict(path), source=os.fspath(path))
        prov.update(_weights_provenance(path, sha, source))
    else:
        prov.update(_random_init_provenance(model, seed, expected_sha256, what))
    return TimmBackbone(model, name=f"timm:{timm_name}", pos_interp=pos_interp, provenance=prov)
