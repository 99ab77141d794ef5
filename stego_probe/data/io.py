"""File readers shared by the datasets, with errors that name the file and what was expected.

Every reader raises :class:`FileNotFoundError` for a missing file and :class:`ValueError` for a
file that exists but cannot be decoded or has the wrong shape, so that a dataset error always
tells the user which file to look at.
"""

from __future__ import annotations

import os
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


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file and return it fully decoded as RGB.

    Returns:
        ``PIL.Image`` in mode ``RGB`` (size W x H).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable image (unknown format, truncated, corrupt).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{p}: cannot read image ({type(e).__name__}: {e})") from e


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel label image (PNG of mode L, P, I;16 or I) as raw integer values.

    Palette ("P") images return their palette indices, which is how label PNGs store class ids.

    Returns:
        int64 array (H, W) of the raw stored values (no label map applied).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable file, or a multi-channel image (labels must be one channel).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"label file not found: {p}")
    try:
        with Image.open(p) as im:
            im.load()
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
