"""The feature store's on-disk format: names, versions, checksums and metadata files.

Layout (a zarr v3 group, on a local path or any fsspec URL such as ``s3://`` or ``memory://``)::

    <store>/
      zarr.json          group attributes: format, format_version, layout, provenance, complete
      tokens/            float16 (N, h, w, C), chunks of ``chunk_images`` images, uncompressed
      tokens_flipped/    float16 (N, h, w, C), optional: features of the horizontally flipped
                         images, flipped back (evaluation-mode flip average, PROTOCOL §4.4)
      labels/            int16 (N, H, W) (int32 when K > 32766), zstd; -1 = ignore
      ids/               variable-length UTF-8 strings (N,)
      checksums/         int64 (n_blocks, n_arrays), one zarr chunk per block: CRC-32 of the
                         decoded content of each array's slice of the block (-1 = none)
      written/           bool (n_blocks,), one zarr chunk per block: the progress markers
      _SUCCESS           written last, only when every block is written

Every module of :mod:`stego_probe.store` takes the array names, format versions and checksum
from here; damage of any kind is a :class:`StoreCorruptError`.
"""

from __future__ import annotations

import json
import zlib

import numpy as np

FORMAT = "stego_probe.feature_store"
#: Format written by this version: 2 adds the ``checksums`` array (version 1 stores still open,
#: read-only and unverifiable).
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
SUCCESS_MARKER = "_SUCCESS"
CHECKSUM_ALGORITHM = "crc32"

# the arrays of the group
TOKENS = "tokens"
FLIPPED = "tokens_flipped"
LABELS = "labels"
IDS = "ids"
WRITTEN = "written"
CHECKSUMS = "checksums"
NO_CHECKSUM = -1


class StoreCorruptError(ValueError):
    """A feature store's content or metadata is damaged (checksum mismatch, missing or
    undecodable chunk, layout attributes that disagree with the arrays, unreadable
    ``zarr.json``).

    Attributes:
        path: the store.
        array: the damaged array (``None`` for store-level damage).
        block: the damaged block (``None`` for store-level damage).
        images: ``(start, stop)`` image range of the block (``None`` for store-level damage).
        reason: what is wrong, without the location.
    """

    def __init__(
        self,
        path: str,
        reason: str,
        array: str | None = None,
        block: int | None = None,
        images: tuple[int, int] | None = None,
    ) -> None:
        self.path = path
        self.array = array
        self.block = block
        self.images = images
        self.reason = reason
        if block is None:
            msg = f"{path}: damaged feature store: {reason}"
        else:
            where = f"{array} images {images[0]}..{images[1] - 1} (block {block})"
            msg = (
                f"{path}: damaged feature store: {where}: {reason}; run `stego-probe verify "
                f"{path} --repair` to re-extract the damaged blocks"
            )
        super().__init__(msg)


def block_checksum(a: np.ndarray) -> int:
    """CRC-32 of an array's decoded content, as stored in the ``checksums`` array.

    Numeric arrays: the CRC of their little-endian C-order bytes (so the dtype the store holds:
    float16 / float32 tokens, int16 / int32 labels). String arrays (ids): the CRC of the UTF-8
    JSON list of the strings.

    Examples:
        >>> block_checksum(np.zeros(4, np.int16)) == block_checksum(np.zeros(4, np.int16))
        True
        >>> block_checksum(np.asarray(["a", "b"], dtype=object)) != block_checksum(
        ...     np.asarray(["ab", ""], dtype=object))
        True
    """
    a = np.asarray(a)
    if a.dtype.kind in "OUST":
        payload = json.dumps([str(x) for x in a.tolist()], ensure_ascii=False).encode("utf-8")
        return zlib.crc32(payload)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def meta_file(path: str, name: str) -> str:
    """The ``zarr.json`` of the group (``name=""``) or of array ``name`` of the store at
    ``path``, as messages name it."""
    return f"{path}/{name}/zarr.json" if name else f"{path}/zarr.json"


_META_KEYS = {
    "group": ("zarr_format", "node_type", "attributes"),
    "array": ("zarr_format", "node_type", "shape", "data_type", "chunk_grid", "codecs"),
}


def read_meta(fs, root: str, path: str, name: str, kind: str) -> dict:
    """The parsed ``zarr.json`` of the group (``name=""``) or of array ``name``; a
    :class:`StoreCorruptError` naming the file and what was expected when it is not a zarr v3
    ``kind`` ("group" / "array") document."""
    file = meta_file(path, name)
    key = f"{root}/{name}/zarr.json" if name else f"{root}/zarr.json"
    expected = (
        "the zarr v3 group metadata of a feature store (keys zarr_format, node_type, attributes)"
        if kind == "group"
        else f"zarr v3 array metadata (keys {', '.join(_META_KEYS['array'])})"
    )
    try:
        raw = fs.cat_file(key)
    except FileNotFoundError:
        raise StoreCorruptError(path, f"{file} is missing; expected {expected}") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        why = "is empty" if not raw.strip() else f"is not valid JSON ({e})"
        raise StoreCorruptError(path, f"{file} {why}; expected {expected}") from None
    missing = [k for k in _META_KEYS[kind] if not isinstance(doc, dict) or k not in doc]
    if missing or doc.get("zarr_format") != 3 or doc.get("node_type") != kind:
        got = (
            f"missing {', '.join(missing)}"
            if missing
            else (f"zarr_format={doc.get('zarr_format')!r}, node_type={doc.get('node_type')!r}")
        )
        raise StoreCorruptError(path, f"{file} is incomplete or wrong ({got}); expected {expected}")
    return doc
