"""File readers shared by the datasets, with errors that name the file and what was expected.

Every reader raises :class:`FileNotFoundError` for a missing file and :class:`ValueError` for a
file that exists but cannot be decoded or has the wrong shape, so that a dataset error always
tells the user which file to look at.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

#: File extensions treated as images by directory listings (lower case, with the dot).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def require_dir(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """Return ``path`` as a :class:`Path` if it is a directory, else raise FileNotFoundError.

    Args:
        path: the directory that must exist.
        what: what the directory is, for the message (``"CocoStuff image directory"``).
        hint: what the user should do, appended to the message.
    """
    p = Path(path)
    if not p.is_dir():
        msg = f"{what} not found: expected a directory at {p}"
        raise FileNotFoundError(f"{msg}. {hint}" if hint else msg)
    return p


def require_file(path: str | os.PathLike, what: str, hint: str = "") -> Path:
    """Return ``path`` as a :class:`Path` if it is a file, else raise FileNotFoundError."""
    p = Path(path)
    if not p.is_file():
        msg = f"{what} not found: expected a file at {p}"
        raise FileNotFoundError(f"{msg}. {hint}" if hint else msg)
    return p


def read_list(path: str | os.PathLike, what: str = "split list", hint: str = "") -> list[str]:
    """Read a split list: one id per line, surrounding whitespace stripped, blank lines skipped.

    Returns:
        the ids in file order.

    Raises:
        FileNotFoundError: the list file does not exist.
        ValueError: the list is empty or repeats an id.
    """
    p = require_file(path, what, hint)
    with open(p, encoding="utf-8") as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise ValueError(f"{p}: {what} is empty; expected one image id per line")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = [i for i in ids if i in seen or seen.add(i)]
        raise ValueError(f"{p}: {what} repeats ids {sorted(set(dup))[:5]}")
    return ids


#: 16-bit single-channel PIL modes; their values 0..65535 are scaled to 0..255.
MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


@contextlib.contextmanager
def _open(p: Path, what: str) -> Iterator[Image.Image]:
    """``Image.open`` + ``load``; a decompression bomb (PIL's warning as well as its error)
    is a one-line ``ValueError`` naming the file and the limit."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(p) as im:
                im.load()
                yield im
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ValueError(
                f"{p}: {what} refused as a possible decompression bomb: {e} If the file is "
                "trusted, raise PIL.Image.MAX_IMAGE_PIXELS (None disables the check)"
            ) from None


def to_rgb(im: Image.Image, source: str = "image") -> Image.Image:
    """Convert a decoded PIL image to 8-bit ``RGB``.

    8-bit modes (``L``, ``P``, ``RGB``, ``RGBA``, ``CMYK`` ...) go through ``convert("RGB")``
    (alpha dropped). High-bit-depth grayscale is scaled by its mode's range, never clipped:

    * ``I;16`` / ``I;16L`` / ``I;16B`` / ``I;16N``: ``round(v * 255 / 65535)``;
    * ``I`` (32-bit int, how some readers return 16-bit files): values must lie in
      ``[0, 65535]`` and are scaled as 16-bit; others raise ValueError;
    * ``F`` (32-bit float): values must be finite and lie in ``[0, 1]``; scaled by 255.

    The gray value is then repeated into the three channels.

    Args:
        im: a loaded image.
        source: the file name for error messages.

    Returns:
        the image in mode ``RGB`` (same size).

    Raises:
        ValueError: an ``I`` / ``F`` image whose values are outside the range above.

    Examples:
        >>> im = Image.fromarray(np.array([[0, 257, 32768, 65535]], dtype=np.uint16))
        >>> im.mode, np.asarray(to_rgb(im))[0, :, 0].tolist()
        ('I;16', [0, 1, 128, 255])
    """
    mode = im.mode
    if mode not in (*MODES_16BIT, "I", "F"):
        return im.convert("RGB")
    arr = np.asarray(im).astype(np.float64)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode == "F":
        if not np.isfinite(arr).all() or lo < 0 or hi > 1:
            raise ValueError(
                f"{source}: float (mode 'F') image values must be finite and lie in [0, 1], got "
                f"[{lo:g}, {hi:g}]; convert it to 8- or 16-bit"
            )
        scale = 255.0
    else:
        if mode == "I" and (lo < 0 or hi > 65535):
            raise ValueError(
                f"{source}: 32-bit integer (mode 'I') image values must lie in [0, 65535] "
                f"(16-bit), got [{lo:g}, {hi:g}]; convert it to 8- or 16-bit"
            )
        scale = 255.0 / 65535.0
    gray = np.floor(arr * scale + 0.5).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file and return it fully decoded as 8-bit RGB.

    16-bit grayscale (PIL modes ``I;16*``, ``I``) and float (``F``) images are scaled by their
    mode's range to 0..255, not clipped (see :func:`to_rgb`).

    Returns:
        ``PIL.Image`` in mode ``RGB`` (size W x H).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable image (unknown format, truncated, corrupt), its
            values do not fit its mode's range (:func:`to_rgb`), or it has more pixels than
            ``PIL.Image.MAX_IMAGE_PIXELS`` (a possible decompression bomb; PIL only warns
            between 1x and 2x the limit, this refuses both).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    try:
        with _open(p, "image") as im:
            return to_rgb(im, str(p))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{p}: cannot read image ({type(e).__name__}: {e})") from e
    except ValueError as e:
        if str(p) in str(e):
            raise
        raise ValueError(f"{p}: cannot read image ({type(e).__name__}: {e})") from e


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label image (PNG of mode L, P, I;16 or I) as raw integer values.

    Palette ("P") images return their palette indices, which is how label PNGs store class ids.

    Returns:
        int64 array (H, W) of the raw stored values (no label map applied).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable file, a multi-channel image (labels must be one channel), or
            more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a possible decompression bomb).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"label file not found: {p}")
    try:
        with _open(p, "label image") as im:
            mode = im.mode
            if mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise ValueError(
                    f"{p}: label image has mode {mode!r}; expected a single-channel image "
                    "(mode L, P, I;16 or I) whose pixel values are class ids"
                )
            arr = np.array(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{p}: cannot read label image ({type(e).__name__}: {e})") from e
    return arr.astype(np.int64)


def read_mat(path: str | os.PathLike, key: str) -> np.ndarray:
    """Read one variable from a MATLAB ``.mat`` file (formats v4-v7.2, via ``scipy.io.loadmat``).

    Returns:
        the stored array (dtype as stored).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable file (including v7.3/HDF5 files) or ``key`` missing.
    """
    from scipy.io import loadmat

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f".mat file not found: {p}")
    try:
        data = loadmat(p, variable_names=[key])
    except NotImplementedError as e:  # v7.3 files are HDF5
        raise ValueError(f"{p}: MATLAB v7.3 (HDF5) files are not supported; save as v7") from e
    except Exception as e:  # scipy raises assorted errors for corrupt files
        raise ValueError(f"{p}: cannot read .mat file ({type(e).__name__}: {e})") from e
    if key not in data:
        raise ValueError(f"{p}: .mat file has no variable {key!r}")
    return np.asarray(data[key])


def check_same_size(
    image: Image.Image, label: np.ndarray, image_source: str, label_source: str
) -> None:
    """Raise ValueError if ``label`` (H, W) does not match ``image`` (W x H), naming both files."""
    if label.ndim != 2 or tuple(label.shape) != (image.height, image.width):
        raise ValueError(
            f"label size does not match image size: {label_source} has shape "
            f"{tuple(label.shape)} (H, W) but {image_source} is {image.height}x{image.width} "
            "(H x W)"
        )


def list_images(directory: Path) -> list[Path]:
    """Image files (by extension, case-insensitive) directly in ``directory``, hidden files
    skipped, sorted by name."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
