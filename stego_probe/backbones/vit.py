"""timm-based ViT backbones: DINO, DINOv2 and any timm model.

The feature is the STEGO feature of PROTOCOL §1.2: ``model.forward_features(x)`` (output of the
model's final norm, ``model.norm``; ``Identity`` in models without one, e.g. C-RADIO), prefix
tokens (CLS and registers, ``model.num_prefix_tokens``) dropped, reshaped to (B, C, h, w).
``layer=`` selects the output of one block instead, through timm's ``forward_intermediates``
with ``norm=True`` (its ``norm=False`` default returns pre-norm tokens, quirk Q3), so an
intermediate block goes through the same final norm as the last one. Everything that differs
between model families (prefix tokens, patch size, final norm, RoPE / absolute position
embedding, fixed or dynamic input size, normalisation, licence) is read from the model object
(:func:`model_facts`), never from a table.

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
from stego_probe.fileio import to_jsonable

POS_INTERP = ("reference", "timm")
IGNORABLE_UNUSED = ("head.", "mask_token")
DINO_URL = "https://dl.fbaipublicfiles.com/dino"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"


def _final_norm(model: torch.nn.Module) -> str | None:
    """Class name of the norm ``forward_features`` ends with (``model.norm``), None if none."""
    norm = getattr(model, "norm", None)
    if norm is None or isinstance(norm, torch.nn.Identity):
        return None
    return type(norm).__name__


def _fixed_input_size(model: torch.nn.Module) -> tuple[int, int] | None:
    """The only input size a token model accepts, or None when it takes any size.

    A timm ViT built with ``dynamic_img_size=True`` (or whose patch embedding is not strict)
    takes any size divisible by the patch size; models that do not accept ``dynamic_img_size``
    (e.g. BEiT) keep a strict ``patch_embed.img_size``.
    """
    if getattr(model, "dynamic_img_size", False):
        return None
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if not getattr(pe, "strict_img_size", False) or size is None:
        return None
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    return int(size[0]), int(size[1])


def model_facts(model: torch.nn.Module) -> dict:
    """What stego_probe reads from a timm model to extract its patch tokens (JSON types).

    Returns:
        dict with ``model_class``; ``num_prefix_tokens`` (CLS + registers, dropped),
        ``num_reg_tokens``; ``patch_size`` (stride for feature-map models); ``num_blocks``
        (None without ``.blocks``); ``final_norm`` (class of ``model.norm``, None when
        ``forward_features`` applies none); ``fc_norm`` (class of a pooled-token norm that
        ``forward_features`` does not apply, or None); ``abs_pos_embed`` (learned absolute
        position embedding present); ``rope`` (class of the rotary embedding, or None);
        ``fixed_input_size`` ((H, W) when the model cannot take other sizes, else None);
        ``input_size``, ``mean``, ``std`` (``timm.data.resolve_model_data_config``) and
        ``license`` (``pretrained_cfg['license']``, None if timm lists none).
    """
    from timm.data import resolve_model_data_config

    data = resolve_model_data_config(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    fc_norm = getattr(model, "fc_norm", None)
    rope = getattr(model, "rope", None)
    blocks = getattr(model, "blocks", None)
    reg = getattr(model, "reg_token", None)
    fixed = _fixed_input_size(model)
    return {
        "model_class": type(model).__name__,
        "num_prefix_tokens": int(getattr(model, "num_prefix_tokens", 0) or 0),
        "num_reg_tokens": int(reg.shape[1]) if isinstance(reg, torch.Tensor) else 0,
        "patch_size": _patch_size(model),
        "num_blocks": len(blocks) if hasattr(blocks, "__len__") else None,
        "final_norm": _final_norm(model),
        "fc_norm": None
        if fc_norm is None or isinstance(fc_norm, torch.nn.Identity)
        else type(fc_norm).__name__,
        "abs_pos_embed": isinstance(getattr(model, "pos_embed", None), torch.Tensor),
        "rope": None if rope is None else type(rope).__name__,
        "fixed_input_size": None if fixed is None else list(fixed),
        "input_size": list(data.get("input_size", ())),
        "mean": [float(v) for v in data["mean"]],
        "std": [float(v) for v in data["std"]],
        "license": cfg.get("license"),
    }


def resolve_layer(model: torch.nn.Module, layer: int | None, what: str) -> int | None:
    """Block index (0-based) for ``layer=``; None for the final output.

    Args:
        model: a timm token model with ``.blocks`` and ``forward_intermediates``.
        layer: None (the final ``forward_features`` output), or a block index, negative
            counting from the end (``-1``: last block, ``-2``: the one before, ...).
        what: the backbone name, for messages.

    Raises:
        ValueError: ``layer`` is not an int, out of range, or the model has no blocks /
            ``forward_intermediates``.
    """
    if layer is None:
        return None
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"{what}: layer must be an integer block index, got {layer!r}")
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "forward_intermediates"):
        raise ValueError(
            f"{what}: layer= needs a ViT-style timm model with .blocks and "
            f"forward_intermediates; {type(model).__name__} has none"
        )
    n = len(blocks)
    if not -n <= layer < n:
        raise ValueError(
            f"{what}: layer={layer} is out of range for {n} blocks (use 0..{n - 1}, or -1 "
            f"for the last, -{n} for the first)"
        )
    return layer % n


class TimmBackbone(Backbone):
    """A frozen timm model as a :class:`Backbone` (ViTs, and CNN-like models as a bonus).

    ``features(images (B, 3, H, W))`` returns (B, C, H/p, W/p) float: for token models the
    ``forward_features`` patch tokens (after ``model.norm``, if the model has one) without the
    ``model.num_prefix_tokens`` prefix; with ``layer`` set, the output of that block from
    ``forward_intermediates(norm=True)``, i.e. through the same final norm; for models whose
    ``forward_features`` already returns a map, that map (NCHW or NHWC) with ``p`` its stride.

    Args:
        model: a timm model (built with ``num_classes=0``; ViTs with ``dynamic_img_size=True``).
        name: registry name.
        pos_interp: ``"reference"`` (PROTOCOL §1.3, installed on the model) or ``"timm"``.
        mean, std: input normalisation (default: ``timm.data.resolve_model_data_config``).
        layer: None (final output) or a block index, negative from the end
            (:func:`resolve_layer`).
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
        layer: int | None = None,
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
        facts = model_facts(model)
        self.facts = facts
        self.patch_size = facts["patch_size"]
        self.embed_dim = int(getattr(model, "num_features", 0) or model.embed_dim)
        self.mean = tuple(float(v) for v in (mean or facts["mean"]))
        self.std = tuple(float(v) for v in (std or facts["std"]))
        self.num_prefix_tokens = facts["num_prefix_tokens"]
        self.layer = layer
        self.layer_index = resolve_layer(model, layer, name)
        if self.layer_index is not None:
            self.embed_dim = int(getattr(model, "embed_dim", self.embed_dim))
        keys = ("num_prefix_tokens", "final_norm", "rope", "abs_pos_embed", "fixed_input_size")
        self._provenance = {
            "pos_interp": pos_interp,
            **{k: facts[k] for k in keys},
            "layer": layer,
            "layer_index": self.layer_index,
            "num_blocks": facts["num_blocks"],
            **(provenance or {}),
        }

    def _check_size(self, hh: int, ww: int) -> None:
        fixed = self.facts["fixed_input_size"]
        if fixed is not None and (hh, ww) != tuple(fixed):
            raise ValueError(
                f"{self.name}: {self.facts['model_class']} takes only {fixed[0]}x{fixed[1]} "
                f"inputs (timm builds it without dynamic_img_size), got {hh}x{ww}; use images "
                f"of that size (--res {fixed[0]}) or a model that accepts dynamic_img_size"
            )

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, C, H/p, W/p) features (see the class doc)."""
        b, _, hh, ww = images.shape
        self._check_size(hh, ww)
        h, w = hh // self.patch_size, ww // self.patch_size
        if self.layer_index is not None:
            out = self.model.forward_intermediates(
                images,
                indices=[self.layer_index],
                norm=True,
                output_fmt="NCHW",
                intermediates_only=True,
                stop_early=True,
            )[0]
            if tuple(out.shape[-2:]) != (h, w):
                raise RuntimeError(
                    f"{self.name}: block {self.layer_index} gave {tuple(out.shape)}, expected a "
                    f"{h}x{w} grid for input {hh}x{ww} at patch {self.patch_size}"
                )
            return out
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


def _license(model: torch.nn.Module, pretrained: bool) -> str | None:
    """The licence timm lists for the model's pretrained weights (None for random weights)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("license") if pretrained else None


def _weights_provenance(path: Path, sha: str, url: str | None) -> dict:
    return {"weights": path.name, "weights_sha256": sha, "url": url}


def _check_options(
    what: str, pretrained: bool, weights, seed, extra: Mapping, layer=None
) -> int | None:
    """Validate the options of a ViT / timm build (before anything is loaded); returns the
    random-init seed (None when pretrained). ``layer``'s range is checked on the model."""
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise ValueError(f"{what}: layer must be an integer block index, got {layer!r}")
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
    layer: int | None = None,
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
        layer: None (final output) or the block whose output is the feature, negative
            counting from the end (:func:`resolve_layer`); recorded as ``layer`` /
            ``layer_index``.

    Raises:
        FileNotFoundError: weights missing and not downloadable.
        ValueError: hash / fingerprint mismatch, checkpoint / architecture mismatch, bad or
            unknown options.
    """
    seed = _check_options(entry.name, pretrained, weights, seed, extra, layer)
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
    prov["license"] = _license(model, pretrained)
    return TimmBackbone(model, name=entry.name, pos_interp=pos_interp, layer=layer, provenance=prov)


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
    layer: int | None = None,
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
    absolute position embedding. ``layer`` selects a block's output (:class:`TimmBackbone`).
    Provenance adds what :func:`model_facts` reads from the model (prefix tokens, final norm,
    RoPE, ...) and ``license``: timm's ``pretrained_cfg['license']`` for pretrained weights
    (None for random weights, or when timm lists none).
    """
    what = f"timm:{timm_name}"
    seed = _check_options(what, pretrained, weights, seed, extra, layer)
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
    prov["license"] = _license(model, pretrained)
    return TimmBackbone(model, name=what, pos_interp=pos_interp, layer=layer, provenance=prov)
