"""The feature store: backbone patch tokens of one dataset split, on zarr v3.

One store holds the features of one (dataset, split, backbone, resolution, crop), as a zarr v3
group on a local path or any fsspec URL such as ``s3://`` or ``memory://`` (the layout:
:mod:`stego_probe.store.format`).

A *block* is the unit of writing: one chunk, or one shard when ``shard_images`` is set. The
extractor writes a block's ``tokens``, ``tokens_flipped``, ``labels`` and ``ids``, then its
``checksums`` row, and only then sets ``written[block]``; a restarted extraction rewrites exactly
the blocks whose marker is not set. Readers refuse an incomplete store unless asked
(``allow_incomplete=True``), check the ``layout`` attributes against the arrays on open, and
verify each block's checksums the first time a handle reads it: damage raises
:class:`StoreCorruptError` naming the store, array and image range (``stego-probe verify STORE
--repair`` re-extracts the damaged blocks; see :mod:`stego_probe.verify`). Stores of format
version 1 (no checksums) open read-only with a warning that they cannot be verified.

Submodules (import from ``stego_probe.store``; the names below are re-exported here):

* ``format`` — the on-disk format: :data:`FORMAT`, :data:`FORMAT_VERSION`, array names,
  :func:`block_checksum`, the ``zarr.json`` readers, :class:`StoreCorruptError`.
* ``paths`` — :func:`normalize_path` and the fsspec filesystem of a path or URL.
* ``tokens`` — :data:`Index`, :func:`pool_labels` (hard token labels),
  :func:`soft_token_labels` (the class mass under bilinear upsampling), :func:`to_float32` /
  :func:`to_int64` (the fast token / label conversions), the
  seeded token draw shared by every store class.
* ``feature_store`` — :class:`FeatureStore` (open, read, sample, summarise), built in layers:
  ``layout`` (attributes parsed and checked against the arrays), ``integrity`` (block
  checksums verified on read, ``check_block``), ``writer`` (create, write, invalidate, mark
  complete).
* ``contract`` — the store contract: :class:`TokenStore`, :func:`is_store`,
  :class:`ArrayStore`, :func:`preloaded`, :data:`STORE_PAIR_KEYS`,
  :func:`store_pair_differences`, :func:`check_store_pair`.

See ``docs/store.md`` for the guarantees and a worked example.
"""

from stego_probe.fileio import to_jsonable as to_jsonable  # re-export: its old home
from stego_probe.store.contract import (
    STORE_PAIR_KEYS,
    ArrayStore,
    TokenStore,
    check_store_pair,
    is_store,
    preloaded,
    store_pair_differences,
)
from stego_probe.store.feature_store import FeatureStore
from stego_probe.store.format import (
    CHECKSUM_ALGORITHM,
    FORMAT,
    FORMAT_VERSION,
    READABLE_FORMAT_VERSIONS,
    SUCCESS_MARKER,
    StoreCorruptError,
    block_checksum,
)
from stego_probe.store.paths import normalize_path
from stego_probe.store.tokens import (
    Index,
    pool_labels,
    soft_token_labels,
    to_float32,
    to_int64,
)

__all__ = [
    "CHECKSUM_ALGORITHM",
    "FORMAT",
    "FORMAT_VERSION",
    "READABLE_FORMAT_VERSIONS",
    "STORE_PAIR_KEYS",
    "SUCCESS_MARKER",
    "ArrayStore",
    "FeatureStore",
    "Index",
    "StoreCorruptError",
    "TokenStore",
    "block_checksum",
    "check_store_pair",
    "is_store",
    "normalize_path",
    "pool_labels",
    "preloaded",
    "soft_token_labels",
    "store_pair_differences",
    "to_float32",
    "to_int64",
]
