"""The dimension sweep: methods x dims x seeds, each point fit -> probe -> metrics -> distinctness.

A sweep is described by a :class:`SweepConfig` (a preset YAML shipped in
``stego_probe/presets/`` or a user file, plus overrides). :func:`run_sweep`

1. makes sure the train and val feature stores exist (extracting them if missing, resumably);
2. enumerates the points (``dino`` only at full width; other methods at every ``D <= C``);
3. for each point not yet in ``<out>/results.csv``: fits the projection on the train store, runs
   the probes on the val store (:func:`stego_probe.evaluate.evaluate_stores`), measures
   distinctness on a seeded token sample of the val codes, and appends the rows atomically.

Re-running the same command therefore resumes: finished points are skipped. PCA is fitted once
per seed and sliced for every ``D`` (its explained-variance ratios become the Figure 3 rows).
Points can run in a local loop (default) or as Ray tasks (``executor="ray"``, optional extra).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from stego_probe.results import RESULT_COLUMNS, append_csv, make_rows, read_results

#: Methods whose projection has a width parameter (``dino`` is the identity at full width).
WIDTH_METHODS = ("pca", "rp", "rp_sparse", "umap", "hnne", "stego")


@dataclass
class StoreSpec:
    """Where one split's features come from: split name, resolution, crop and an image limit."""

    split: str = "train"
    res: int = 224
    crop: str = "center"
    limit: int | None = None


@dataclass
class SweepConfig:
    """A sweep: dataset and backbone, the two stores, and the grid of methods x dims x seeds.

    Attributes:
        name: preset name (used for store and output folder names).
        dataset, data_root, dataset_kwargs: passed to :func:`stego_probe.data.get_dataset`.
        backbone, weights, backbone_kwargs: passed to :func:`stego_probe.backbones.get_backbone`.
        train, val: :class:`StoreSpec` of the train (fit) and val (evaluation) stores.
        methods: subset of ``dino``, ``pca``, ``rp``, ``rp_sparse``, ``umap``, ``hnne``, ``stego``.
        dims: embedding dimensions D (values above the backbone width are skipped).
        seeds: random states (projection, probe sample and initialisation).
        probes: subset of ``kmeans``, ``linear``, ``cluster``.
        mode: ``pixel`` (codes upsampled to label resolution, as the reference) or ``token``
            (labels pooled to the token grid; a fast approximation).
        flip: evaluate in the reference's "eval" mode (flip-averaged codes; needs stores
            extracted with flipped tokens).
        probe_kwargs, method_kwargs: per-probe / per-method keyword arguments.
        distinctness: ``{enabled, n_tokens, seeds}`` for :mod:`stego_probe.distinctness`.
        batch_size, device: extraction and evaluation settings.
    """

    name: str
    dataset: str
    backbone: str
    data_root: str | None = None
    dataset_kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    backbone_kwargs: dict = field(default_factory=dict)
    train: StoreSpec = field(default_factory=StoreSpec)
    val: StoreSpec = field(default_factory=lambda: StoreSpec(split="val", res=320))
    methods: list[str] = field(default_factory=lambda: ["dino", "pca", "rp", "stego"])
    dims: list[int] = field(default_factory=lambda: [3, 6, 12, 24, 48, 96, 192, 384, 768])
    seeds: list[int] = field(default_factory=lambda: [0])
    probes: list[str] = field(default_factory=lambda: ["kmeans", "linear"])
    mode: str = "pixel"
    flip: bool = False
    probe_kwargs: dict = field(default_factory=dict)
    method_kwargs: dict = field(default_factory=dict)
    distinctness: dict = field(default_factory=lambda: {"enabled": True})
    batch_size: int = 32
    device: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> SweepConfig:
        known = {"dino", *WIDTH_METHODS}
        bad = [m for m in self.methods if m not in known]
        if bad:
            raise ValueError(f"sweep methods {bad} unknown; expected a subset of {sorted(known)}")
        bad = [p for p in self.probes if p not in ("kmeans", "linear", "cluster")]
        if bad:
            raise ValueError(f"sweep probes {bad} unknown; expected kmeans, linear, cluster")
        if self.mode not in ("pixel", "token"):
            raise ValueError(f"sweep mode must be 'pixel' or 'token', got {self.mode!r}")
        if not self.seeds:
            raise ValueError("sweep seeds must not be empty")
        if any(int(d) < 1 for d in self.dims):
            raise ValueError(f"sweep dims must be positive integers, got {self.dims}")
        if self.mode == "token" and self.flip:
            raise ValueError("sweep flip=True (eval mode) needs mode='pixel', got mode='token'")
        for what, keys, allowed in (
            ("method_kwargs", self.method_kwargs, known),
            ("probe_kwargs", self.probe_kwargs, {"kmeans", "linear", "cluster"}),
            ("distinctness", self.distinctness or {}, {"enabled", "n_tokens", "seeds"}),
        ):
            bad = sorted(set(keys) - set(allowed))
            if bad:
                raise ValueError(f"sweep {what}: unknown keys {bad}; expected {sorted(allowed)}")
        return self


def list_presets() -> list[str]:
    """Names of the presets shipped with the package (``stego_probe/presets/*.yaml``)."""
    root = resources.files("stego_probe") / "presets"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_config(preset: str | os.PathLike, overrides: dict | None = None) -> SweepConfig:
    """Load a sweep preset (package preset name or YAML path) and apply ``overrides``.

    Args:
        preset: a name from :func:`list_presets` or a path to a YAML file with the fields of
            :class:`SweepConfig`.
        overrides: field -> value, applied on top (``None`` values are ignored); nested dicts
            ``train`` / ``val`` / ``probe_kwargs`` / ``method_kwargs`` are merged key by key.

    Returns:
        a validated :class:`SweepConfig`.
    """
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"sweep preset file {path} does not exist")
        data = yaml.safe_load(path.read_text())
    else:
        names = list_presets()
        if str(preset) not in names:
            raise KeyError(f"unknown sweep preset {preset!r}; known presets: {names} (or a .yaml)")
        data = yaml.safe_load(
            (resources.files("stego_probe") / "presets" / f"{preset}.yaml").read_text()
        )
    if not isinstance(data, dict):
        raise ValueError(f"sweep preset {preset}: expected a YAML mapping")
    data = merge_dicts(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    fields = set(SweepConfig.__dataclass_fields__)
    unknown = set(data) - fields
    if unknown:
        raise ValueError(f"sweep preset {preset}: unknown keys {sorted(unknown)}")
    for key in ("train", "val"):
        if key in data and isinstance(data[key], dict):
            unknown = set(data[key]) - set(StoreSpec.__dataclass_fields__)
            if unknown:
                raise ValueError(
                    f"sweep preset {preset}: unknown keys {sorted(unknown)} in {key!r}; "
                    f"expected {sorted(StoreSpec.__dataclass_fields__)}"
                )
            data[key] = StoreSpec(**data[key])
    return SweepConfig(**data).validate()


def merge_dicts(base: dict, over: dict) -> dict:
    """``base`` updated with ``over``; nested dicts merged key by key (deep copies)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --------------------------------------------------------------------------------------- stores


def store_path(config: SweepConfig, out_dir: str | os.PathLike, which: str) -> str:
    """Path of the ``train`` or ``val`` store of a sweep: ``<out>/stores/<name>_<split>_<res>``."""
    spec: StoreSpec = getattr(config, which)
    tag = (
        f"{config.dataset}_{spec.split}_{config.backbone.replace(':', '-')}_{spec.res}_{spec.crop}"
    )
    if spec.limit:
        tag += f"_n{spec.limit}"
    return str(Path(out_dir) / "stores" / tag)


def open_or_extract(
    config: SweepConfig,
    which: str,
    path: str | os.PathLike,
    *,
    flipped: bool = False,
    cache: dict | None = None,
    progress: bool = True,
):
    """Open the ``train`` / ``val`` store of ``config`` at ``path``, extracting it if missing.

    A complete store is opened as is; a missing or incomplete one is (re)extracted resumably
    with :func:`stego_probe.extract.extract`, which refuses to mix inputs.

    Args:
        config: the sweep (dataset, backbone, the ``train`` / ``val`` :class:`StoreSpec`).
        which: ``"train"`` or ``"val"``.
        path: store location (local path or fsspec URL).
        flipped: also extract ``tokens_flipped`` (the "eval" mode's flip average).
        cache: a dict reused across calls so the backbone is built only once.
        progress: tqdm bars.

    Returns:
        a complete :class:`stego_probe.store.FeatureStore`.
    """
    from stego_probe.store import FeatureStore

    if FeatureStore.exists(path) and FeatureStore.open(path, allow_incomplete=True).complete:
        return FeatureStore.open(path)
    from stego_probe.backbones import get_backbone
    from stego_probe.data import get_dataset
    from stego_probe.extract import extract

    spec: StoreSpec = getattr(config, which)
    cache = {} if cache is None else cache
    if "backbone" not in cache:
        cache["backbone"] = get_backbone(
            config.backbone, weights=config.weights, device=config.device, **config.backbone_kwargs
        )
    dataset = get_dataset(
        config.dataset, root=config.data_root, split=spec.split, **config.dataset_kwargs
    )
    return extract(
        dataset,
        cache["backbone"],
        str(path),
        res=spec.res,
        crop=spec.crop,
        batch_size=config.batch_size,
        device=config.device,
        flipped=flipped,
        limit=spec.limit,
        progress=progress,
    )


def ensure_stores(config: SweepConfig, out_dir: str | os.PathLike, progress: bool = True):
    """Open the sweep's train and val stores, extracting whichever is missing or incomplete.

    Returns:
        ``(train_store, val_store)`` as :class:`stego_probe.store.FeatureStore`.
    """
    cache: dict = {}
    return tuple(
        open_or_extract(
            config,
            which,
            store_path(config, out_dir, which),
            flipped=config.flip and which == "val",
            cache=cache,
            progress=progress,
        )
        for which in ("train", "val")
    )


# --------------------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Point:
    """One sweep point: a method at a width with a seed."""

    method: str
    dim: int
    seed: int


def sweep_points(config: SweepConfig, feature_dim: int) -> list[Point]:
    """Enumerate the points of a sweep for a backbone of width ``feature_dim``.

    ``dino`` is evaluated once per seed at ``D = feature_dim``; width methods at every configured
    ``D <= feature_dim`` (``D = feature_dim`` is added for PCA / RP / STEGO so the curves meet
    DINO).
    """
    points = []
    for method in config.methods:
        if method == "dino":
            dims = [feature_dim]
        else:
            dims = sorted({int(d) for d in config.dims if int(d) <= feature_dim})
            if method in ("pca", "rp", "rp_sparse", "stego") and feature_dim not in dims:
                dims.append(feature_dim)
        points += [Point(method, d, int(s)) for d in dims for s in config.seeds]
    return points


def done_points(results_path: str | os.PathLike) -> set[Point]:
    """Points that already have rows in a results CSV (the resume set)."""
    if not Path(results_path).exists():
        return set()
    df = read_results(results_path)
    df = df[df["metric"] != "explained_variance_ratio"]
    return {
        Point(str(m), int(d), int(s))
        for m, d, s in df[["method", "dim", "seed"]].drop_duplicates().itertuples(index=False)
    }


def fit_projection(
    config: SweepConfig, point: Point, train_store, cache_dir: str | os.PathLike, val_store=None
):
    """Fit (or load from ``cache_dir``) the projection of one sweep point.

    PCA is fitted once per seed at full width and then narrowed with ``set_params``, so every D
    shares one eigendecomposition. Fitted projections are saved under ``cache_dir`` so that a
    resumed sweep and the figures can reuse them.
    """
    from stego_probe.projections import get_projection, load_projection

    kwargs = dict(config.method_kwargs.get(point.method, {}))
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if point.method == "pca":
        path = cache_dir / f"pca_seed{point.seed}.pt"
        if path.exists():
            proj = load_projection(path)
        else:
            proj = get_projection("pca", None, random_state=point.seed, **kwargs)
            proj.fit(train_store)
            proj.save(path)
        return proj.set_params(n_components=point.dim)
    path = cache_dir / f"{point.method}_d{point.dim}_seed{point.seed}.pt"
    if path.exists():
        return load_projection(path)
    if point.method == "dino":
        proj = get_projection("dino", None)
    else:
        proj = get_projection(point.method, point.dim, random_state=point.seed, **kwargs)
    if point.method == "stego":
        # Checkpoint selection by validation cluster mIoU (the paper protocol, PROTOCOL §3.4).
        proj.set_params(progress=False, device=_torch_device(config))
        proj.fit(train_store, val_store=val_store)
    else:
        proj.fit(train_store)
    proj.save(path)
    return proj


def pca_spectrum_rows(config: SweepConfig, train_store, cache_dir) -> list[dict]:
    """Figure 3 rows: the explained-variance ratio of every PCA component (seed 0 fit)."""
    proj = fit_projection(
        config, Point("pca", train_store.dim, config.seeds[0]), train_store, cache_dir
    )
    context = _context(config, train_store, Point("pca", 0, config.seeds[0]))
    context.update(probe="none", split=config.train.split)
    rows = []
    for i, r in enumerate(np.asarray(proj.explained_variance_ratio_), start=1):
        rows += make_rows({**context, "dim": i}, {"explained_variance_ratio": float(r)})
    return rows


def _context(config: SweepConfig, store, point: Point) -> dict:
    prov = store.provenance
    return {
        "dataset": config.dataset,
        "backbone": config.backbone,
        "weights_sha256": prov.get("weights_sha256") or "",
        "method": point.method,
        "dim": point.dim,
        "seed": point.seed,
        "crf": False,
        "mode": "token" if config.mode == "token" else ("eval" if config.flip else "val"),
        "split": config.val.split,
    }


def _torch_device(config: SweepConfig) -> str:
    from stego_probe.backbones import resolve_device

    return str(resolve_device(config.device))


def _probe_kwargs(config: SweepConfig) -> dict:
    """Per-probe kwargs with the sweep's device for the torch-trained probes."""
    out = {k: dict(v) for k, v in config.probe_kwargs.items()}
    for name in ("cluster", "linear"):
        out.setdefault(name, {}).setdefault("device", _torch_device(config))
    return out


def run_point(config: SweepConfig, point: Point, train_store, val_store, cache_dir) -> list[dict]:
    """Evaluate one sweep point and return its tidy rows (probe metrics + distinctness)."""
    from stego_probe.evaluate import evaluate_stores

    proj = fit_projection(config, point, train_store, cache_dir, val_store=val_store)
    context = _context(config, val_store, point)
    df = evaluate_stores(
        train_store,
        val_store,
        probes=config.probes,
        projection=None if point.method == "dino" else proj,
        method=point.method,
        mode=config.mode,
        flip=config.flip,
        seed=point.seed,
        probe_kwargs=_probe_kwargs(config),
        batch_size=config.batch_size,
        progress=False,
    )
    df["dim"] = point.dim
    rows = df.to_dict("records")
    dist = config.distinctness or {}
    if dist.get("enabled", True):
        from stego_probe.distinctness import distinctness_report

        codes, labels = val_code_sample(
            val_store, proj, n_tokens=int(dist.get("n_tokens", 20000)), seed=point.seed
        )
        report = distinctness_report(
            codes,
            labels,
            n_clusters=val_store.n_classes,
            seeds=tuple(dist.get("seeds", (0, 1, 2))),
        )
        rows += make_rows({**context, "probe": "none", "match": ""}, report)
    return rows


def val_code_sample(val_store, projection, n_tokens: int, seed: int):
    """A seeded sample of val tokens projected to codes, with their token labels.

    Returns:
        codes (n, D) float32 and labels (n,) int64 (-1 = ignore).
    """
    tokens, labels = val_store.sample_tokens(n_tokens, seed=seed, with_labels=True)
    codes = projection.transform(np.ascontiguousarray(tokens, dtype=np.float32))
    return np.asarray(codes, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def run_sweep(
    config: SweepConfig,
    out_dir: str | os.PathLike,
    executor: str = "local",
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or resume) a sweep and return the full results table.

    Args:
        config: the sweep.
        out_dir: output folder: ``stores/``, ``projections/``, ``results.csv``, ``config.json``.
        executor: ``local`` (a loop in this process) or ``ray`` (one Ray task per point; needs
            ``pip install stego-probe[ray]`` and a running or local Ray cluster).
        progress: show progress bars.

    Returns:
        the results table (all rows in ``<out>/results.csv``).
    """
    from tqdm.auto import tqdm

    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    out = Path(out_dir)
    _check_resume(config, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
    results = out / "results.csv"
    cache_dir = out / "projections"
    train_store, val_store = ensure_stores(config, out, progress=progress)
    _check_pair(train_store, val_store)

    done = done_points(results)
    if "pca" in config.methods and not _has_spectrum(results):
        append_csv(pca_spectrum_rows(config, train_store, cache_dir), results)
    todo = [p for p in sweep_points(config, train_store.dim) if p not in done]
    if executor == "local":
        for point in tqdm(todo, desc=f"sweep {config.name}", disable=not progress):
            append_csv(run_point(config, point, train_store, val_store, cache_dir), results)
    elif executor == "ray":
        _run_ray(config, todo, train_store.path, val_store.path, cache_dir, results, progress)
    else:
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    if not results.exists():
        return pd.DataFrame(columns=RESULT_COLUMNS)
    return read_results(results)


#: Fields that may differ when a sweep is resumed into the same folder: they add points or
#: change where / how fast things run. Any other field defines the rows already written.
RESUMABLE_FIELDS = ("name", "methods", "dims", "seeds", "data_root", "batch_size", "device")


def _check_resume(config: SweepConfig, out: Path) -> None:
    """Refuse to resume into ``out`` a sweep whose result-defining fields differ."""
    path = out / "config.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    new = json.loads(json.dumps(config.to_dict(), default=str))
    diffs = [
        f"{k}: {old.get(k)!r} -> {v!r}"
        for k, v in new.items()
        if k not in RESUMABLE_FIELDS and old.get(k) != v
    ]
    if diffs:
        raise ValueError(
            f"{out} holds a sweep with another configuration ({'; '.join(diffs)}); resuming "
            "would mix their results. Use another output folder, or delete this one"
        )


def _has_spectrum(results: Path) -> bool:
    return (
        results.exists() and (read_results(results)["metric"] == "explained_variance_ratio").any()
    )


def _check_pair(train_store, val_store) -> None:
    from stego_probe.provenance import check_compatible

    check_compatible(
        train_store.provenance,
        val_store.provenance,
        ("backbone", "weights_sha256", "dataset", "n_classes"),
        what=f"train store {train_store.path} and val store {val_store.path}",
    )


def _run_ray(config, todo, train_path, val_path, cache_dir, results, progress) -> None:
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "executor='ray' needs Ray: pip install 'stego-probe[ray]' (or use --executor local)"
        ) from e
    import torch
    from tqdm.auto import tqdm

    # Ray hides GPUs from tasks that do not ask for one.
    @ray.remote(num_gpus=1 if torch.cuda.is_available() else 0)
    def task(cfg, point):
        from stego_probe.store import FeatureStore

        return run_point(
            cfg, point, FeatureStore.open(train_path), FeatureStore.open(val_path), cache_dir
        )

    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True)
    pending = {task.remote(config, p): p for p in todo}
    with tqdm(total=len(pending), desc=f"sweep {config.name} (ray)", disable=not progress) as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                # Rows are appended by the driver only, so the CSV has a single writer.
                append_csv(ray.get(ref), results)
                bar.update()


def set_num_threads(n: int | None) -> None:
    """Limit torch and FAISS to ``n`` CPU threads (None leaves the defaults).

    Sweeps on small stores run many tiny tensor operations; on a shared or small CPU one thread
    avoids OpenMP spin-waiting and is several times faster (measured 4x on 2 cores).
    """
    if n is None:
        return
    import faiss
    import torch

    torch.set_num_threads(int(n))
    faiss.omp_set_num_threads(int(n))


def summary_table(df: pd.DataFrame, metric: str = "miou") -> pd.DataFrame:
    """Mean ± std over seeds of ``metric`` per (method, dim) and probe, as a wide table.

    Returns:
        DataFrame indexed by (method, dim) with one ``"<probe>"`` column of ``"mean ± std"``
        strings (a readable terminal summary).
    """
    sel = df[(df["metric"] == metric) & (df["probe"] != "none")]
    if sel.empty:
        return pd.DataFrame()
    g = sel.groupby(["method", "dim", "probe"])["value"].agg(["mean", "std"]).reset_index()
    g["cell"] = [
        f"{m:5.1f} ± {0.0 if np.isnan(s) else s:4.1f}" for m, s in zip(g["mean"], g["std"])
    ]
    return g.pivot_table(index=["method", "dim"], columns="probe", values="cell", aggfunc="first")
