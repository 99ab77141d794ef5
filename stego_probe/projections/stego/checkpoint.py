"""Import of the released STEGO Lightning checkpoints (PROTOCOL §3.7) into a :class:`StegoHead`.

A released ``.ckpt`` is a pickle holding ``state_dict`` (the whole ``LitUnsupervisedSegmenter``:
ViT, head, probes, unused modules) and ``hyper_parameters`` (``n_classes`` and ``cfg``, an
OmegaConf ``DictConfig``).

**Safe by default.** A pickle can name any importable callable and have it called, so a crafted
file could run code. The loader admits only the globals a released checkpoint is made of
(:data:`ALLOWED_GLOBALS` lists them by kind): it first tries ``torch.load(weights_only=True)`` with
those extra classes registered through ``torch.serialization.safe_globals``, and if that fails it
reads the file with an allow-list unpickler that refuses every other global, naming it. The
OmegaConf classes are the real ones when ``omegaconf`` is installed (``unpickler="auto"`` or
``"omegaconf"``), else inert stand-ins (``"stub"``, or ``"auto"`` without omegaconf) that
:func:`_plain` turns into dicts and lists. ``trust=True`` (``--trust-pickle``) is plain pickle,
which runs any code the file contains: only for files you made or otherwise trust.

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

import _compat_pickle
import codecs
import collections
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import pickle
import types
import typing
import warnings
from pathlib import Path

import torch

from stego_probe.fileio import to_jsonable
from stego_probe.projections.stego.head import StegoHead, make_config
from stego_probe.provenance import sha256_file

IGNORED_PREFIXES = ("net.model.", "train_cluster_probe.", "decoder.")
HEAD_KEYS = ("cluster1.0.weight", "cluster1.0.bias")
NONLINEAR_KEYS = ("cluster2.0.weight", "cluster2.0.bias", "cluster2.2.weight", "cluster2.2.bias")

#: Values of ``unpickler`` (``--unpickler``); all of them are safe (allow-list).
UNPICKLERS = ("auto", "omegaconf", "stub")

#: Reference ``cfg`` keys -> :class:`~stego_probe.projections.stego.StegoConfig` fields.
CFG_TO_CONFIG = {
    "dim": "dim",
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

# ------------------------------------------------------------------ what a checkpoint may name
#: OmegaConf classes of a pickled ``DictConfig`` (containers, their value nodes and metadata).
OMEGACONF_GLOBALS = (
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.Metadata",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.BytesNode",
)

#: Lightning classes, always read as inert stand-ins (Lightning is never imported):
#: ``AttributeDict`` (the ``hparams`` container) and ``ModelCheckpoint``, which Lightning < 1.5
#: pickles as the key of its callback state.
LIGHTNING_GLOBALS = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
)

#: Plain data types (and what pickle needs to rebuild them) that a checkpoint may name.
DATA_GLOBALS = {
    "builtins.dict": dict,
    "builtins.list": list,
    "builtins.tuple": tuple,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.int": int,
    "builtins.float": float,
    "builtins.bool": bool,
    "builtins.str": str,
    "builtins.bytes": bytes,
    "builtins.bytearray": bytearray,
    "builtins.complex": complex,
    "collections.OrderedDict": collections.OrderedDict,
    "collections.defaultdict": collections.defaultdict,
    "typing.Any": typing.Any,
    "_codecs.encode": codecs.encode,  # bytes in protocol-2 pickles
}

#: numpy names a pickled array or scalar needs (e.g. a metric logged as ``np.float64`` in a
#: callback state); data only: the ``subtype`` / ``dtype`` they are given must pass the list too.
NUMPY_GLOBALS = (
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
)


#: ``torch._utils`` functions that rebuild tensors and parameters from their storage.
TORCH_REBUILD_FUNCTIONS = (
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_qtensor",
    "_rebuild_sparse_tensor",
    "_rebuild_nested_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_cpu_tensor",
)

#: What the allow-list admits, by kind, for readers and docs/stego.md (the loader itself uses
#: :func:`_allowed_globals`, built from the same constants).
ALLOWED_GLOBALS = {
    "omegaconf": OMEGACONF_GLOBALS,
    "lightning": LIGHTNING_GLOBALS,
    "data": tuple(DATA_GLOBALS),
    "numpy": NUMPY_GLOBALS,
    "torch": (
        "torch.Tensor",
        "torch.nn.parameter.Parameter",
        "torch.Size",
        "torch.device",
        "torch.serialization._get_layout",
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
        "torch.<dtype | layout | memory_format | qscheme> (e.g. torch.float32)",
        "torch.<Dtype>Storage (e.g. torch.FloatStorage)",
        "torch._tensor._rebuild_from_type_v2",
        *(f"torch._utils.{f}" for f in TORCH_REBUILD_FUNCTIONS),
    ),
}


class RefusedGlobalError(pickle.UnpicklingError):
    """A pickle named a global that is not on the checkpoint allow-list (``.name``)."""

    def __init__(self, name: str, build: bool = False) -> None:
        super().__init__(f"global {name} is not allowed" + (" as a BUILD target" if build else ""))
        self.name = name
        self.build = build


class _Stub(dict):
    """Inert stand-in for an OmegaConf / Lightning class read without importing it.

    It accepts whatever pickle gives it: dict items, list items (``append``/``extend``) and a
    ``__setstate__`` state, and does nothing else; :func:`_plain` turns it into plain Python.
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


@functools.cache
def _stub_class(module: str, name: str) -> type:
    """The stand-in class for ``module.name`` (one per name, so pickle memo identity holds)."""
    return type(name, (_Stub,), {"_module": module, "_name": name})


def _torch_globals() -> dict:
    """Full name -> object for the torch globals a tensor pickle names (see ALLOWED_GLOBALS)."""
    out = {
        "torch.Tensor": torch.Tensor,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.serialization._get_layout": torch.serialization._get_layout,
        "torch.storage.UntypedStorage": torch.storage.UntypedStorage,
        "torch.storage.TypedStorage": torch.storage.TypedStorage,
    }
    kinds = (torch.dtype, torch.layout, torch.memory_format, torch.qscheme)
    for k, v in vars(torch).items():  # vars(): no lazy submodule imports
        if isinstance(v, kinds):
            out[f"torch.{k}"] = v
    for k in vars(torch):
        if k.endswith("Storage") and k not in ("UntypedStorage", "TypedStorage"):
            try:
                out[f"torch.{k}"] = torch.serialization.StorageType(k)
            except (KeyError, AttributeError):  # pragma: no cover - not a legacy storage name
                pass
    rebuild = getattr(torch._tensor, "_rebuild_from_type_v2", None)
    if rebuild is not None:
        out["torch._tensor._rebuild_from_type_v2"] = rebuild
    for f in TORCH_REBUILD_FUNCTIONS:
        if hasattr(torch._utils, f):
            out[f"torch._utils.{f}"] = getattr(torch._utils, f)
    return out


def _numpy_globals() -> dict:
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    real = {
        "_reconstruct": core.multiarray._reconstruct,
        "scalar": core.multiarray.scalar,
        "ndarray": np.ndarray,
        "dtype": np.dtype,
    }
    return {full: real[full.rsplit(".", 1)[1]] for full in NUMPY_GLOBALS}


def _allowed_globals(real_omegaconf: bool) -> dict:
    """Full name -> object admitted by the allow-list: the OmegaConf classes (real ones when
    ``real_omegaconf``, else stand-ins), Lightning stand-ins, plain data types and torch's."""
    allowed = {**DATA_GLOBALS, **_numpy_globals(), **_torch_globals()}
    for full in OMEGACONF_GLOBALS + LIGHTNING_GLOBALS:
        module, name = full.rsplit(".", 1)
        obj = None
        if real_omegaconf and module.startswith("omegaconf."):
            obj = getattr(importlib.import_module(module), name, None)
        allowed[full] = obj if obj is not None else _stub_class(module, name)
    return allowed


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Protocol-2 pickles name Python 2 modules (``__builtin__.long``); map them as pickle does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _guarded_build(self) -> None:
    """pickle's BUILD (set an object's state), refused on anything but an instance.

    BUILD on an admitted class or function itself (``c torch.storage TypedStorage`` followed by
    ``(None, {attr: value})``) would ``setattr`` on it for the rest of the process; only objects
    the pickle itself created may receive state.
    """
    target = self.stack[-2]  # the state is on top, the object receiving it below
    if (
        isinstance(target, type | types.ModuleType)
        or inspect.isroutine(target)
        or any(target is obj for obj in self.allowed.values())
    ):
        name = getattr(target, "__qualname__", None) or type(target).__name__
        module = getattr(target, "__module__", None) or ""
        raise RefusedGlobalError(f"{module}.{name}", build=True)
    pickle._Unpickler.load_build(self)


class _AllowListUnpickler(pickle._Unpickler):
    """Unpickler whose ``find_class`` returns only objects of ``allowed`` (by full name) and
    raises :class:`RefusedGlobalError` for any other global (nothing is imported).

    It is pickle's pure-Python unpickler with BUILD guarded (:func:`_guarded_build`): state is
    set only on instances, never on an admitted class or function.
    """

    allowed: dict = {}
    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _guarded_build

    def find_class(self, module: str, name: str):
        module, name = _python3_name(module, name)
        full = f"{module}.{name}"
        if full not in self.allowed:
            raise RefusedGlobalError(full)
        return self.allowed[full]


def _allow_list_pickle(allowed: dict) -> types.SimpleNamespace:
    """A ``pickle_module`` for ``torch.load`` whose unpickler admits only ``allowed``."""
    cls = type("_Unpickler", (_AllowListUnpickler,), {"allowed": allowed})
    return types.SimpleNamespace(
        Unpickler=cls,
        load=lambda f, **kw: cls(f, **kw).load(),
        __name__="stego_probe_allow_list_pickle",
    )


class _TrustingStubUnpickler(pickle.Unpickler):
    """``trust=True`` without omegaconf: ordinary pickle (runs code), except that classes of
    modules that are not installed are replaced by :class:`_Stub`."""

    def find_class(self, module: str, name: str):
        module, name = _python3_name(module, name)
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return _stub_class(module, name)
        return super().find_class(module, name)


#: A ``pickle_module`` for ``torch.load`` using :class:`_TrustingStubUnpickler`.
_trusting_stub_pickle = types.SimpleNamespace(
    Unpickler=_TrustingStubUnpickler,
    load=lambda f, **kw: _TrustingStubUnpickler(f, **kw).load(),
    __name__="stego_probe_trusting_stub_pickle",
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
        if len(obj) or state is None:
            return {k: _plain(v) for k, v in obj.items()}  # AttributeDict (maybe empty)
        return _plain(state)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(x) for x in obj]
    return obj


def _one_line(e: BaseException, limit: int = 200) -> str:
    reason = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {reason[:limit]}"


def load_lightning_checkpoint(
    path: str | os.PathLike, unpickler: str = "auto", *, trust: bool = False
) -> dict:
    """Read a Lightning checkpoint without running code from it (unless ``trust=True``).

    Safe modes (``trust=False``, the default) admit only the globals of a released checkpoint
    (:data:`ALLOWED_GLOBALS`): ``torch.load(weights_only=True)`` with the extra classes
    registered is tried first, then an allow-list unpickler; any other global is refused.

    Args:
        path: the ``.ckpt`` file.
        unpickler: how OmegaConf objects are rebuilt: ``"auto"`` (the real classes if omegaconf
            is installed, else inert stand-ins), ``"omegaconf"`` (require omegaconf), ``"stub"``
            (always the stand-ins; :func:`checkpoint_hyperparameters` reads both as plain data).
        trust: plain pickle (``torch.load(weights_only=False)``), which runs any code the file
            contains; only for files you made or otherwise trust. Warns.

    Returns:
        the checkpoint dict (tensors on the CPU).

    Raises:
        ValueError: the file names a global outside the allow-list (the message names the file
            and the global), or is not a PyTorch / Lightning checkpoint.
        ImportError: ``unpickler="omegaconf"`` without omegaconf installed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory; expected a .ckpt file")
    if unpickler not in UNPICKLERS:
        raise ValueError(f"unpickler must be one of {list(UNPICKLERS)}, got {unpickler!r}")
    have_omegaconf = importlib.util.find_spec("omegaconf") is not None
    if unpickler == "omegaconf" and not have_omegaconf:
        raise ImportError(
            "reading the checkpoint's config with unpickler='omegaconf' (--unpickler omegaconf) "
            "needs omegaconf (pip install omegaconf); 'auto' and 'stub' read it without"
        )
    real = unpickler == "omegaconf" or (unpickler == "auto" and have_omegaconf)
    if trust:
        warnings.warn(
            f"loading {path} with trust=True (--trust-pickle, torch.load(weights_only=False)): "
            "this runs any code the file contains; only load checkpoints you trust",
            UserWarning,
            stacklevel=2,
        )
        kw = {} if real else {"pickle_module": _trusting_stub_pickle}
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, **kw)
        except ImportError:
            raise
        except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
            raise _not_a_checkpoint(path, e) from e
    else:
        ckpt = _load_safe(path, _allowed_globals(real))
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def _not_a_checkpoint(path: Path, e: BaseException) -> ValueError:
    return ValueError(
        f"{path}: not a PyTorch checkpoint (expected a released STEGO .ckpt file); "
        f"torch.load failed with {_one_line(e)}"
    )


def _load_safe(path: Path, allowed: dict):
    """``torch.load`` admitting only ``allowed`` globals: weights_only first, then the
    allow-list unpickler (which also names a refused global for the error)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if safe_globals is not None:
        extra = [(obj, full) for full, obj in allowed.items() if not full.startswith("torch.")]
        try:
            with safe_globals(extra):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001, S110 - retried below; that reader names the cause
            pass
    try:
        return torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=_allow_list_pickle(allowed)
        )
    except RefusedGlobalError as e:
        what = (
            f"sets state on the global {e.name} itself (pickle BUILD), which would change it "
            "for the rest of the process and which no checkpoint does"
            if e.build
            else f"names the global {e.name}, which is not on the allow-list of a STEGO "
            "checkpoint (OmegaConf configs, Lightning AttributeDict, tensors, builtin containers)"
        )
        raise ValueError(
            f"{path}: refusing to load: the pickle {what}, so nothing was run; use "
            "--trust-pickle (trust=True) only if you made or otherwise trust this file"
        ) from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise _not_a_checkpoint(path, e) from e


def checkpoint_hyperparameters(ckpt: dict) -> dict:
    """The stored hyperparameters as plain Python: ``{"n_classes": K, "cfg": {...}, ...}``."""
    hp = ckpt.get("hyper_parameters") or {}
    return to_jsonable(_plain(dict(hp) if isinstance(hp, dict) else hp))


def import_checkpoint(
    path: str | os.PathLike,
    *,
    unpickler: str = "auto",
    trust: bool = False,
    verbose: bool = False,
) -> tuple[StegoHead, dict]:
    """Import a released STEGO checkpoint as a fitted :class:`StegoHead` (head + both probes).

    The ViT weights in the file are ignored: apply the head to tokens of the matching backbone
    (``hparams["backbone"]``, e.g. ``dino_vitb8``) extracted at the checkpoint's resolution.

    Args:
        path: the ``.ckpt`` file; read without running code from it unless ``trust``.
        unpickler: ``"auto"``, ``"omegaconf"`` or ``"stub"``; see
            :func:`load_lightning_checkpoint`.
        trust: read it with plain pickle, which runs any code it contains (only for files
            you made or otherwise trust; needed only if the safe reader refuses a global).
        verbose: print the stored hyperparameters.

    Returns:
        ``(head, hparams)``: the head (``select="last"``, ``source_ == "checkpoint"``) and the
        stored hyperparameters (``n_classes``, ``cfg``, plus ``backbone`` when recognised,
        ``checkpoint_sha256``, ``global_step``/``epoch`` when stored).

    Raises:
        KeyError: a state-dict key that is neither mapped nor ignored, or a missing one.
        ValueError: a global outside the allow-list (see :func:`load_lightning_checkpoint`),
            a state dict that is not name -> tensor, or inconsistent shapes.
    """
    path = Path(path)
    ckpt = load_lightning_checkpoint(path, unpickler, trust=trust)
    sd = ckpt["state_dict"]
    bad = (
        [type(sd).__name__]
        if not isinstance(sd, dict)
        else [repr(k) for k, v in sd.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    )
    if bad:
        raise ValueError(
            f"{path}: 'state_dict' must map names to tensors; got {', '.join(bad[:3])}"
        )
    try:
        hparams = checkpoint_hyperparameters(ckpt)
    except Exception as e:  # noqa: BLE001 - a malformed config is the file's fault
        raise ValueError(
            f"{path}: 'hyper_parameters' could not be read as plain data ({_one_line(e)})"
        ) from e
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

    fields = {f: cfg[k] for k, f in CFG_TO_CONFIG.items() if cfg.get(k) is not None}
    fields["dim"] = dim
    fields["projection_type"] = "nonlinear" if nonlinear else "linear"
    fields["extra_clusters"] = int(clusters.shape[0]) - n_classes
    try:
        config = make_config(**fields)
    except ValueError as e:
        raise ValueError(f"{path}: 'hyper_parameters' cfg: {e}") from e
    head = StegoHead(config, n_classes=n_classes, select="last", progress=False)
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
    head.resolved_params_ = to_jsonable(cfg_full)
    head.source_ = "checkpoint"
    head.states_ = {"last": state, "best": None}
    head._select("last")  # strict load_state_dict: shapes must match the module

    backbone = BACKBONES.get((cfg.get("model_type"), cfg.get("dino_patch_size")))
    sha = sha256_file(path)
    info = {k: ckpt[k] for k in ("global_step", "epoch", "pytorch-lightning_version") if k in ckpt}
    hparams = {**hparams, "backbone": backbone, "checkpoint_sha256": sha, **to_jsonable(info)}
    head.provenance_ = to_jsonable(
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
