"""Tests for stego_probe.backbones: registry, weight loading, features, pos interp, descriptor."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from reference_vit import random_official_state_dict, reference_features  # noqa: E402

from stego_probe.backbones import (  # noqa: E402
    Backbone,
    get_backbone,
    list_backbones,
    register_backbone,
    register_extractor,
    unregister_backbone,
)
from stego_probe.backbones.pos_embed import reference_resample_patch_pos  # noqa: E402
from stego_probe.backbones.weights import (  # noqa: E402
    WeightsSpec,
    read_state_dict,
    resolve_weights,
    state_dict_fingerprint,
)

torch.set_num_threads(2)

TINY = dict(depth=2, embed_dim=48, num_heads=3, img_size=64)  # native grid 8x8 at p=8
TINY_V2 = dict(depth=2, embed_dim=48, num_heads=3, img_size=56)  # native grid 4x4 at p=14
ATOL = 2e-5


def _images(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def dino_ckpt(tmp_path_factory):
    """A tiny random ViT-S/8-layout checkpoint in the official DINO format (plain state dict)."""
    sd = random_official_state_dict(patch_size=8, embed_dim=48, depth=2, num_heads=3, grid=8)
    path = tmp_path_factory.mktemp("w") / "dino_deitsmall8_300ep_pretrain.pth"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def dino_bb(dino_ckpt):
    return get_backbone("dino_vits8", weights=dino_ckpt[0], model_kwargs=TINY)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Empty torch hub dir and downloads forbidden."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv("STEGO_PROBE_OFFLINE", "1")
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(old)


# ----------------------------------------------------------------------------- reference parity


@pytest.mark.parametrize("size", [(64, 64), (80, 80), (64, 80)])
def test_dino_matches_independent_reference(dino_ckpt, dino_bb, size):
    path, sd = dino_ckpt
    x = _images(2, 3, *size)
    ref = reference_features(sd, x, patch_size=8, num_heads=3)
    out = dino_bb(x)
    assert out.dtype == torch.float32
    assert out.shape == (2, 48, size[0] // 8, size[1] // 8)
    torch.testing.assert_close(out.double(), ref, atol=ATOL, rtol=0)


def test_timm_pos_interp_differs_off_native_only(dino_ckpt, dino_bb):
    path, sd = dino_ckpt
    timm_bb = get_backbone("dino_vits8", weights=path, model_kwargs=TINY, pos_interp="timm")
    assert timm_bb.provenance["pos_interp"] == "timm"
    assert dino_bb.provenance["pos_interp"] == "reference"
    native = _images(1, 3, 64, 64)
    torch.testing.assert_close(timm_bb(native), dino_bb(native), atol=1e-6, rtol=0)
    other = _images(1, 3, 80, 80)
    ref = reference_features(sd, other, patch_size=8, num_heads=3)
    assert (timm_bb(other).double() - ref).abs().max() > 1e-2


def test_dinov2_registers_official_layout_matches_reference(tmp_path):
    """Official DINOv2 reg4 layout (mask_token, register_tokens, cls pos) -> timm conversion."""
    sd = random_official_state_dict(
        patch_size=14, embed_dim=48, depth=2, num_heads=3, grid=4, dinov2=True, n_registers=4
    )
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(sd, path)
    bb = get_backbone("dinov2_vits14_reg", weights=path, model_kwargs=TINY_V2)
    assert bb.model.num_prefix_tokens == 5 and bb.patch_size == 14
    for size in [(56, 56), (70, 84)]:
        x = _images(2, 3, *size, seed=3)
        out = bb(x)
        assert out.shape == (2, 48, size[0] // 14, size[1] // 14)
        ref = reference_features(sd, x, patch_size=14, num_heads=3)
        torch.testing.assert_close(out.double(), ref, atol=ATOL, rtol=0)


def _keys_cubic_1d(values, src, a=-0.75):
    """Cubic convolution (PyTorch's bicubic, A=-0.75, clamped border) of ``values`` at ``src``."""

    def kernel(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    n, base = len(values), math.floor(src)
    return sum(
        float(values[min(max(k, 0), n - 1)]) * kernel(src - k) for k in range(base - 1, base + 3)
    )


def test_reference_resample_source_coordinates():
    """Rows are sampled at x_src = (y + .5) * sqrt(N) / (h + .1) - .5 (scale_factor convention)."""
    side, h, w = 8, 12, 8
    column = torch.randn(side, generator=torch.Generator().manual_seed(0))
    pos = column.view(side, 1).expand(side, side).reshape(1, side * side, 1)  # constant rows
    out = reference_resample_patch_pos(pos, (h, w)).reshape(h, w)
    ref = [_keys_cubic_1d(column, (y + 0.5) * side / (h + 0.1) - 0.5) for y in range(h)]
    torch.testing.assert_close(
        out[:, 5].double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5, rtol=0
    )
    # timm's size=(h, w) convention samples at (y + .5) * side / h - .5: measurably different
    timm_like = [_keys_cubic_1d(column, (y + 0.5) * side / h - 0.5) for y in range(h)]
    assert max(abs(a - b) for a, b in zip(ref, timm_like)) > 1e-2
    # unchanged at the native square grid, resampled when only the token count matches
    assert reference_resample_patch_pos(pos, (side, side)) is pos
    changed = reference_resample_patch_pos(pos, (4, 16))
    assert changed.shape == (1, 64, 1) and not torch.equal(changed, pos)
    # w == sqrt(N) still resamples columns with scale (w + .1) / sqrt(N) (a reference quirk)
    rows = torch.randn(side, generator=torch.Generator().manual_seed(1))
    pos_c = rows.view(1, side).expand(side, side).reshape(1, side * side, 1)
    out_c = reference_resample_patch_pos(pos_c, (h, side)).reshape(h, side)
    ref_c = [_keys_cubic_1d(rows, (x + 0.5) * side / (side + 0.1) - 0.5) for x in range(side)]
    torch.testing.assert_close(
        out_c[3].double(), torch.tensor(ref_c, dtype=torch.float64), atol=1e-5, rtol=0
    )
    assert (out_c[3] - rows).abs().max() > 1e-4


# ----------------------------------------------------------------------------- which tensor


def test_features_are_post_norm_patch_tokens(dino_bb):
    x = _images(2, 3, 64, 72)
    out = dino_bb(x)
    model = dino_bb.model
    with torch.no_grad():
        tokens = model.forward_features(x)
        pre = model.forward_intermediates(
            x, indices=[-1], norm=False, output_fmt="NCHW", intermediates_only=True
        )[0]
    assert tokens.shape[1] == 1 + 8 * 9
    expect = tokens[:, 1:].reshape(2, 8, 9, 48).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expect, atol=0, rtol=0)
    assert (pre - out).abs().max() > 0.1  # pre-norm tokens are not the feature (Q3)
    # post-LayerNorm (affine) tokens: per-token mean over channels equals mean(norm.bias) after
    # removing the weight scaling, which pre-norm tokens do not satisfy
    unscaled = (out - model.norm.bias.view(1, -1, 1, 1)) / model.norm.weight.view(1, -1, 1, 1)
    torch.testing.assert_close(unscaled.mean(1), torch.zeros(2, 8, 9), atol=1e-4, rtol=0)


def test_register_tokens_dropped_random_build():
    bb = get_backbone("dinov2_vits14_reg", pretrained=False, model_kwargs=TINY_V2)
    x = _images(1, 3, 42, 70)
    out = bb(x)
    assert out.shape == (1, 48, 3, 5)
    with torch.no_grad():
        tokens = bb.model.forward_features(x)
    assert tokens.shape[1] == 5 + 15
    torch.testing.assert_close(out, tokens[:, 5:].reshape(1, 3, 5, 48).permute(0, 3, 1, 2))


# ----------------------------------------------------------------------------- model families

#: One architecture per family, as users name them; random weights only (no network).
FAMILIES = {
    "dino": "dino_vits8",
    "dinov2": "timm:vit_small_patch14_dinov2.lvd142m",
    "dinov2_reg": "timm:vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov3": "timm:vit_small_patch16_dinov3.lvd1689m",
    "siglip2": "timm:vit_base_patch16_siglip_224.v2_webli",
    "clip": "timm:vit_base_patch16_clip_224.openai",
    "c_radio": "timm:vit_base_patch16_radio_v3.c_radio",
    "mae": "timm:vit_base_patch16_224.mae",
}
FAMILY_KW = {"depth": 2, "embed_dim": 64, "num_heads": 2}
DOC = Path(__file__).parent.parent / "docs" / "backbones.md"


def _family_table() -> dict[str, list[str]]:
    """docs/backbones.md's family table: timm name (first cell in backticks) -> cells."""
    text = DOC.read_text()
    start = text.index("| family |")
    rows = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[1].strip("`")] = cells
    return rows


def _family_backbone(name, **kw):
    """A tiny random build whose LayerScale factors (init 1e-5 in DINOv2 / v3 / RADIO) are
    raised to 0.5, so that consecutive blocks give clearly different outputs."""
    bb = get_backbone(name, pretrained=False, model_kwargs=FAMILY_KW, **kw)
    with torch.no_grad():
        for key, param in bb.model.named_parameters():
            if key.endswith(("ls1.gamma", "ls2.gamma", "gamma_1", "gamma_2")):
                param.fill_(0.5)
    return bb


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_families_patch_tokens_norm_layer(family):
    """Per family: (B, C, H/p, W/p) output, prefix tokens dropped, mean/std from the model's
    data config, ``layer=`` = forward_intermediates(norm=True), and the docs table agrees."""
    from timm.data import resolve_data_config

    name = FAMILIES[family]
    bb = _family_backbone(name)
    model, p = bb.model, bb.patch_size
    x = _images(2, 3, 2 * p, 3 * p)  # a 2x3 grid: neither square nor the native size
    out = bb(x)
    assert out.shape == (2, 64, 2, 3)
    with torch.no_grad():
        tokens = model.forward_features(x)
    k = model.num_prefix_tokens
    assert tokens.shape[1] == k + 6 and bb.provenance["num_prefix_tokens"] == k
    torch.testing.assert_close(out, tokens[:, k:].reshape(2, 2, 3, 64).permute(0, 3, 1, 2))
    cfg = resolve_data_config(model=model)
    assert bb.mean == tuple(cfg["mean"]) and bb.std == tuple(cfg["std"])
    assert bb.provenance["mean"] == list(cfg["mean"])
    assert bb.facts["license"] == model.pretrained_cfg.get("license") is not None
    assert bb.provenance["license"] is None  # random weights carry no licence
    assert bb.provenance["layer"] is None and bb.provenance["layer_index"] is None

    deep = _family_backbone(name, layer=0)
    with torch.no_grad():
        want = deep.model.forward_intermediates(
            x, indices=[0], norm=True, output_fmt="NCHW", intermediates_only=True
        )[0]
    got = deep(x)
    torch.testing.assert_close(got, want)
    assert (got - out).abs().max() > 1e-3  # block 0 is not the final output
    assert (deep.provenance["layer"], deep.provenance["layer_index"]) == (0, 0)
    last = _family_backbone(name, layer=-1)
    torch.testing.assert_close(last(x), out)  # the final norm is applied to every block
    assert last.provenance["layer_index"] == 1

    row = _family_table()[
        model.pretrained_cfg.get("architecture") + "." + model.pretrained_cfg.get("tag")
    ]
    facts = bb.facts
    assert int(row[2].split()[0]) == k and int(row[3]) == p
    assert row[4] == (facts["final_norm"] or "none")
    assert row[5] == ("RoPE" if facts["rope"] else "learned absolute")
    assert facts["abs_pos_embed"] == (facts["rope"] is None)


def test_fixed_size_models_and_bad_layers_are_refused():
    beit = get_backbone("timm:beit_base_patch16_224", pretrained=False, model_kwargs=FAMILY_KW)
    assert beit.facts["fixed_input_size"] == [224, 224] and beit.facts["fc_norm"] == "LayerNorm"
    with pytest.raises(ValueError, match="takes only 224x224 inputs.*got 32x48"):
        beit(torch.zeros(1, 3, 32, 48))
    with pytest.raises(ValueError, match="layer=2 is out of range for 2 blocks"):
        get_backbone("dino_vits8", pretrained=False, model_kwargs=FAMILY_KW, layer=2)
    with pytest.raises(ValueError, match="layer must be an integer"):
        get_backbone("timm:vit_small_patch16_224", pretrained=False, layer="3")
    with pytest.raises(ValueError, match="layer= needs a ViT-style timm model"):
        get_backbone("timm:resnet18", pretrained=False, layer=1)


# ----------------------------------------------------------------------------- weights


def test_sha256_and_provenance(dino_ckpt, dino_bb):
    path, _ = dino_ckpt
    prov = dino_bb.provenance
    assert prov["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["weights"] == "dino_deitsmall8_300ep_pretrain.pth"
    assert prov["backbone"] == "dino_vits8"
    assert prov["timm_name"] == "vit_small_patch8_224.dino"
    assert prov["url"].startswith("https://dl.fbaipublicfiles.com/dino/")
    assert prov["patch_size"] == 8 and prov["embed_dim"] == 48
    assert prov["flip_average"] is False
    assert prov["mean"] == [0.485, 0.456, 0.406] and len(prov["std"]) == 3
    # the recorded hash can be enforced
    good = get_backbone(
        "dino_vits8", weights=path, model_kwargs=TINY, expected_sha256=prov["weights_sha256"]
    )
    assert good.provenance["weights_sha256"] == prov["weights_sha256"]


def test_wrong_sha256_names_file(dino_ckpt):
    path, _ = dino_ckpt
    with pytest.raises(ValueError, match=r"dino_deitsmall8_300ep_pretrain\.pth.*0{64}"):
        get_backbone("dino_vits8", weights=path, model_kwargs=TINY, expected_sha256="0" * 64)


def test_missing_file_offline_says_what_to_download(offline):
    with pytest.raises(FileNotFoundError) as err:
        get_backbone("dino_vits8", model_kwargs=TINY)
    msg = str(err.value)
    assert "dino_deitsmall8_300ep_pretrain.pth" in msg
    assert (
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall8_300ep_pretrain/"
        "dino_deitsmall8_300ep_pretrain.pth" in msg
    )
    assert str(offline) in msg and "--weights" in msg
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        get_backbone("dino_vits8", weights="/nonexistent/nope.pth", model_kwargs=TINY)


def test_hub_cache_is_used(offline, dino_ckpt):
    path, sd = dino_ckpt
    offline.mkdir(parents=True)
    (offline / path.name).write_bytes(path.read_bytes())
    bb = get_backbone("dino_vits8", model_kwargs=TINY)
    assert bb.provenance["weights"] == path.name
    x = _images(1, 3, 64, 64)
    torch.testing.assert_close(
        bb(x).double(), reference_features(sd, x, patch_size=8, num_heads=3), atol=ATOL, rtol=0
    )
    # the cache holds STEGO's 300ep file only: the timm-file entry is still missing
    with pytest.raises(FileNotFoundError, match="dino_deitsmall8_pretrain.pth"):
        get_backbone("dino_vits8_timm", model_kwargs=TINY)


def test_download_path_with_file_url(monkeypatch, tmp_path, dino_ckpt):
    path, _ = dino_ckpt
    monkeypatch.delenv("STEGO_PROBE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        spec = WeightsSpec("copy.pth", path.resolve().as_uri(), sha)
        got = resolve_weights(spec, progress=False)
        assert got == tmp_path / "hub" / "checkpoints" / "copy.pth"
        assert got.read_bytes() == path.read_bytes()
        bad = WeightsSpec("bad.pth", path.resolve().as_uri(), "f" * 64)
        with pytest.raises(ValueError, match="f{64}"):
            resolve_weights(bad, progress=False)
        assert not list((tmp_path / "hub" / "checkpoints").glob("bad.pth*"))  # nothing left
    finally:
        torch.hub.set_dir(old)


def test_teacher_checkpoint_and_wrappers(tmp_path, dino_ckpt, dino_bb):
    import argparse

    _, sd = dino_ckpt
    teacher = {f"backbone.{k}": v for k, v in sd.items()}
    teacher["head.mlp.0.weight"] = torch.zeros(4, 48)  # DINO projection head: ignorable
    student = {f"module.{k}": v * 0 for k, v in teacher.items()}
    full = {"teacher": teacher, "student": student, "epoch": 3, "args": argparse.Namespace(a=1)}
    torch.save(full, tmp_path / "checkpoint.pth")
    torch.save({"state_dict": sd}, tmp_path / "wrapped.pth")
    x = _images(1, 3, 64, 64)
    for name in ("checkpoint.pth", "wrapped.pth"):
        bb = get_backbone("dino_vits8", weights=tmp_path / name, model_kwargs=TINY)
        torch.testing.assert_close(bb(x), dino_bb(x), atol=0, rtol=0)
    assert set(read_state_dict(tmp_path / "checkpoint.pth")) == set(sd) | {"head.mlp.0.weight"}


def test_key_mismatch_is_reported(tmp_path, dino_ckpt):
    _, sd = dino_ckpt
    missing = {k: v for k, v in sd.items() if k != "blocks.1.attn.qkv.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing\.pth.*missing keys.*blocks\.1\.attn\.qkv\.bias"):
        get_backbone("dino_vits8", weights=tmp_path / "missing.pth", model_kwargs=TINY)
    extra = dict(sd, **{"blocks.2.norm1.weight": torch.ones(48)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected keys.*blocks\.2\.norm1\.weight"):
        get_backbone("dino_vits8", weights=tmp_path / "extra.pth", model_kwargs=TINY)
    torch.save(dict(sd, **{"norm.weight": torch.ones(47)}), tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"shape mismatches norm\.weight: checkpoint \(47,\)"):
        get_backbone("dino_vits8", weights=tmp_path / "shape.pth", model_kwargs=TINY)
    # a checkpoint for another token grid is refused, not silently resampled
    with pytest.raises(ValueError, match=r"img_size': 64"):
        get_backbone(
            "dino_vits8", weights=tmp_path / "missing.pth", model_kwargs=dict(TINY, img_size=80)
        )
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth.*state dict"):
        get_backbone("dino_vits8", weights=tmp_path / "list.pth", model_kwargs=TINY)


def test_unreadable_weight_files_give_one_line_errors(tmp_path, capsys):
    from stego_probe.cli.main import main

    files = {
        "random.pth": bytes(range(256)) * 8,  # torch's weights-only error is a paragraph
        "notes.pth": b"hello\n",
        "bad.safetensors": b"x",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError) as info:
            read_state_dict(tmp_path / name)
        msg = str(info.value)
        assert len(msg.splitlines()) == 1 and "weights_only" not in msg, msg
        assert f"could not read weight file '{tmp_path / name}': expected a PyTorch state" in msg
    store = tmp_path / "store"
    argv = ["extract", "--dataset", "synthetic", "--split", "val", "--res", "16", "--limit", "1",
            "--no-progress", "--store", str(store), "--backbone", "dino_vits8"]  # fmt: skip
    for name in ("random.pth", "missing.pth"):
        assert main(argv + ["--weights", str(tmp_path / name)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(tmp_path / name) in err, err
    assert "does not exist" in err
    assert not store.exists()


def test_timm_name_with_weights_file(dino_ckpt, dino_bb):
    path, _ = dino_ckpt
    bb = get_backbone(
        "timm:vit_small_patch8_224.dino", weights=path, model_kwargs=TINY, pos_interp="reference"
    )
    assert bb.name == "timm:vit_small_patch8_224.dino"
    assert bb.provenance["license"] == bb.model.pretrained_cfg["license"] is not None
    x = _images(1, 3, 80, 72)
    torch.testing.assert_close(bb(x), dino_bb(x), atol=1e-6, rtol=0)
    rand = get_backbone("timm:vit_small_patch8_224.dino", pretrained=False, model_kwargs=TINY)
    assert rand.pos_interp == "timm" and rand.provenance["weights"] is None
    # random weights: weights_sha256 is their fingerprint, never the file hash of a checkpoint
    assert rand.provenance["weights_sha256"] == state_dict_fingerprint(rand.model)
    assert rand.provenance["weights_sha256"] != bb.provenance["weights_sha256"]


def test_timm_pretrained_falls_back_to_torch_hub_cache(offline, monkeypatch, dino_ckpt):
    """timm:<name> without weights: HF hub unavailable -> the config URL's file in the cache."""
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    path, _ = dino_ckpt
    with pytest.raises(FileNotFoundError, match="dino_deitsmall8_pretrain.pth"):
        get_backbone("timm:vit_small_patch8_224.dino", model_kwargs=TINY)
    offline.mkdir(parents=True)
    (offline / "dino_deitsmall8_pretrain.pth").write_bytes(path.read_bytes())
    bb = get_backbone("timm:vit_small_patch8_224.dino", model_kwargs=TINY)
    assert bb.provenance["weights"] == "dino_deitsmall8_pretrain.pth"
    assert bb.provenance["url"].endswith("/dino_deitsmall8_pretrain.pth")
    assert bb.provenance["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_options():
    with pytest.raises(KeyError, match=r"dino_vitb8.*descriptor.*timm:"):
        get_backbone("dino_vitx99")
    with pytest.raises(KeyError, match="not_a_model"):
        get_backbone("timm:not_a_model_xyz")
    with pytest.raises(ValueError, match="pos_interp"):
        get_backbone("dino_vits8", pretrained=False, model_kwargs=TINY, pos_interp="nearest")
    with pytest.raises(ValueError, match="conflict"):
        get_backbone("dino_vits8", pretrained=False, weights="x.pth", model_kwargs=TINY)
    with pytest.raises(ValueError, match="reference"):
        get_backbone("timm:resnet18", pretrained=False, pos_interp="reference")
    with pytest.raises(ValueError, match="divisible"):
        get_backbone("descriptor")(torch.zeros(1, 3, 30, 32))


# ----------------------------------------------------------------------------- flip averaging


def test_flip_average(dino_ckpt):
    path, _ = dino_ckpt
    plain = get_backbone("dino_vits8", weights=path, model_kwargs=TINY)
    flip = get_backbone("dino_vits8", weights=path, model_kwargs=TINY, flip_average=True)
    assert flip.provenance["flip_average"] is True
    x = _images(2, 3, 64, 80)
    expect = 0.5 * (plain(x) + plain(x.flip(-1)).flip(-1))
    torch.testing.assert_close(flip(x), expect, atol=1e-6, rtol=0)
    assert (flip(x) - plain(x)).abs().max() > 1e-3
    # a flip-equivariant extractor (average pooling): averaging changes nothing
    register_extractor("test_pool8", lambda im: torch.nn.functional.avg_pool2d(im, 8), 8, 3)
    try:
        pool, pool_flip = get_backbone("test_pool8"), get_backbone("test_pool8", flip_average=True)
        torch.testing.assert_close(pool_flip(x), pool(x), atol=1e-6, rtol=0)
    finally:
        unregister_backbone("test_pool8")


# ----------------------------------------------------------------------------- registry


def test_list_backbones_has_all_names():
    names = {r["name"] for r in list_backbones()}
    expected = {"dino_vits16", "dino_vits8", "dino_vits8_timm", "dino_vitb16", "dino_vitb8"}
    expected |= {f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg")}
    expected |= {"descriptor", "timm:<model>"}
    assert expected <= names
    rows = {r["name"]: r for r in list_backbones()}
    assert rows["dino_vits8"]["weights"] == "dino_deitsmall8_300ep_pretrain.pth"
    assert rows["dino_vits8_timm"]["weights"] == "dino_deitsmall8_pretrain.pth"
    assert rows["dino_vitb8"]["embed_dim"] == 768 and rows["dino_vitb8"]["patch_size"] == 8
    assert rows["dinov2_vitg14_reg"]["timm_name"] == "vit_giant_patch14_reg4_dinov2.lvd142m"
    assert all(r["sha256"] is None or len(r["sha256"]) == 64 for r in rows.values())


VIT_NAMES = [r["name"] for r in list_backbones() if r["kind"] in ("dino", "dinov2")]


@pytest.mark.parametrize("name", VIT_NAMES)
def test_every_vit_entry_builds_random_offline(name, offline):
    """The real architecture on the meta device (instant), then a narrow depth-1 forward."""
    from stego_probe.backbones.vit import VIT_ENTRIES, create_timm_model

    info = {r["name"]: r for r in list_backbones()}[name]
    with torch.device("meta"):
        full = create_timm_model(VIT_ENTRIES[name].timm_name)
    p, c = info["patch_size"], info["embed_dim"]
    assert full.patch_embed.patch_size == (p, p) and full.num_features == c
    depth = {"vits": 12, "vitb": 12, "vitl": 24, "vitg": 40}[name.split("_")[1][:4]]
    assert len(full.blocks) == depth
    assert full.num_prefix_tokens == (5 if name.endswith("_reg") else 1)
    assert full.patch_embed.img_size == ((518, 518) if p == 14 else (224, 224))

    bb = get_backbone(
        name, pretrained=False, model_kwargs={"depth": 1, "embed_dim": 48, "num_heads": 3}
    )
    out = bb(torch.zeros(1, 3, 2 * p, 3 * p))
    assert out.shape == (1, 48, 2, 3) and torch.isfinite(out).all()
    assert bb.patch_size == p and bb.provenance["weights"] is None
    assert bb.provenance["pretrained"] is False


def test_timm_cnn_build():
    cnn = get_backbone("timm:resnet18", pretrained=False)
    assert (cnn.patch_size, cnn.embed_dim) == (32, 512)
    assert cnn(torch.zeros(1, 3, 64, 96)).shape == (1, 512, 2, 3)


def test_register_extractor_round_trip():
    calls = []

    def fn(images):
        calls.append(images.shape)
        return torch.nn.functional.avg_pool2d(images, 4).repeat(1, 2, 1, 1)

    register_extractor(
        "test_pool4", fn, patch_size=4, embed_dim=6, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    try:
        rows = {r["name"]: r for r in list_backbones()}
        assert rows["test_pool4"]["patch_size"] == 4 and rows["test_pool4"]["kind"] == "extractor"
        bb = get_backbone("test_pool4")
        x = _images(2, 3, 8, 12)
        torch.testing.assert_close(bb(x), fn(x))
        assert bb.mean == (0.5, 0.5, 0.5) and bb.provenance["backbone"] == "test_pool4"
        with pytest.raises(ValueError, match="already registered"):
            register_extractor("test_pool4", fn, patch_size=4, embed_dim=6)
        register_extractor("test_pool4", fn, patch_size=4, embed_dim=5, overwrite=True)
        with pytest.raises(
            ValueError, match=r"test_pool4.*returned \(2, 6, 2, 3\).*\(2, 5, 2, 3\)"
        ):
            get_backbone("test_pool4")(x)
        with pytest.raises(ValueError, match="takes no weights"):
            get_backbone("test_pool4", weights="w.pth")
    finally:
        unregister_backbone("test_pool4")
    with pytest.raises(KeyError):
        get_backbone("test_pool4")


def test_register_backbone_factory_gets_only_given_options():
    seen = {}

    def factory(**options):
        seen.update(options)
        return get_backbone("descriptor", patch_size=options.get("patch_size", 8))

    register_backbone("test_factory", factory, patch_size=4, embed_dim=64, notes="n")
    try:
        bb = get_backbone("test_factory", device="auto", patch_size=4, flip_average=True)
        assert seen == {"patch_size": 4} and isinstance(bb, Backbone) and bb.flip_average
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("test_factory", factory)
        register_backbone("test_bad", lambda: object())
        with pytest.raises(TypeError, match="test_bad"):
            get_backbone("test_bad")
    finally:
        unregister_backbone("test_factory")
        unregister_backbone("test_bad")


# ----------------------------------------------------------------------------- descriptor


def _stripes(vertical: bool, size=64, period=4):
    """Normalised (ImageNet) image of black/white stripes, (1, 3, size, size)."""
    idx = torch.arange(size)
    wave = ((idx // (period // 2)) % 2).float()
    img = (
        wave.view(1, size).expand(size, size) if vertical else wave.view(size, 1).expand(size, size)
    )
    rgb = img.expand(3, size, size).clone()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return ((rgb - mean) / std).unsqueeze(0)


def test_descriptor_separates_orientation_and_colour():
    bb = get_backbone("descriptor")
    assert bb.embed_dim == 64 and bb.patch_size == 8 and bb.provenance["weights"] is None
    v, h = bb(_stripes(True))[0], bb(_stripes(False))[0]
    assert v.shape == (64, 8, 8)
    # the same colour statistics, different texture
    torch.testing.assert_close(v[:3], h[:3], atol=1e-5, rtol=0)
    dist = (v[:, 4, 4] - h[:, 4, 4]).norm()
    assert dist > 0.3 * v[:, 4, 4].norm()
    # identical interior patches give identical descriptors; repeated calls are deterministic
    interior = v[:, 3:5, 3:5].reshape(64, -1)
    torch.testing.assert_close(interior, interior[:, :1].expand_as(interior), atol=1e-5, rtol=0)
    torch.testing.assert_close(bb(_stripes(True))[0], v, atol=0, rtol=0)
    # flat red vs flat green: colour group differs, texture is ~zero for both
    red = torch.zeros(1, 3, 32, 32)
    green = red.clone()
    red[:, 0], green[:, 1] = 2.0, 2.0
    fr, fg = bb(red)[0, :, 1, 1], bb(green)[0, :, 1, 1]
    assert (fr[:12] - fg[:12]).norm() > 0.1
    assert fr[16:56].abs().max() < 1e-3


def test_descriptor_patch_size_and_errors():
    bb = get_backbone("descriptor", patch_size=4)
    assert bb(torch.zeros(2, 3, 16, 24)).shape == (2, 64, 4, 6)
    with pytest.raises(ValueError, match="even"):
        get_backbone("descriptor", patch_size=7)
    with pytest.raises(ValueError, match="no weights"):
        get_backbone("descriptor", weights="x.pth")


# ----------------------------------------------------------------------------- CLI


def test_cli_lists_registry(capsys):
    import argparse

    from stego_probe.cli import backbones as cli

    parser = argparse.ArgumentParser(prog="stego-probe")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["backbones"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for name in (
        "dino_vits8",
        "dino_deitsmall8_300ep_pretrain.pth",
        "dinov2_vitg14_reg",
        "descriptor",
    ):
        assert name in out
    args = parser.parse_args(["backbones", "--json", "--kind", "dinov2"])
    assert args.func(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and all(r["patch_size"] == 14 for r in rows)
    assert math.isclose(sum(r["embed_dim"] for r in rows), 2 * (384 + 768 + 1024 + 1536))


# ----------------------------------------------------------------------------- random init


RANDOM_KW = dict(pretrained=False, model_kwargs=dict(depth=1, embed_dim=48, num_heads=3))


def test_random_init_is_seeded_fingerprinted_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    a = get_backbone("timm:vit_small_patch16_224", **RANDOM_KW)
    assert torch.equal(torch.rand(4), expected_next)  # the build drew from a forked RNG
    b = get_backbone("timm:vit_small_patch16_224", seed=0, **RANDOM_KW)
    c = get_backbone("timm:vit_small_patch16_224", seed=1, **RANDOM_KW)
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(v, b.model.state_dict()[k]) for k, v in sa.items())
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], sc["blocks.0.attn.qkv.weight"])
    pa, pc = a.provenance, c.provenance
    assert (pa["init_seed"], pc["init_seed"]) == (0, 1) and pa["pretrained"] is False
    assert pa["weights_fingerprint"] == state_dict_fingerprint(a.model) == pa["weights_sha256"]
    assert pa["weights_sha256"] == b.provenance["weights_sha256"] != pc["weights_sha256"]
    assert pa["weights"] is None and len(pa["weights_fingerprint"]) == 64
    x = _images(1, 3, 32, 48)
    assert torch.equal(a(x), b(x)) and not torch.allclose(a(x), c(x))
    # registry (DINO) entries use the same path; the fingerprint can be pinned like a file hash
    d = get_backbone("dino_vits8", seed=5, **RANDOM_KW)
    assert d.provenance["init_seed"] == 5
    fp = d.provenance["weights_fingerprint"]
    assert (
        get_backbone("dino_vits8", seed=5, expected_sha256=fp, **RANDOM_KW).provenance[
            "weights_sha256"
        ]
        == fp
    )
    with pytest.raises(ValueError, match=f"seed 6.*fingerprint.*expected {fp}"):
        get_backbone("dino_vits8", seed=6, expected_sha256=fp, **RANDOM_KW)


def test_state_dict_fingerprint_covers_names_dtypes_and_values():
    sd = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(2, dtype=torch.int64)}
    fp = state_dict_fingerprint(sd)
    assert fp == state_dict_fingerprint(dict(reversed(list(sd.items()))))  # key order
    assert fp == state_dict_fingerprint({k: v.clone() for k, v in sd.items()})
    changed = [
        {"a": sd["a"], "c": sd["b"]},  # a renamed key
        {"a": sd["a"].double(), "b": sd["b"]},  # another dtype
        {"a": sd["a"].reshape(3, 2), "b": sd["b"]},  # another shape, same bytes
        {"a": sd["a"] + torch.tensor(1e-6), "b": sd["b"]},  # one ulp-ish of noise
        {"a": sd["a"]},  # a missing entry
    ]
    assert len({fp, *map(state_dict_fingerprint, changed)}) == 1 + len(changed)
    assert fp == state_dict_fingerprint({"a": sd["a"].t().contiguous().t(), "b": sd["b"]})
    with pytest.raises(ValueError, match="meta"):
        state_dict_fingerprint({"a": torch.empty(2, device="meta")})


def test_random_init_option_errors():
    with pytest.raises(ValueError, match="seed=1 only applies to random weights"):
        get_backbone("timm:vit_small_patch16_224", seed=1)
    with pytest.raises(ValueError, match=r"unknown options \['depth'\].*model_kwargs"):
        get_backbone("timm:vit_small_patch16_224", pretrained=False, depth=1)
    with pytest.raises(ValueError, match=r"unknown options \['depth'\].*model_kwargs"):
        get_backbone("dino_vits8", pretrained=False, depth=1)
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(ValueError, match="seed: expected an integer"):
            get_backbone("timm:vit_small_patch16_224", seed=bad, **RANDOM_KW)
    with pytest.raises(ValueError, match="pretrained must be true or false, got 'no'"):
        get_backbone("timm:vit_small_patch16_224", pretrained="no")
    with pytest.raises(ValueError, match="deterministic: no weights, no seed"):
        get_backbone("descriptor", seed=1)


# ----------------------------------------------------------------------------- offline hub


@pytest.fixture
def no_network(monkeypatch):
    """Every DNS lookup / TCP connect fails at once and is recorded (the sandbox has no network;
    a real attempt could hang)."""
    import socket

    calls = []

    def refuse(address):
        calls.append(tuple(address))
        raise OSError("test: network disabled")

    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: refuse((host, port)))
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(address))
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    return calls


@pytest.fixture
def empty_caches(monkeypatch, tmp_path):
    """Empty Hugging Face and torch hub caches under tmp_path (HF_HOME / TORCH_HOME)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    yield tmp_path
    torch.hub.set_dir(old)


def _forbid(monkeypatch, what):
    """Make downloads and model construction fail the test if they are reached."""
    import huggingface_hub

    from stego_probe.backbones import vit

    def reached(*args, **kwargs):
        raise AssertionError(f"{what}: reached {args[:1]}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", reached)
    monkeypatch.setattr(torch.hub, "download_url_to_file", reached)
    monkeypatch.setattr(vit, "create_timm_model", reached)


def test_offline_hub_missing_file_fails_at_once(monkeypatch, empty_caches, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("STEGO_PROBE_OFFLINE", "1")
    _forbid(monkeypatch, "offline build")
    with pytest.raises(FileNotFoundError) as err:
        get_backbone("timm:vit_small_patch8_224.dino")
    msg = str(err.value)
    assert msg.startswith("timm:vit_small_patch8_224.dino: pretrained weights not available")
    assert "timm/vit_small_patch8_224.dino/model.safetensors" in msg
    assert (
        "https://huggingface.co/timm/vit_small_patch8_224.dino/resolve/main/model.safetensors"
        in msg
    )
    assert f"hub cache {empty_caches / 'hf' / 'hub'}" in msg
    assert "offline: STEGO_PROBE_OFFLINE / HF_HUB_OFFLINE is set" in msg
    # the config's URL through the torch hub cache is named too
    assert "dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain/" in msg
    assert (
        str(empty_caches / "torch" / "hub" / "checkpoints" / "dino_deitsmall8_pretrain.pth") in msg
    )
    assert "--weights PATH" in msg and "pretrained=False" in msg
    assert no_network == []  # no DNS lookup or connection was even tried


def test_no_network_fails_at_once_without_offline_env(monkeypatch, empty_caches, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("STEGO_PROBE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    _forbid(monkeypatch, "no-network build")  # the probe fails, so no retrying download
    with pytest.raises(FileNotFoundError) as err:
        get_backbone("timm:vit_small_patch8_224.dino")
    msg = str(err.value)
    assert "no network: cannot reach huggingface.co:443 (test: network disabled)" in msg
    assert "no network: cannot reach dl.fbaipublicfiles.com:443" in msg
    assert ("huggingface.co", 443) in no_network
    # the registry entries probe their URL's host the same way before downloading
    with pytest.raises(FileNotFoundError, match="no network.*dino_deitsmall8_300ep_pretrain"):
        get_backbone("dino_vits8")


def test_network_probe_has_a_timeout(monkeypatch):
    """A resolver / connection that never answers costs the probe timeout, not minutes."""
    import socket
    import threading

    from stego_probe.backbones.weights import offline_reason

    release = threading.Event()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("STEGO_PROBE_OFFLINE", raising=False)
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)

    def hang(*args, **kwargs):
        release.wait(30)
        raise OSError("answered too late")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setenv("STEGO_PROBE_NETWORK_TIMEOUT", "0.2")
    try:
        reason = offline_reason("https://example.invalid/x.pth")
    finally:
        release.set()
    assert reason == "no network: no answer from example.invalid:443 within 0.2 s"
    assert offline_reason("file:///tmp/x.pth") is None  # not a network URL: no probe
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    targets = []

    def record(target, timeout):
        targets.append(target)
        raise OSError("refused")

    monkeypatch.setattr(socket, "create_connection", record)
    assert "proxy.invalid:3128" in offline_reason("https://example.invalid/x.pth")
    assert targets == [("proxy.invalid", 3128)]
    monkeypatch.setenv("STEGO_PROBE_NETWORK_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="STEGO_PROBE_NETWORK_TIMEOUT"):
        offline_reason("https://example.invalid/x.pth")


def test_offline_hub_cache_hit_is_loaded(monkeypatch, empty_caches, no_network, dino_ckpt):
    """A file in the HF hub cache (HF_HOME set after huggingface_hub was imported) is used."""
    from safetensors.torch import save_file

    path, sd = dino_ckpt
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_caches / "hf" / "hub" / "models--timm--vit_small_patch8_224.dino"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    file = repo / "snapshots" / commit / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(file))
    bb = get_backbone("timm:vit_small_patch8_224.dino", model_kwargs=TINY, pos_interp="reference")
    prov = bb.provenance
    assert prov["url"] == "hf-hub:timm/vit_small_patch8_224.dino/model.safetensors"
    assert prov["weights_sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert "init_seed" not in prov and prov["pretrained"] is True
    ref = get_backbone("dino_vits8", weights=path, model_kwargs=TINY)
    x = _images(1, 3, 64, 64)
    torch.testing.assert_close(bb(x), ref(x), atol=1e-6, rtol=0)
    assert no_network == []


# ----------------------------------------------------------------------------- --backbone-kwargs


def test_parse_backbone_kwargs_forms(tmp_path):
    from stego_probe.cli.backbone_options import parse_backbone_kwargs

    want = {"pretrained": False, "seed": 1, "model_kwargs": {"depth": 2, "img_size": [64, 64]}}
    assert parse_backbone_kwargs(json.dumps(want)) == want
    text = "pretrained=false, seed=1, model_kwargs.depth=2, model_kwargs.img_size=[64, 64]"
    assert parse_backbone_kwargs(text) == want
    assert parse_backbone_kwargs('model-kwargs={"depth": 2},pos_interp=timm') == {
        "model_kwargs": {"depth": 2},
        "pos_interp": "timm",
    }
    (tmp_path / "kw.json").write_text(json.dumps(want))
    assert parse_backbone_kwargs(f"@{tmp_path / 'kw.json'}") == want
    assert parse_backbone_kwargs("") == {} and parse_backbone_kwargs(None) == {}
    for bad, match in [
        ('{"pretrained": false', "--backbone-kwargs: invalid JSON"),
        ("[1, 2]", "--backbone-kwargs: expected a JSON object or KEY=VALUE"),
        ('{"a": 1} x', "--backbone-kwargs: invalid JSON"),
        ("seed", "expected a JSON object or KEY=VALUE"),
        ("seed=1,.x=2", "expected a JSON object or KEY=VALUE"),
        ('{"weights": "a.pth"}', "'weights' -> --weights has its own option"),
        (f"@{tmp_path / 'nope.json'}", "--backbone-kwargs: cannot read"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_backbone_kwargs(bad)
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        parse_backbone_kwargs(f"@{tmp_path / 'list.json'}")


def test_backbone_kwargs_on_every_backbone_command(tmp_path):
    import argparse
    import importlib
    import importlib.util

    parser = argparse.ArgumentParser(prog="stego-probe")
    sub = parser.add_subparsers(dest="command")
    for name in ("store", "sweep", "demo"):
        importlib.import_module(f"stego_probe.cli.{name}").register(sub)
    kw = ["--backbone-kwargs", "pretrained=false,seed=3"]
    want = {"pretrained": False, "seed": 3}
    for argv in (
        ["extract", "--dataset", "d", "--split", "val", "--backbone", "b", "--store", "s"],
        ["sweep", "--preset", "synthetic", "--out", "o"],
        ["demo"],
    ):
        assert parser.parse_args(argv + kw).backbone_kwargs == want
        assert parser.parse_args(argv).backbone_kwargs == {}
        assert parser.parse_args(argv + ["--layer", "-2"] + kw).backbone_kwargs == {
            **want,
            "layer": -2,
        }
    help_text = sub.choices["extract"].format_help()
    assert "--backbone-kwargs" in help_text and "pretrained=false" in help_text
    assert "--layer N" in help_text
    path = Path(__file__).parent.parent / "experiments" / "_common.py"
    spec = importlib.util.spec_from_file_location("_exp_common", path)
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    args = common.make_parser("x", "y").parse_args(kw)
    assert args.backbone_kwargs == want


def test_cli_extract_random_timm_backbone_records_seed(tmp_path, capsys):
    from stego_probe.cli.main import main
    from stego_probe.store import FeatureStore

    store = tmp_path / "store"
    argv = ["extract", "--dataset", "synthetic", "--split", "val", "--dataset-arg",
            "n_images=2", "--res", "32", "--device", "cpu", "--no-progress",
            "--store", str(store), "--backbone", "timm:vit_small_patch16_224"]  # fmt: skip
    tiny = {"depth": 1, "embed_dim": 48, "num_heads": 3, "img_size": 32}

    def kwargs(seed):
        return ["--backbone-kwargs", json.dumps({"pretrained": False, "seed": seed,
                                                 "model_kwargs": tiny})]  # fmt: skip

    assert main(argv + kwargs(1)) == 0
    prov = FeatureStore.open(str(store)).provenance
    info = prov["backbone_info"]
    assert info["init_seed"] == 1 and info["pretrained"] is False
    lib = get_backbone("timm:vit_small_patch16_224", pretrained=False, seed=1, model_kwargs=tiny)
    assert prov["weights_sha256"] == info["weights_fingerprint"]
    assert prov["weights_sha256"] == lib.provenance["weights_fingerprint"]
    assert main(argv + kwargs(1)) == 0  # same seed: the same store (complete, reused)
    capsys.readouterr()
    assert main(argv + kwargs(2)) == 1  # another seed: other weights, refused
    err = capsys.readouterr().err
    assert "refusing to mix incompatible feature store" in err and "weights_sha256" in err
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--backbone-kwargs", '{"pretrained": false'])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --backbone-kwargs: invalid JSON" in err
    layered = tmp_path / "layer0"
    argv_l = [a if a != str(store) else str(layered) for a in argv] + ["--layer", "0"]
    assert main(argv_l + kwargs(1)) == 0
    info = FeatureStore.open(str(layered)).provenance["backbone_info"]
    assert (info["layer"], info["layer_index"], info["license"]) == (0, 0, None)
    capsys.readouterr()
    assert main(["info", str(layered)]) == 0
    out = capsys.readouterr().out
    assert "output of block 0" in out and "license" in out
    assert main(["info", str(store)]) == 0
    assert "final output" in capsys.readouterr().out
