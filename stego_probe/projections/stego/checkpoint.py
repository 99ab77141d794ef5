"""Import of the released STEGO Lightning checkpoints (PROTOCOL §3.7) into a :class:`StegoHead`.

A released ``.ckpt`` is a pickle holding ``state_dict`` (the whole ``LitUnsupervisedSegmenter``:
ViT, head, probes, unused modules) and ``hyper_parameters`` (``n_classes`` and ``cfg``, an
OmegaConf ``DictConfig``). Unpickling runs arbitrary code: **only load files you trust** (the
official release, your own runs). ``omegaconf`` is needed to rebuild the ``DictConfig``; without
it a restricted fallback unpickler rebuilds OmegaConf objects as plain dicts/lists.

Key mapping (strict: any key not mapped and not in :data:`IGNORED_PREFIXES` is an error):

=================================  ==============================================
checkpoint key                     stego_probe
=================================  ==============================================
``net.cluster1.0.{weight,bias}``   head linear branch ``C -> D``
``net.cluster2.0.{weight,bias}``   head nonlinear branch ``C -> C``
``net.cluster2.2.{weight,bias}``   head nonlinear branch ``C -> D``
``cluster_probe.clusters``         cluster probe centroids ``(K', D)``
``linear_probe.{weight,bias}``     linear probe ``(K, D, 1, 1)``, ``(K,)``
``net.model.*``                    ignored: the DINO ViT (the store holds its tokens)
``train_cluster_probe.*``          ignored: never trained (Q19)
``decoder.*``                      ignored: reconstruction decoder, weight 0
=================================  ==============================================
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import types
import warnings
from pathlib import Path

import torch

from stego_probe.projections.base import _json_safe
from stego_probe.projections.stego.model import StegoHead
from stego_probe.provenance import sha256_file

IGNORED_PREFIXES = ("net.model.", "train_cluster_probe.", "decoder.")
HEAD_KEYS = ("cluster1.0.weight", "cluster1.0.bias")
NONLINEAR_KEYS = ("cluster2.0.weight", "cluster2.0.bias", "cluster2.2.weight", "cluster2.2.bias")

#: Reference ``cfg`` keys -> StegoHead parameters.
CFG_TO_PARAMS = {
    "dim": "n_components",
    "pointwise": "pointwise",
    "pos_intra_weight": "pos_intra_weight",
    "pos_inter_weight": "pos_inter_weight",
    "neg_inter_weight": "neg_inter_weight",
    "pos_intra_shift": "pos_intra_shift",
    "pos_inter_shift": "pos_inter_shift",
    "neg_inter_shift": "neg_inter_shift",
    "zero_clamp": "zero_clamp",
    "stabalize": "stabilize",
    "dropout": "teacher_dropout",
    "max_steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "neg_samples": "neg_samples",
    "feature_samples": "feature_samples",
    "num_neighbors": "num_neighbors",
    "extra_clusters": "extra_clusters",
    "projection_type": "projection_type",
}

#: ``dataset_name`` of the reference config -> stego_probe dataset name (the released files say
#: ``cocostuff27``, ``cityscapes`` and ``potsdam``); other names are kept as they are.
DATASETS = {"cocostuff27": "cocostuff27", "cityscapes": "cityscapes27", "potsdam": "potsdam3"}

#: ``(model_type, dino_patch_size)`` of the reference config -> stego_probe backbone name.
BACKBONES = {
    ("vit_small", 8): "dino_vits8",
    ("vit_small", 16): "dino_vits16",
    ("vit_base", 8): "dino_vitb8",
    ("vit_base", 16): "dino_vitb16",
}


class _Stub(dict):
    """Stand-in for a class that cannot be imported (OmegaConf without omegaconf installed).

    It accepts whatever pickle gives it: dict items, list items (``append``/``extend``) and a
    ``__setstate__`` state; :func:`_plain` turns it into plain Python afterwards.
    """

    # Class-level defaults: pickle creates instances with __new__ only (no __init__).
    _module = _name = ""
    _state = None
    _items: tuple = ()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        self._args = args

    def __setstate__(self, state) -> None:
        self._state = state

    def append(self, x) -> None:
        self._items = (*self._items, x)

    def extend(self, xs) -> None:
        self._items = (*self._items, *xs)


def _stub_class(module: str, name: str) -> type:
    return type(name, (_Stub,), {"_module": module, "_name": name})


class _StubUnpickler(pickle.Unpickler):
    """Unpickler that replaces classes of modules that are not installed by :class:`_Stub`."""

    def find_class(self, module: str, name: str):
        root = module.split(".")[0]
        if importlib.util.find_spec(root) is None:
            return _stub_class(module, name)
        return super().find_class(module, name)


#: A ``pickle_module`` for ``torch.load`` using :class:`_StubUnpickler`.
_stub_pickle = types.SimpleNamespace(
    Unpickler=_StubUnpickler,
    load=lambda f, **kw: _StubUnpickler(f, **kw).load(),
    __name__="stego_probe_stub_pickle",
)


def _plain(obj):
    """Turn (stubbed or real) OmegaConf containers and nodes into plain dicts / lists / values."""
    if type(obj).__module__.startswith("omegaconf") and not isinstance(obj, _Stub):
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            try:
                return OmegaConf.to_container(obj, resolve=True)
            except Exception:  # noqa: BLE001 - unresolvable interpolations stay as strings
                return OmegaConf.to_container(obj, resolve=False)
    if isinstance(obj, _Stub):
        state = obj._state
        if isinstance(state, tuple) and len(state) == 2 and state[0] is None:
            state = state[1]  # (None, slotstate) from __reduce_ex__ of slotted objects
        content = state.get("_content") if isinstance(state, dict) else None
        if isinstance(state, dict) and "_content" in state:
            return _plain(content)  # DictConfig / ListConfig (None, "???" or "${..}" stay as is)
        if isinstance(state, dict) and "_val" in state:
            return _plain(state["_val"])  # a value node
        if obj._items:
            return [_plain(x) for x in obj._items]
        if len(obj):
            return {k: _plain(v) for k, v in obj.items()}
        return _plain(state) if state is not None else None
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(x) for x in obj]
    return obj


def load_lightning_checkpoint(path: str | os.PathLike, unpickler: str = "auto") -> dict:
    """Unpickle a Lightning checkpoint (trusted files only: this runs pickle).

    Args:
        path: the ``.ckpt`` file.
        unpickler: ``"auto"`` (OmegaConf if installed, else the stub fallback), ``"omegaconf"``
            (require omegaconf), ``"stub"`` (always the fallback).

    Returns:
        the checkpoint dict (tensors on the CPU).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if unpickler not in ("auto", "omegaconf", "stub"):
        raise ValueError(f"unpickler must be 'auto', 'omegaconf' or 'stub', got {unpickler!r}")
    have_omegaconf = importlib.util.find_spec("omegaconf") is not None
    if unpickler == "omegaconf" and not have_omegaconf:
        raise ImportError(
            "reading the checkpoint's config needs omegaconf (pip install omegaconf), or use "
            "unpickler='stub'"
        )
    warnings.warn(
        f"loading {path} with pickle (torch.load(weights_only=False)): this can run arbitrary "
        "code; only load checkpoints you trust",
        UserWarning,
        stacklevel=2,
    )
    kw = {"pickle_module": _stub_pickle}
    if unpickler == "omegaconf" or (unpickler == "auto" and have_omegaconf):
        kw = {}
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, **kw)
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(
            f"{path}: not a PyTorch checkpoint (expected a released STEGO .ckpt file); "
            f"torch.load failed with {type(e).__name__}: {reason[:200]}"
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def checkpoint_hyperparameters(ckpt: dict) -> dict:
    """The stored hyperparameters as plain Python: ``{"n_classes": K, "cfg": {...}, ...}``."""
    hp = ckpt.get("hyper_parameters") or {}
    return _json_safe(_plain(dict(hp) if isinstance(hp, dict) else hp))


def import_checkpoint(
    path: str | os.PathLike, *, unpickler: str = "auto", verbose: bool = False
) -> tuple[StegoHead, dict]:
    """Import a released STEGO checkpoint as a fitted :class:`StegoHead` (head + both probes).

    The ViT weights in the file are ignored: apply the head to tokens of the matching backbone
    (``hparams["backbone"]``, e.g. ``dino_vitb8``) extracted at the checkpoint's resolution.

    Args:
        path: the ``.ckpt`` file (trusted).
        unpickler: see :func:`load_lightning_checkpoint`.
        verbose: print the stored hyperparameters.

    Returns:
        ``(head, hparams)``: the head (``select="last"``, ``source_ == "checkpoint"``) and the
        stored hyperparameters (``n_classes``, ``cfg``, plus ``backbone`` when recognised,
        ``checkpoint_sha256``, ``global_step``/``epoch`` when stored).

    Raises:
        KeyError: a state-dict key that is neither mapped nor ignored, or a missing one.
        ValueError: inconsistent shapes.
    """
    path = Path(path)
    ckpt = load_lightning_checkpoint(path, unpickler)
    sd = ckpt["state_dict"]
    hparams = checkpoint_hyperparameters(ckpt)
    cfg = hparams.get("cfg") if isinstance(hparams.get("cfg"), dict) else {}
    head_sd, probe_sd = {}, {"cluster_probe": {}, "linear_probe": {}}
    for key, value in sd.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        if key.startswith("net.") and key[4:] in HEAD_KEYS + NONLINEAR_KEYS:
            head_sd[key[4:]] = value
        elif key == "cluster_probe.clusters":
            probe_sd["cluster_probe"]["clusters"] = value
        elif key in ("linear_probe.weight", "linear_probe.bias"):
            probe_sd["linear_probe"][key.split(".")[1]] = value
        else:
            raise KeyError(
                f"{path}: unexpected state_dict key {key!r} (neither a head/probe key nor in "
                f"the ignored prefixes {list(IGNORED_PREFIXES)})"
            )
    nonlinear = any(k in head_sd for k in NONLINEAR_KEYS)
    expected = [f"net.{k}" for k in HEAD_KEYS + (NONLINEAR_KEYS if nonlinear else ())]
    expected += ["cluster_probe.clusters", "linear_probe.weight", "linear_probe.bias"]
    present = {f"net.{k}" for k in head_sd} | {f"{p}.{k}" for p, d in probe_sd.items() for k in d}
    missing = [k for k in expected if k not in present]
    if missing:
        raise KeyError(f"{path}: missing state_dict keys {missing}")
    w1 = head_sd["cluster1.0.weight"]
    dim, in_dim = int(w1.shape[0]), int(w1.shape[1])
    clusters = probe_sd["cluster_probe"]["clusters"]
    lin_w = probe_sd["linear_probe"]["weight"]
    if clusters.ndim != 2 or clusters.shape[1] != dim or lin_w.shape[1] != dim:
        raise ValueError(
            f"{path}: probe shapes {tuple(clusters.shape)} / {tuple(lin_w.shape)} do not match "
            f"the head's code width D={dim}"
        )
    n_classes = int(lin_w.shape[0])
    if lin_w.ndim == 2:  # some exports store the 1x1 conv weight flattened
        probe_sd["linear_probe"]["weight"] = lin_w.reshape(n_classes, dim, 1, 1)

    params = {p: cfg[k] for k, p in CFG_TO_PARAMS.items() if cfg.get(k) is not None}
    params["n_components"] = dim
    params["projection_type"] = "nonlinear" if nonlinear else "linear"
    params["extra_clusters"] = int(clusters.shape[0]) - n_classes
    head = StegoHead(**params, n_classes=n_classes, select="last", progress=False)
    cfg_full = head.resolved_params()
    head_module_sd = {k: v.detach().float().clone() for k, v in head_sd.items()}
    state = {
        "head": head_module_sd,
        "cluster_probe": {"clusters": clusters.detach().float().clone()},
        "linear_probe": {
            k: v.detach().float().clone() for k, v in probe_sd["linear_probe"].items()
        },
    }
    head.n_features_in_ = in_dim
    head.n_classes_ = n_classes
    head.history_ = []
    head.best_step_ = None
    head.n_steps_completed_ = int(ckpt.get("global_step") or 0)
    head.resolved_params_ = _json_safe(cfg_full)
    head.source_ = "checkpoint"
    head.states_ = {"last": state, "best": None}
    head._select("last")  # strict load_state_dict: shapes must match the module

    backbone = BACKBONES.get((cfg.get("model_type"), cfg.get("dino_patch_size")))
    sha = sha256_file(path)
    info = {k: ckpt[k] for k in ("global_step", "epoch", "pytorch-lightning_version") if k in ckpt}
    hparams = {**hparams, "backbone": backbone, "checkpoint_sha256": sha, **_json_safe(info)}
    head.provenance_ = _json_safe(
        {
            "method": head.method,
            "class": type(head).__name__,
            "fit_data": {
                "source": "checkpoint",
                "checkpoint": str(path),
                "checkpoint_sha256": sha,
                "backbone": backbone,
                # stego_probe's name, so that evaluate_stores' provenance check accepts
                # stores of the same dataset (the reference name is kept alongside)
                "dataset": DATASETS.get(cfg.get("dataset_name"), cfg.get("dataset_name")),
                "reference_dataset": cfg.get("dataset_name"),
                "crop": cfg.get("crop_type"),
                "res": cfg.get("res"),
                "embedded_vit_sha256": _tensors_sha256(sd, "net.model."),
            },
            "hyper_parameters": hparams,
        }
    )
    if verbose:
        print(format_hyperparameters(hparams))
    return head, hparams


def _tensors_sha256(sd: dict, prefix: str) -> str | None:
    """SHA-256 over the names and bytes of the tensors under ``prefix`` (None if there are none)."""
    h, n = hashlib.sha256(), 0
    for k in sorted(sd):
        if k.startswith(prefix):
            h.update(k.encode())
            h.update(sd[k].detach().cpu().contiguous().numpy().tobytes())
            n += 1
    return h.hexdigest() if n else None


def format_hyperparameters(hparams: dict, indent: str = "  ") -> str:
    """Readable multi-line listing of nested hyperparameters (``key: value`` per line)."""
    lines: list[str] = []

    def walk(d: dict, depth: int) -> None:
        for k in sorted(d, key=str):
            v = d[k]
            if isinstance(v, dict):
                lines.append(f"{indent * depth}{k}:")
                walk(v, depth + 1)
            else:
                lines.append(f"{indent * depth}{k}: {v!r}")

    walk(hparams, 0)
    return "\n".join(lines)
