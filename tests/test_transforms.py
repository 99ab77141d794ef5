"""Transforms: resize / crop geometry against hand-computed pixels and torchvision, five-crop,
un-normalisation."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from stego_probe.backbones.base import IMAGENET_MEAN, IMAGENET_STD
from stego_probe.data import Sample
from stego_probe.data.transforms import (
    center_crop_box,
    denormalize_to_uint8,
    five_crop_boxes,
    five_crop_sample,
    resized_size,
    stego_transform,
)


def coord_sample(h, w, sid="s"):
    """Image whose R = 10 * row, G = 10 * col, B = 7; label = 100 * row + col."""
    rr, cc = np.mgrid[0:h, 0:w]
    img = np.stack([10 * rr, 10 * cc, np.full_like(rr, 7)], -1).astype(np.uint8)
    return Sample(Image.fromarray(img), (100 * rr + cc).astype(np.int64), sid)


def decode(img_t):
    """Normalised (3, H, W) tensor -> exact uint8 (H, W, 3) by rounding (for checks only)."""
    m = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((img_t * s + m) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_resized_size_matches_torchvision_rule():
    assert resized_size(480, 640, 320) == (320, 426)
    assert resized_size(640, 480, 320) == (426, 320)
    assert resized_size(5, 7, 3) == (3, 4)  # int(3 * 7 / 5) = int(4.2)
    assert resized_size(10, 10, 4) == (4, 4)


def test_center_crop_box_rounds_half_to_even_like_torchvision():
    assert center_crop_box(5, 7, 5, 4) == (0, 2)  # (7 - 4) / 2 = 1.5 -> 2
    assert center_crop_box(9, 9, 4, 4) == (2, 2)  # 2.5 -> 2
    assert center_crop_box(4, 4, 4, 4) == (0, 0)
    for h, w, ch, cw in [(5, 7, 5, 4), (9, 9, 4, 4), (11, 6, 4, 3)]:
        x = torch.arange(h * w).view(1, h, w)
        top, left = center_crop_box(h, w, ch, cw)
        assert torch.equal(TF.center_crop(x, [ch, cw]), x[:, top : top + ch, left : left + cw])
    with pytest.raises(ValueError, match="larger than the image"):
        center_crop_box(3, 3, 4, 2)


def test_center_transform_picks_the_pil_nearest_pixels():
    # 5x7 -> shorter side 3: (3, 4); rows floor((y+.5)*5/3) = 0, 2, 4; cols floor((x+.5)*7/4) =
    # 0, 2, 4, 6; centre crop of width 3 from 4 starts at round(0.5) = 0 -> cols 0, 2, 4.
    img, lab = stego_transform(3)(coord_sample(5, 7))
    assert img.shape == (3, 3, 3) and img.dtype == torch.float32
    assert lab.dtype == torch.int64
    assert lab.tolist() == [[0, 2, 4], [200, 202, 204], [400, 402, 404]]
    px = decode(img)
    assert px[..., 0].tolist() == [[0] * 3, [20] * 3, [40] * 3]
    assert px[..., 1].tolist() == [[0, 20, 40]] * 3
    # 4x9 -> (2, 4); rows 1, 3; cols floor((x+.5)*9/4) = 1, 3, 5, 7; crop left = round(1) = 1
    _, lab = stego_transform(2)(coord_sample(4, 9))
    assert lab.tolist() == [[103, 105], [303, 305]]
    # portrait: 9x4 -> (4, 2) then crop rows from 1
    _, lab = stego_transform(2)(coord_sample(9, 4))
    assert lab.tolist() == [[301, 303], [501, 503]]


def test_square_resize_when_crop_none():
    # 5x7 -> (3, 3): rows 0, 2, 4; cols floor((x+.5)*7/3) = 1, 3, 5
    img, lab = stego_transform(3, crop="none")(coord_sample(5, 7))
    assert lab.tolist() == [[1, 3, 5], [201, 203, 205], [401, 403, 405]]
    assert decode(img)[..., 1].tolist() == [[10, 30, 50]] * 3


def test_matches_torchvision_pipeline_exactly():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    lab = rng.integers(0, 27, (37, 53)).astype(np.int64)
    res = 16
    img_t, lab_t = stego_transform(res)(Sample(Image.fromarray(arr), lab, "x"))
    nearest = T.InterpolationMode.NEAREST
    ref_img = T.Compose(
        [
            T.Resize(res, nearest),
            T.CenterCrop(res),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(Image.fromarray(arr))
    ref_lab = T.Compose([T.Resize(res, nearest), T.CenterCrop(res), T.PILToTensor()])(
        Image.fromarray(lab.astype(np.uint8))
    )
    assert torch.equal(img_t, ref_img)
    assert torch.equal(lab_t, ref_lab[0].to(torch.int64))


def test_normalisation_values():
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 0, 128, 255
    img, _ = stego_transform(4)(Sample(Image.fromarray(arr), None, "n"))
    want = [(v / 255 - m) / s for v, m, s in zip((0, 128, 255), IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(img[:, 0, 0], torch.tensor(want, dtype=torch.float32), atol=1e-6)


def test_unlabelled_sample_gives_all_ignore_and_bad_label_shape_errors():
    s = coord_sample(6, 8)
    _, lab = stego_transform(4)(Sample(s.image, None, "u"))
    assert lab.shape == (4, 4) and bool((lab == -1).all())
    with pytest.raises(ValueError, match="'bad'.*label shape"):
        stego_transform(4)(Sample(s.image, np.zeros((8, 6), np.int64), "bad"))


def test_bilinear_images_keep_nearest_labels():
    s = coord_sample(10, 14)
    img_n, lab_n = stego_transform(4)(s)
    img_b, lab_b = stego_transform(4, image_resample="bilinear")(s)
    assert torch.equal(lab_n, lab_b)
    assert not torch.equal(img_n, img_b)
    assert stego_transform(4, image_resample="bilinear").describe()["label_resample"] == "nearest"


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"res": 0}, "res"),
        ({"res": 8, "crop": "five"}, "crop"),
        ({"res": 8, "image_resample": "area"}, "image_resample"),
        ({"res": 8, "std": (1.0, 0.0, 1.0)}, "std"),
    ],
)
def test_bad_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        stego_transform(**kw)


def test_five_crop_boxes_hand_computed():
    # 5x8, ratio .5 -> (2, 4); centre top = round(1.5) = 2, left = round(2) = 2
    assert five_crop_boxes(5, 8) == [
        (0, 0, 2, 4),
        (0, 4, 2, 4),
        (3, 0, 2, 4),
        (3, 4, 2, 4),
        (2, 2, 2, 4),
    ]
    # odd: 7x9 -> (3, 4); centre (round(2), round(2.5)) = (2, 2)
    assert five_crop_boxes(7, 9)[4] == (2, 2, 3, 4)
    assert five_crop_boxes(10, 10, ratio=0.7)[0] == (0, 0, 7, 7)
    with pytest.raises(ValueError, match="ratio"):
        five_crop_boxes(4, 4, ratio=0)


def test_five_crop_sample_order_ids_and_pixels_match_torchvision():
    s = coord_sample(7, 9, "img3")
    crops = five_crop_sample(s)
    assert [c.id for c in crops] == [f"img3_c{k}" for k in range(5)]
    # TL starts at (0,0), TR at (0, 5), BL at (4, 0), BR at (4, 5), centre at (2, 2)
    assert [int(c.label[0, 0]) for c in crops] == [0, 5, 400, 405, 202]
    ref = TF.five_crop(torch.from_numpy(s.label)[None], [3, 4])
    for c, r in zip(crops, ref):
        assert c.label.shape == (3, 4) and c.label.dtype == np.int64
        assert np.array_equal(c.label, r[0].numpy())
        px = np.asarray(c.image).astype(np.int64)
        assert np.array_equal(px[..., 0] // 10 * 100 + px[..., 1] // 10, c.label)
    assert all(c.label is None for c in five_crop_sample(Sample(s.image, None, "u")))


def test_denormalize_truncates():
    m = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = torch.tensor([200.7, 10.2, 255.0]).view(3, 1, 1) / 255.0
    out = denormalize_to_uint8((x - m) / s)
    assert out.shape == (1, 1, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [200, 10, 255]  # rounding would give 201
    # out-of-range values clamp; batches keep the batch axis; channel order stays RGB
    big = torch.stack([(torch.full((3, 2, 2), 2.0) - m) / s, (torch.full((3, 2, 2), -1.0) - m) / s])
    outb = denormalize_to_uint8(big)
    assert outb.shape == (2, 2, 2, 3)
    assert (outb[0] == 255).all() and (outb[1] == 0).all()
    rgb = torch.tensor([50.0, 100.0, 150.0]).view(3, 1, 1) / 255.0 + 0.5 / 255.0
    assert denormalize_to_uint8((rgb - m) / s)[0, 0].tolist() == [50, 100, 150]
    with pytest.raises(ValueError, match="image"):
        denormalize_to_uint8(torch.zeros(4, 2, 2))
