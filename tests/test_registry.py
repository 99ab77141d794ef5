"""The one Registry class behind datasets, backbones, projections and probes."""

import pytest

from stego_probe.registry import Registry, UnknownNameError


def _reg():
    reg = Registry("model")
    reg.register("resnet50", lambda: "r50", depth=50)

    @reg.register("vit_small", patch=16)
    def vit_small():
        return "vit"

    return reg, vit_small


def test_register_get_meta_and_decorator_returns_target():
    reg, vit_small = _reg()
    assert vit_small() == "vit"  # the decorator leaves its target usable
    assert reg.get("vit_small") is vit_small
    assert reg.meta("resnet50") == {"depth": 50}
    reg.meta("resnet50")["depth"] = 1  # a copy: the entry's metadata is not changed
    assert reg.entry("resnet50").meta == {"depth": 50}
    assert "resnet50" in reg and "resnet" not in reg and 3 not in reg
    assert len(reg) == 2 and list(reg) == ["resnet50", "vit_small"]


def test_names_filter_is_an_fnmatch_pattern():
    reg, _ = _reg()
    reg.register("vit_base", object)
    assert reg.names() == ["resnet50", "vit_base", "vit_small"]
    assert reg.names("vit_*") == ["vit_base", "vit_small"]
    assert reg.names("*50") == ["resnet50"]
    assert reg.names("nothing*") == []
    assert [e.name for e in reg.entries()] == ["resnet50", "vit_small", "vit_base"]


def test_unknown_name_message_names_kind_name_suggestion_and_known_names():
    reg, _ = _reg()
    with pytest.raises(UnknownNameError) as info:
        reg.get("vit_smal")
    msg = str(info.value)
    assert msg == (
        "unknown model 'vit_smal' (did you mean 'vit_small'?); known models: resnet50, vit_small"
    )
    assert "\n" not in msg
    # catchable as both a lookup error and a bad-argument error
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(KeyError, match=r"unknown model 'zzz'; known models: resnet50"):
        reg.meta("zzz")
    assert "known models: resnet50, vit_small, timm:<x>" in str(reg.unknown("q", ["timm:<x>"]))
    assert "none registered" in str(Registry("probe").unknown("kmeans"))


def test_overwrite_policy_and_unregister():
    reg, _ = _reg()
    with pytest.raises(ValueError, match="model 'resnet50' is already registered"):
        reg.register("resnet50", object)
    reg.register("resnet50", int, overwrite=True)
    assert reg.get("resnet50") is int and reg.meta("resnet50") == {}
    replacing = Registry("dataset", overwrite=True)
    replacing.register("a", int)
    replacing.register("a", float)
    assert replacing.get("a") is float
    reg.unregister("resnet50")
    assert "resnet50" not in reg
    with pytest.raises(KeyError, match="unknown model 'resnet50'"):
        reg.unregister("resnet50")
    with pytest.raises(ValueError, match="model name: expected a non-empty string"):
        reg.register("", int)


def test_library_registries_share_the_class():
    from stego_probe.backbones import list_backbones
    from stego_probe.data import DATASETS, dataset_defaults, list_datasets
    from stego_probe.projections import PROJECTIONS, list_projections

    assert isinstance(DATASETS, Registry) and isinstance(PROJECTIONS, Registry)
    assert list_datasets("coco*") == ["cocostuff27"]
    assert list_projections("rp*") == ["rp", "rp_sparse"]
    assert {r["name"] for r in list_backbones("dinov2_vits14*")} == {
        "dinov2_vits14",
        "dinov2_vits14_reg",
    }
    assert dataset_defaults("synthetic")["seed"] == 0


def test_registration_order_registry():
    reg = Registry("backbone", sort=False)
    for name in ("vit", "descriptor", "resnet"):
        reg.register(name, object)
    assert reg.names() == ["vit", "descriptor", "resnet"]
    assert str(reg.unknown("x")).endswith("known backbones: vit, descriptor, resnet")
