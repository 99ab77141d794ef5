"""Frozen feature extractors (backbones) and their registry.

``get_backbone(name, ...)`` builds a :class:`Backbone` mapping normalised images (B, 3, H, W)
to patch features (B, C, H/p, W/p) float32; ``list_backbones()`` lists the registry;
``register_backbone`` / ``register_extractor`` add user entries. See ``docs/backbones.md`` and
``docs/custom_extractors.md``.
"""

from stego_probe.backbones.base import IMAGENET_MEAN, IMAGENET_STD, Backbone
from stego_probe.backbones.custom import FunctionBackbone, register_extractor
from stego_probe.backbones.registry import (
    get_backbone,
    list_backbones,
    register_backbone,
    unregister_backbone,
)
from stego_probe.device import resolve_device

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "FunctionBackbone",
    "get_backbone",
    "list_backbones",
    "register_backbone",
    "register_extractor",
    "resolve_device",
    "unregister_backbone",
]
