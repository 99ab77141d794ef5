"""The STEGO evaluation / training transform, the five-crop expansion and un-normalisation.

Protocol (PROTOCOL §2.5, §2.6, Q21): the shorter image side is resized to ``res`` with **PIL
NEAREST** (for RGB images as well as labels), the long side to ``int(res * long / short)`` as
torchvision's ``Resize(int)`` does, then a torchvision-style ``CenterCrop(res)``; images are
converted to [0, 1] and normalised with the ImageNet statistics.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from stego_probe.data.base import Sample
from stego_probe.labels import IGNORE

#: ImageNet statistics: the normalisation of every built-in backbone (the default ``mean`` /
#: ``std`` of :class:`~stego_probe.backbones.Backbone`), applied by the transforms here and
#: undone by the CRF (``stego_probe.probes.crf.image_to_uint8``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
_CROPS = ("center", "none")


def resized_size(height: int, width: int, res: int) -> tuple[int, int]:
    """Output (H, W) of torchvision's ``Resize(res)``: shorter side -> ``res``, long side ->
    ``int(res * long / short)``.

    Examples:
        >>> resized_size(480, 640, 320)
        (320, 426)
    """
    if height <= width:
        return res, int(res * width / height)
    return int(res * height / width), res


def center_crop_box(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """Top-left corner ``(top, left)`` of torchvision's centre crop: ``int(round((H - h) / 2))``
    (Python rounding, so half-way cases round to even).

    Examples:
        >>> center_crop_box(5, 8, 2, 4)
        (2, 2)
    """
    if crop_h > height or crop_w > width:
        raise ValueError(
            f"crop size ({crop_h}, {crop_w}) is larger than the image ({height}, {width})"
        )
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))


def _resize_label(label: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """PIL NEAREST resize of an int label map (H, W) -> size_hw, int64."""
    if tuple(label.shape) == tuple(size_hw):
        return label.astype(np.int64, copy=True)
    im = Image.fromarray(np.ascontiguousarray(label, dtype=np.int32))
    out = im.resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST)
    return np.asarray(out, dtype=np.int64)


class StegoTransform:
    """Callable ``Sample -> (image, label)`` implementing the STEGO resize / crop / normalise.

    Returns:
        image: float32 tensor (3, res, res), ``(x / 255 - mean) / std``.
        label: int64 tensor (res, res), classes in ``[0, K)`` and -1 = ignore (all -1 when the
            sample is unlabelled).

    Create it with :func:`stego_transform`. ``describe()`` gives a JSON-able dict for provenance.
    """

    def __init__(
        self,
        res: int,
        crop: str = "center",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        image_resample: str = "nearest",
    ) -> None:
        if not isinstance(res, int | np.integer) or isinstance(res, bool) or res <= 0:
            raise ValueError(f"res: expected a positive int, got {res!r}")
        if crop not in _CROPS:
            raise ValueError(f"crop: expected one of {list(_CROPS)}, got {crop!r}")
        if image_resample not in _RESAMPLE:
            raise ValueError(
                f"image_resample: expected one of {list(_RESAMPLE)}, got {image_resample!r}"
            )
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean/std: expected 3 values each, got {mean!r} / {std!r}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std: expected positive values, got {std!r}")
        self.res = int(res)
        self.crop = crop
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.image_resample = image_resample
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    def describe(self) -> dict:
        """JSON-able description (``res, crop, image_resample, label_resample, mean, std``)."""
        return {
            "res": self.res,
            "crop": self.crop,
            "image_resample": self.image_resample,
            "label_resample": "nearest",
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def __repr__(self) -> str:
        return (
            f"StegoTransform(res={self.res}, crop={self.crop!r}, "
            f"image_resample={self.image_resample!r})"
        )

    def geometry(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((resized_h, resized_w), (top, left))`` for an input of size (height, width)."""
        if self.crop == "none":
            return (self.res, self.res), (0, 0)
        rh, rw = resized_size(height, width, self.res)
        return (rh, rw), center_crop_box(rh, rw, self.res, self.res)

    def __call__(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        image = sample.image
        if not isinstance(image, Image.Image):
            raise ValueError(f"sample {sample.id!r}: image must be a PIL image, got {type(image)}")
        if image.mode != "RGB":
            image = image.convert("RGB")
        h, w = image.height, image.width
        label = sample.label
        if label is not None:
            label = np.asarray(label)
            if label.shape != (h, w):
                raise ValueError(
                    f"sample {sample.id!r}: label shape {label.shape} does not match image "
                    f"size {(h, w)} (H, W)"
                )
        (rh, rw), (top, left) = self.geometry(h, w)
        r = self.res
        if (rh, rw) != (h, w):
            image = image.resize((rw, rh), _RESAMPLE[self.image_resample])
        arr = np.array(image, dtype=np.uint8)[top : top + r, left : left + r]
        img_t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).to(torch.float32)
        img_t = img_t.div(255.0).sub(self._mean_t).div(self._std_t).contiguous()
        if label is None:
            lab_t = torch.full((r, r), IGNORE, dtype=torch.int64)
        else:
            lab = _resize_label(label, (rh, rw))[top : top + r, left : left + r]
            lab_t = torch.from_numpy(np.ascontiguousarray(lab))
        return img_t, lab_t


def stego_transform(
    res: int,
    crop: str = "center",
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    image_resample: str = "nearest",
) -> StegoTransform:
    """The STEGO transform: ``Sample -> (image (3, res, res) float32, label (res, res) int64)``.

    Args:
        res: output side in pixels (224 for training caches, 320 for evaluation).
        crop: ``"center"``: resize the shorter side to ``res`` (long side
            ``int(res * long / short)``) then centre-crop ``res x res`` like torchvision's
            ``CenterCrop``; ``"none"``: the reference's square resize to ``(res, res)``, which
            distorts the aspect ratio.
        mean, std: per-channel normalisation applied after scaling to [0, 1].
        image_resample: ``"nearest"`` (the protocol, Q21), ``"bilinear"`` or ``"bicubic"`` for
            non-parity studies. Labels are always resized with NEAREST.

    Examples:
        >>> import numpy as np
        >>> from PIL import Image
        >>> s = Sample(Image.new("RGB", (64, 48)), np.zeros((48, 64), np.int64), "a")
        >>> img, lab = stego_transform(32)(s)
        >>> tuple(img.shape), img.dtype, tuple(lab.shape), lab.dtype
        ((3, 32, 32), torch.float32, (32, 32), torch.int64)
    """
    return StegoTransform(res, crop=crop, mean=mean, std=std, image_resample=image_resample)


def five_crop_boxes(height: int, width: int, ratio: float = 0.5) -> list[tuple[int, int, int, int]]:
    """The five crop boxes ``(top, left, crop_h, crop_w)`` in torchvision ``five_crop`` order:
    top-left, top-right, bottom-left, bottom-right, centre. The crop size is
    ``(int(H * ratio), int(W * ratio))`` as in the reference ``crop_datasets.py``.

    Examples:
        >>> five_crop_boxes(5, 8)
        [(0, 0, 2, 4), (0, 4, 2, 4), (3, 0, 2, 4), (3, 4, 2, 4), (2, 2, 2, 4)]
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio: expected a crop ratio in (0, 1], got {ratio!r}")
    ch, cw = int(height * ratio), int(width * ratio)
    if ch < 1 or cw < 1:
        raise ValueError(
            f"ratio={ratio} gives an empty crop ({ch}, {cw}) for an image of size "
            f"({height}, {width})"
        )
    ct, cl = center_crop_box(height, width, ch, cw)
    return [
        (0, 0, ch, cw),
        (0, width - cw, ch, cw),
        (height - ch, 0, ch, cw),
        (height - ch, width - cw, ch, cw),
        (ct, cl, ch, cw),
    ]


def five_crop_sample(sample: Sample, ratio: float = 0.5) -> list[Sample]:
    """Expand one sample into its five crops (PROTOCOL §2.6), at native resolution.

    Args:
        sample: image (W x H) and label (H, W) int64 or None.
        ratio: crop side as a fraction of each image side.

    Returns:
        five Samples in the order TL, TR, BL, BR, centre, with ids ``f"{id}_c{k}"``; crop ``k``
        of source image ``i`` is item ``5 * i + k`` of a cropped dataset. Labels are copies
        (int64) or None.
    """
    h, w = sample.image.height, sample.image.width
    if sample.label is not None and np.asarray(sample.label).shape != (h, w):
        raise ValueError(
            f"sample {sample.id!r}: label shape {np.asarray(sample.label).shape} does not match "
            f"image size {(h, w)} (H, W)"
        )
    out = []
    for k, (top, left, ch, cw) in enumerate(five_crop_boxes(h, w, ratio)):
        img = sample.image.crop((left, top, left + cw, top + ch))
        lab = None
        if sample.label is not None:
            lab = np.array(sample.label[top : top + ch, left : left + cw], dtype=np.int64)
        out.append(Sample(img, lab, f"{sample.id}_c{k}"))
    return out


def denormalize_to_uint8(
    image: torch.Tensor | np.ndarray,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> np.ndarray:
    """Undo the normalisation and convert to uint8 by **truncation** of ``255 x`` (PROTOCOL §5,
    Q28: the reference's ``to_pil_image`` truncates rather than rounds).

    Args:
        image: normalised float image (3, H, W), or a batch (B, 3, H, W); tensor or array.

    Returns:
        uint8 array (H, W, 3), or (B, H, W, 3) for a batch, channel order RGB.
    """
    x = torch.as_tensor(image).detach().to("cpu", torch.float32)
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"image: expected shape (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    x = (x * s + m).mul(255.0).clamp(0.0, 255.0).to(torch.uint8)
    return x.movedim(-3, -1).contiguous().numpy()
