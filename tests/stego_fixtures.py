"""Test fixtures for the STEGO tests: tiny clustered token stores and a fake released checkpoint.

Nothing is downloaded: the "released checkpoint" is written here with the structure of the real
files (PROTOCOL §3.7): a dict with ``state_dict`` (``net.model.*``, ``net.cluster1.0.*``,
``net.cluster2.{0,2}.*``, ``cluster_probe.clusters``, ``linear_probe.*``,
``train_cluster_probe.clusters``, ``decoder.*``) and ``hyper_parameters`` ``{"n_classes", "cfg"}``
where ``cfg`` is an OmegaConf ``DictConfig`` when omegaconf is installed, otherwise an object
pickled under the OmegaConf class names (so the loader's no-omegaconf fallback is exercised).
"""

from __future__ import annotations

import builtins
import collections
import importlib.util
import os
import subprocess
import sys
import types
from typing import Any

import numpy as np
import torch

from stego_probe.store import ArrayStore

HAVE_OMEGACONF = importlib.util.find_spec("omegaconf") is not None

#: A reference-style cfg (subset of train_config.yml keys, potsdam-like values).
FAKE_CFG = {
    "model_type": "vit_small",
    "dino_patch_size": 8,
    "dataset_name": "potsdam",
    "crop_type": None,
    "res": 224,
    "dim": 4,
    "projection_type": "nonlinear",
    "dropout": True,
    "pointwise": True,
    "zero_clamp": True,
    "stabalize": False,
    "pos_intra_weight": 0.67,
    "pos_inter_weight": 0.25,
    "neg_inter_weight": 0.63,
    "pos_intra_shift": 0.08,
    "pos_inter_shift": 0.02,
    "neg_inter_shift": 0.76,
    "extra_clusters": 0,
    "batch_size": 16,
    "max_steps": 5000,
    "lr": 5e-4,
    "neg_samples": 5,
    "feature_samples": 11,
    "num_neighbors": 7,
    "nested": {"a": 1, "b": [1, 2]},
}


# ------------------------------------------------------------------ clustered token stores
def clustered_tokens(
    n_images: int = 24,
    grid: int = 6,
    dim: int = 16,
    n_classes: int = 3,
    label_scale: int = 2,
    noise: float = 0.6,
    nuisance: float = 0.8,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (N, g, g, C) float32 and labels (N, g*s, g*s) int64 of a toy segmentation task.

    Each image has a background class and a rectangle of another class; a token is its class
    prototype + a per-image nuisance vector (shared by all tokens of the image) + i.i.d. noise.
    A few label pixels are -1 (ignore).
    """
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(n_classes, dim)) * 1.5
    tokens = np.empty((n_images, grid, grid, dim), np.float32)
    tok_labels = np.empty((n_images, grid, grid), np.int64)
    for i in range(n_images):
        bg, fg = rng.choice(n_classes, 2, replace=False)
        lab = np.full((grid, grid), bg)
        r0, c0 = rng.integers(0, grid // 2, 2)
        r1, c1 = r0 + rng.integers(2, grid // 2 + 2), c0 + rng.integers(2, grid // 2 + 2)
        lab[r0:r1, c0:c1] = fg
        tok_labels[i] = lab
        shift = rng.normal(size=dim) * nuisance
        tokens[i] = protos[lab] + shift + rng.normal(size=(grid, grid, dim)) * noise
    labels = np.repeat(np.repeat(tok_labels, label_scale, 1), label_scale, 2).copy()
    labels[:, 0, 0] = -1
    return tokens, labels


class TinyStore:
    """In-memory object with the read interface of ``FeatureStore`` used by the STEGO code
    (a stand-in that is not an :class:`~stego_probe.store.ArrayStore`, so it is preloaded, and
    that counts its token ``reads``)."""

    def __init__(self, tokens, labels, n_classes, ids=None, provenance=None):
        self._t, self._l = np.asarray(tokens, np.float32), np.asarray(labels, np.int64)
        self.n_images = len(self._t)
        self.grid = self._t.shape[1:3]
        self.dim = self._t.shape[3]
        self.label_shape = self._l.shape[1:]
        self.n_classes = n_classes
        self.ids = list(ids) if ids is not None else [f"img{i}" for i in range(self.n_images)]
        self.provenance = dict(
            provenance
            or {
                "backbone": "fake",
                "weights_sha256": "0" * 64,
                "patch_size": 8,
                "res": 48,
                "crop": "none",
                "split": "train",
                "dataset": "tiny",
                "n_classes": n_classes,
            }
        )
        self.complete = True
        self.reads = 0

    def tokens(self, idx):
        self.reads += 1
        idx = [idx] if isinstance(idx, int | np.integer) else idx
        return self._t[idx].copy()

    def labels(self, idx):
        idx = [idx] if isinstance(idx, int | np.integer) else idx
        return self._l[idx].copy()

    iter_batches = ArrayStore.iter_batches  # the in-memory store's, over tokens() / labels()


#: ``params`` of a StegoHead file as the flat 34-argument constructor wrote it (before
#: StegoConfig; a head fitted with ``n_components=3, steps=2, batch_size=4, knn_k=3,
#: num_neighbors=2, n_classes=2, select="last", progress=False``): None entries meant "the
#: preset's value". Such files must keep loading.
FLAT_PARAMS_V1 = {
    "batch_size": 4, "device": "cpu", "drop_last": True, "extra_clusters": None,
    "feature_samples": None, "head_dropout": 0.1, "knn_dropout": 0.0, "knn_k": 3,
    "knn_self_rank0": False, "lr": 0.0005, "n_classes": 2, "n_components": 3,
    "neg_index": "derangement", "neg_inter_shift": None, "neg_inter_weight": None,
    "neg_samples": 5, "num_neighbors": 2, "pointwise": None, "pos_inter_shift": None,
    "pos_inter_weight": None, "pos_intra_shift": None, "pos_intra_weight": None, "preset": None,
    "probe_lr": 0.005, "progress": False, "projection_type": "nonlinear", "random_state": 0,
    "select": "last", "stabilize": False, "steps": 2, "teacher_dropout": True,
    "val_batch_size": 8, "val_every": None, "zero_clamp": True,
}  # fmt: skip


# ------------------------------------------------------------------ fake released checkpoint
def _fake_omegaconf_modules() -> dict[str, types.ModuleType]:
    """Modules ``omegaconf.{dictconfig,listconfig,nodes,base}`` with minimal look-alike classes
    whose pickles have the shape of real OmegaConf 2.1-2.3 pickles: ``__dict__`` state with
    ``_content`` / ``_val`` / ``_metadata`` / ``_parent``, metadata naming ``typing.Any``,
    ``dict`` / ``list`` / ``int`` and holding a ``collections.defaultdict`` resolver cache."""
    base = types.ModuleType("omegaconf.base")
    nodes = types.ModuleType("omegaconf.nodes")
    dictconfig = types.ModuleType("omegaconf.dictconfig")
    listconfig = types.ModuleType("omegaconf.listconfig")
    root = types.ModuleType("omegaconf")

    class Metadata:
        def __init__(self, key=None, object_type=None):
            self.ref_type, self.object_type, self.optional, self.key = Any, object_type, True, key
            self.flags, self.flags_root = {}, False
            self.resolver_cache = collections.defaultdict(dict)

    class ContainerMetadata(Metadata):
        def __init__(self, key=None, object_type=dict):
            super().__init__(key, object_type)
            self.key_type = int if object_type is list else Any
            self.element_type = Any

    class AnyNode:
        def __init__(self, value, parent, key):
            self._metadata, self._parent = Metadata(key), parent
            self._flags_cache, self._val = None, value

    class DictConfig:
        def __init__(self, content: dict, parent=None, key=None):
            self._metadata, self._parent = ContainerMetadata(key, dict), parent
            self._content = {k: _wrap(v, self, k) for k, v in content.items()}

    class ListConfig:
        def __init__(self, content: list, parent=None, key=None):
            self._metadata, self._parent = ContainerMetadata(key, list), parent
            self._content = [_wrap(v, self, i) for i, v in enumerate(content)]

    def _wrap(v, parent, key):
        if isinstance(v, dict):
            return DictConfig(v, parent, key)
        if isinstance(v, list):
            return ListConfig(v, parent, key)
        return AnyNode(v, parent, key)

    for cls, mod in (
        (Metadata, base),
        (ContainerMetadata, base),
        (AnyNode, nodes),
        (DictConfig, dictconfig),
        (ListConfig, listconfig),
    ):
        cls.__module__, cls.__qualname__ = mod.__name__, cls.__name__
        setattr(mod, cls.__name__, cls)
    root.DictConfig = DictConfig
    return {m.__name__: m for m in (root, base, nodes, dictconfig, listconfig)}


def _fake_lightning_modules() -> dict[str, types.ModuleType]:
    """``pytorch_lightning.utilities.parsing`` with a look-alike ``AttributeDict`` (a dict)."""
    mods = {n: types.ModuleType(n) for n in LIGHTNING_MODULES}

    class AttributeDict(dict):
        def __getattr__(self, key):
            try:
                return self[key]
            except KeyError as e:
                raise AttributeError(key) from e

    AttributeDict.__module__, AttributeDict.__qualname__ = LIGHTNING_MODULES[-1], "AttributeDict"
    mods[LIGHTNING_MODULES[-1]].AttributeDict = AttributeDict
    return mods


LIGHTNING_MODULES = (
    "pytorch_lightning",
    "pytorch_lightning.utilities",
    "pytorch_lightning.utilities.parsing",
)


def make_cfg(cfg: dict):
    """A DictConfig (real, or the look-alike when omegaconf is missing) holding ``cfg``."""
    if HAVE_OMEGACONF:
        from omegaconf import OmegaConf

        return OmegaConf.create(cfg)
    return sys.modules["omegaconf"].DictConfig(cfg)


def write_fake_checkpoint(
    path,
    in_dim: int = 6,
    dim: int = 4,
    n_classes: int = 3,
    extra_clusters: int = 0,
    nonlinear: bool = True,
    extra_keys: dict | None = None,
    drop_keys: tuple[str, ...] = (),
    cfg: dict | None = None,
    seed: int = 0,
    attribute_dict: bool = False,
    extra_entries: dict | None = None,
) -> dict:
    """Write a fake released STEGO checkpoint to ``path``; returns its state dict.

    Besides ``state_dict`` and ``hyper_parameters`` it holds what Lightning 1.5 also saves
    (``callbacks`` keyed by state-key strings, Adam ``optimizer_states``, ``lr_schedulers``).
    ``attribute_dict``: store ``hyper_parameters`` as a Lightning ``AttributeDict`` (as some
    Lightning versions do) instead of a plain dict. ``extra_entries``: more top-level entries.

    Shapes: ``net.cluster1.0.weight`` (D, C, 1, 1), ``net.cluster2.0.weight`` (C, C, 1, 1),
    ``net.cluster2.2.weight`` (D, C, 1, 1), ``cluster_probe.clusters`` (K + E, D),
    ``linear_probe.weight`` (K, D, 1, 1).
    """
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    sd = {
        "net.model.cls_token": r(1, 1, in_dim),
        "net.model.blocks.0.attn.qkv.weight": r(3 * in_dim, in_dim),
        "net.model.norm.weight": r(in_dim),
        "net.cluster1.0.weight": r(dim, in_dim, 1, 1),
        "net.cluster1.0.bias": r(dim),
        "cluster_probe.clusters": r(n_classes + extra_clusters, dim),
        "linear_probe.weight": r(n_classes, dim, 1, 1),
        "linear_probe.bias": r(n_classes),
        "train_cluster_probe.clusters": r(n_classes, dim),
        "decoder.weight": r(in_dim, dim, 1, 1),
        "decoder.bias": r(in_dim),
    }
    if nonlinear:
        sd.update(
            {
                "net.cluster2.0.weight": r(in_dim, in_dim, 1, 1),
                "net.cluster2.0.bias": r(in_dim),
                "net.cluster2.2.weight": r(dim, in_dim, 1, 1),
                "net.cluster2.2.bias": r(dim),
            }
        )
    sd.update(extra_keys or {})
    for k in drop_keys:
        sd.pop(k)
    cfg = {
        **FAKE_CFG,
        "dim": dim,
        "extra_clusters": extra_clusters,
        "projection_type": "nonlinear" if nonlinear else "linear",
        **(cfg or {}),
    }
    fake = {} if HAVE_OMEGACONF else _fake_omegaconf_modules()
    if attribute_dict:
        fake.update(_fake_lightning_modules())
    saved = {k: sys.modules.get(k) for k in fake}
    sys.modules.update(fake)
    try:
        hp = {"n_classes": n_classes, "cfg": make_cfg(cfg)}
        if attribute_dict:
            hp = sys.modules[LIGHTNING_MODULES[-1]].AttributeDict(hp)
        ckpt = {
            "epoch": 3,
            "global_step": 1234,
            "pytorch-lightning_version": "1.5.10",
            "state_dict": sd,
            "callbacks": {
                "ModelCheckpoint{'monitor': 'test/cluster/mIoU', 'mode': 'max'}": {
                    "monitor": "test/cluster/mIoU",
                    "best_model_score": torch.tensor(0.25),
                    "best_model_path": "checkpoints/epoch=3-step=1234.ckpt",
                }
            },
            "optimizer_states": [
                {
                    "state": {0: {"step": 1234, "exp_avg": r(dim), "exp_avg_sq": r(dim)}},
                    "param_groups": [{"lr": 5e-4, "betas": (0.9, 0.999), "params": [0]}],
                }
            ],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": hp,
            **(extra_entries or {}),
        }
        torch.save(ckpt, path)
    finally:  # the look-alike modules must not outlive the pickling
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return sd


# ------------------------------------------------------------------ crafted (malicious) checkpoints
class _SystemPayload:
    """Unpickles as ``os.system("touch MARKER")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _ExecPayload(_SystemPayload):
    """Unpickles as ``builtins.exec("open(MARKER, 'w').write('pwned')")``."""

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class _SubprocessPayload(_SystemPayload):
    """Unpickles as ``subprocess.call(["touch", MARKER])``."""

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


#: Payload kind -> (class, the ``module.name`` global its pickle names).
PAYLOADS = {
    "os.system": (_SystemPayload, f"{os.system.__module__}.system"),
    "builtins.exec": (_ExecPayload, "builtins.exec"),
    "subprocess.call": (_SubprocessPayload, "subprocess.call"),
}


def write_payload_checkpoint(path, kind: str, marker) -> str:
    """Write a fake checkpoint whose ``hyper_parameters.cfg`` unpickles as the ``kind`` payload
    (see :data:`PAYLOADS`), which would create the file ``marker``. Returns the global's name."""
    cls, name = PAYLOADS[kind]
    sd = write_fake_checkpoint(path)  # a valid state dict; only the config is replaced
    torch.save(
        {
            "epoch": 3,
            "global_step": 1234,
            "state_dict": sd,
            "hyper_parameters": {"n_classes": 3, "cfg": cls(marker)},
        },
        path,
    )
    return name
