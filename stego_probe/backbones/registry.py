"""The backbone registry: one table of names -> factories, plus ``timm:<model name>``.

Built-in names (see ``docs/backbones.md``): ``dino_vits16``, ``dino_vits8`` (STEGO's 300-epoch
file), ``dino_vits8_timm`` (the file timm ships), ``dino_vitb16``, ``dino_vitb8``,
``dinov2_vit{s,b,l,g}14`` and their ``_reg`` (4 registers) variants, ``timm:<any timm model>``,
and ``descriptor`` (offline, weight-free). Users add entries with :func:`register_backbone` or
:func:`stego_probe.backbones.register_extractor`.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping

import torch

from stego_probe.backbones.base import Backbone
from stego_probe.device import resolve_device
from stego_probe.registry import Registry

TIMM_PREFIX = "timm:"


#: The backbone registry: name -> ``factory(**options) -> Backbone``; meta: the descriptive info.
BACKBONES = Registry("backbone", sort=False)
_INFO_KEYS = ("patch_size", "embed_dim", "timm_name", "weights", "url", "sha256", "pos_interp")


def register_backbone(
    name: str, factory: Callable[..., Backbone], *, overwrite: bool = False, **info
) -> None:
    """Add a backbone to the registry.

    Args:
        name: registry name (must not start with ``timm:``).
        factory: called by :func:`get_backbone` as ``factory(**options)`` with only the options
            the caller actually gave (``weights``, ``pos_interp``, ``expected_sha256``,
            ``model_kwargs`` and extra keywords); must return a :class:`Backbone`.
            ``device`` and ``flip_average`` are applied by :func:`get_backbone`.
        overwrite: replace an existing entry instead of raising.
        **info: shown by :func:`list_backbones` / ``stego-probe backbones``; conventional keys
            ``patch_size``, ``embed_dim``, ``timm_name``, ``weights`` (file name), ``url``,
            ``sha256``, ``pos_interp``, ``kind``, ``notes``.

    Raises:
        ValueError: bad name, or the name exists and ``overwrite`` is False.
    """
    if not isinstance(name, str) or not name or name.startswith(TIMM_PREFIX):
        raise ValueError(f"register_backbone: invalid name {name!r} (non-empty, not 'timm:...')")
    if not callable(factory):
        raise ValueError(f"register_backbone({name!r}): factory must be callable")
    BACKBONES.register(name, factory, overwrite=overwrite, **info)


def unregister_backbone(name: str) -> None:
    """Remove ``name`` from the registry (``KeyError`` if it is not registered)."""
    BACKBONES.unregister(name)


def _row(name: str, info: Mapping) -> dict:
    row = {"name": name, **{k: info.get(k) for k in _INFO_KEYS}}
    row["kind"] = info.get("kind", "custom")
    row["notes"] = info.get("notes", "")
    return row


def list_backbones(filter: str | None = None) -> list[dict]:
    """All registry entries, in registration order, as dicts.

    Args:
        filter: keep only the rows whose name matches this ``fnmatch`` pattern (``"dinov2*"``).

    Returns:
        dicts with keys ``name, patch_size, embed_dim, timm_name, weights, url, sha256,
        pos_interp, kind, notes``. The pattern row ``timm:<model>`` stands for every timm model
        name.
    """
    if filter is not None:
        return [r for r in list_backbones() if fnmatch.fnmatchcase(r["name"], filter)]
    rows = [_row(e.name, e.meta) for e in BACKBONES.entries()]
    rows.append(
        _row(
            TIMM_PREFIX + "<model>",
            {
                "kind": "timm",
                "pos_interp": "timm",
                "weights": "timm pretrained (HF hub) or --weights",
                "notes": "any timm model, e.g. timm:vit_small_patch14_dinov2.lvd142m",
            },
        )
    )
    return rows


def get_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    pos_interp: str | None = None,
    flip_average: bool = False,
    expected_sha256: str | None = None,
    model_kwargs: Mapping | None = None,
    **kw,
) -> Backbone:
    """Build a frozen backbone by registry name.

    Args:
        name: a registered name (:func:`list_backbones`) or ``"timm:<timm model name>"``.
        weights: local weight file. DINO / DINOv2 default: the torch hub cache
            (``torch.hub.get_dir()/checkpoints/<official file>``), else a download from the
            official URL unless ``STEGO_PROBE_OFFLINE`` / ``HF_HUB_OFFLINE`` is set.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or ``"auto"``.
        pos_interp: ``"reference"`` (PROTOCOL §1.3; the default of the DINO and DINOv2 entries)
            or ``"timm"`` (default for ``timm:`` names); None = the entry's default.
        flip_average: average features of the image and its horizontal flip.
        expected_sha256: enforce this SHA-256 of the weight file (else the pinned one, if any).
        model_kwargs: extra ``timm.create_model`` arguments (e.g. a tiny test architecture).
        **kw: passed to the factory, e.g. ``pretrained=False`` (random weights), ``seed=1``
            (the random-init seed, default 0; ``pretrained=False`` only), ``progress=False``,
            ``layer=-4`` (DINO / DINOv2 entries and ``timm:`` ViTs: the output of that block,
            0-based, negative from the end, through the final norm; default: the final
            output), ``patch_size=`` for ``descriptor``.

    Returns:
        a :class:`Backbone` in eval mode on ``device``, mapping (B, 3, H, W) normalised
        float images to (B, C, H/p, W/p) float32, with ``provenance`` recording name, timm
        name, weights file, weights_sha256, url, patch_size, embed_dim, pos_interp,
        flip_average, mean and std; the timm-based ones add ``num_prefix_tokens``,
        ``final_norm``, ``rope``, ``abs_pos_embed``, ``layer`` / ``layer_index`` and
        ``license`` (read from the model, see ``docs/backbones.md``). Random weights (``pretrained=False``) are drawn from a
        forked RNG (the global torch random state is untouched), so the same seed gives the
        same weights; their provenance adds ``init_seed`` and ``weights_fingerprint`` (SHA-256
        of the state dict), and ``weights_sha256`` is that fingerprint, so features of
        different random weights are refused as incompatible.

    Raises:
        KeyError: unknown name (the message lists the registered names).
        FileNotFoundError: weights not found and not downloadable; offline
            (``HF_HUB_OFFLINE`` / ``STEGO_PROBE_OFFLINE`` set, or no network) this is raised at
            once, naming the file, its URL and the cache path.
        ValueError: SHA-256 / fingerprint mismatch, checkpoint / architecture mismatch, bad or
            unknown options.

    Examples:
        >>> import torch
        >>> bb = get_backbone("descriptor")
        >>> bb(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 64, 8, 8])
    """
    options = {
        k: v
        for k, v in dict(
            weights=weights,
            pos_interp=pos_interp,
            expected_sha256=expected_sha256,
            model_kwargs=model_kwargs,
        ).items()
        if v is not None
    }
    options.update(kw)
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        from stego_probe.backbones.vit import build_timm_backbone

        timm_name = name[len(TIMM_PREFIX) :]
        if not timm_name:
            raise KeyError(
                "backbone 'timm:' needs a timm model name, e.g. 'timm:vit_small_patch8_224.dino'"
            )
        backbone = build_timm_backbone(timm_name, **options)
    else:
        if name not in BACKBONES:
            raise BACKBONES.unknown(name, extra=[TIMM_PREFIX + "<timm model name>"])
        backbone = BACKBONES.get(name)(**options)
        if not isinstance(backbone, Backbone):
            raise TypeError(
                f"backbone factory for {name!r} returned {type(backbone).__name__}, "
                "expected a stego_probe.backbones.Backbone"
            )
    backbone.flip_average = bool(flip_average)
    backbone = backbone.to(resolve_device(device)).eval()
    backbone.requires_grad_(False)
    return backbone


def _register_builtins() -> None:
    from stego_probe.backbones.descriptor import EMBED_DIM, DescriptorBackbone
    from stego_probe.backbones.vit import VIT_ENTRIES, build_vit_backbone

    for entry in VIT_ENTRIES.values():

        def factory(_entry=entry, **options) -> Backbone:
            return build_vit_backbone(_entry, **options)

        kind = "dinov2" if entry.name.startswith("dinov2") else "dino"
        register_backbone(
            entry.name,
            factory,
            overwrite=True,
            patch_size=entry.patch_size,
            embed_dim=entry.embed_dim,
            timm_name=entry.timm_name,
            weights=entry.weights.file_name,
            url=entry.weights.url,
            sha256=entry.weights.sha256,
            pos_interp=entry.pos_interp,
            kind=kind,
            notes=entry.notes,
        )

    def descriptor_factory(
        weights=None, pos_interp=None, patch_size: int = 8, **mean_std
    ) -> Backbone:
        if weights is not None:
            raise ValueError("descriptor: has no weights; do not pass weights=")
        unknown = sorted(set(mean_std) - {"mean", "std"})
        if unknown:
            raise ValueError(
                f"descriptor: unknown options {unknown}; it takes patch_size, mean and std "
                "(it is deterministic: no weights, no seed)"
            )
        return DescriptorBackbone(patch_size=patch_size, **mean_std)

    register_backbone(
        "descriptor",
        descriptor_factory,
        overwrite=True,
        patch_size=8,
        embed_dim=EMBED_DIM,
        kind="descriptor",
        notes="offline weight-free colour + texture descriptor (patch_size configurable)",
    )


_register_builtins()
