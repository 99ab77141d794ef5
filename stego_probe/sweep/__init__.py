"""The dimension sweep: methods x dims x seeds, each point fit -> probe -> metrics -> distinctness.

A sweep is described by a :class:`SweepConfig` (a preset YAML shipped in
``stego_probe/presets/`` or a user file, plus overrides). :func:`run_sweep`

0. checks, before any work, that the optional packages it needs are installed
   (:func:`check_dependencies`) and that the output folder is not a resume with other settings;
1. makes sure the train and val feature stores exist (extracting them if missing, resumably);
2. enumerates the points (``dino`` only at full width; other methods at every ``D <= C``);
3. for each point not yet in ``<out>/results.csv``: fits the projection on the train store, runs
   the probes on the val store (:func:`stego_probe.evaluate.evaluate_stores`), measures
   distinctness on a seeded token sample of the val codes, and appends the rows atomically.
   A failing point does not stop the others; :class:`SweepError` lists the failures at the end.

Re-running the same command therefore resumes: finished points are skipped. PCA is fitted once
per seed and sliced for every ``D`` (its explained-variance ratios become the Figure 3 rows).
Points can run in a local loop (default) or as Ray tasks (``executor="ray"``, optional extra).

The package's modules, each one concept (each imports only the ones above it):

* :mod:`stego_probe.sweep.config` — the configuration: :class:`SweepConfig`,
  :class:`StoreSpec`, :func:`load_config`, :func:`list_presets`, :func:`merge_dicts` and the
  checks of its fields.
* :mod:`stego_probe.sweep.points` — the points: :class:`Point`, :func:`sweep_points`,
  :func:`run_order`, :func:`point_weights` (:data:`STEGO_STEP_COST`, :data:`LBFGS_PASSES_PRIOR`), :func:`point_label`.
* :mod:`stego_probe.sweep.table` — the results table: :func:`done_points` (the resume set),
  :func:`has_results`, :func:`append_point`, :func:`check_rows_finite`.
* :mod:`stego_probe.sweep.fingerprint` — what a cached fit was fitted on:
  :func:`store_fingerprint`, :func:`projection_inputs`.
* :mod:`stego_probe.sweep.stores` — the train / val stores: :func:`store_path`,
  :func:`ensure_stores` (:data:`STORES_FILE`), :func:`open_or_extract`,
  :func:`open_existing_store`, :func:`check_store_matches`.
* :mod:`stego_probe.sweep.fit` — fitting and caching projections: :func:`fit_projection`,
  :func:`check_projection_finite`, :func:`pca_spectrum_rows`.
* :mod:`stego_probe.sweep.measure` — one point's rows: :func:`run_point`,
  :func:`val_code_sample`.
* :mod:`stego_probe.sweep.progress` — the bar and cost-weighted ETA: :class:`SweepProgress`.
* :mod:`stego_probe.sweep.executors` — where points run: the local loop or Ray tasks.
* :mod:`stego_probe.sweep.run` — the whole sweep: :func:`run_sweep`, :class:`SweepError`, the
  resume checks (:data:`RESUMABLE_FIELDS`, ...), :func:`check_dependencies` and
  :func:`projections_dir`. A config listing ``backbones`` runs every backbone in turn, with
  its own stores, projections and resume set (``docs/compare.md``).
* :mod:`stego_probe.sweep.summary` — :func:`summary_table`.

Every name in ``__all__`` is importable from ``stego_probe.sweep`` itself.
"""

from stego_probe.sweep.config import (
    DEFAULT_DISTINCTNESS_TOKENS,
    WIDTH_METHODS,
    StoreSpec,
    SweepConfig,
    backbone_tag,
    check_distinctness_tokens,
    config_n_classes,
    list_presets,
    load_config,
    merge_dicts,
    normalize_backbones,
)
from stego_probe.sweep.fingerprint import projection_inputs, store_fingerprint
from stego_probe.sweep.fit import check_projection_finite, fit_projection, pca_spectrum_rows
from stego_probe.sweep.measure import DISTINCTNESS_KMEANS, run_point, val_code_sample
from stego_probe.sweep.points import (
    LBFGS_PASSES_PRIOR,
    STEGO_STEP_COST,
    Point,
    point_label,
    point_weights,
    run_order,
    sweep_points,
)
from stego_probe.sweep.progress import SweepProgress
from stego_probe.sweep.run import (
    BACKBONE_FIELDS,
    PROJECTION_FIELDS,
    RESUMABLE_FIELDS,
    STORE_FIELDS,
    SweepError,
    check_dependencies,
    projections_dir,
    required_extras,
    run_sweep,
    set_num_threads,
)
from stego_probe.sweep.stores import (
    STORES_FILE,
    check_store_matches,
    ensure_stores,
    open_existing_store,
    open_or_extract,
    store_path,
)
from stego_probe.sweep.summary import summary_table
from stego_probe.sweep.table import (
    FINITE_METRICS,
    append_point,
    check_rows_finite,
    done_points,
    has_results,
)

__all__ = [
    # config
    "DEFAULT_DISTINCTNESS_TOKENS",
    "WIDTH_METHODS",
    "StoreSpec",
    "SweepConfig",
    "backbone_tag",
    "check_distinctness_tokens",
    "config_n_classes",
    "list_presets",
    "load_config",
    "merge_dicts",
    "normalize_backbones",
    # points
    "LBFGS_PASSES_PRIOR",
    "STEGO_STEP_COST",
    "Point",
    "point_label",
    "point_weights",
    "run_order",
    "sweep_points",
    # table
    "FINITE_METRICS",
    "append_point",
    "check_rows_finite",
    "done_points",
    "has_results",
    # fingerprint
    "projection_inputs",
    "store_fingerprint",
    # stores
    "STORES_FILE",
    "check_store_matches",
    "ensure_stores",
    "open_existing_store",
    "open_or_extract",
    "store_path",
    # fit
    "check_projection_finite",
    "fit_projection",
    "pca_spectrum_rows",
    # measure
    "DISTINCTNESS_KMEANS",
    "run_point",
    "val_code_sample",
    # progress
    "SweepProgress",
    # run
    "BACKBONE_FIELDS",
    "PROJECTION_FIELDS",
    "RESUMABLE_FIELDS",
    "STORE_FIELDS",
    "SweepError",
    "check_dependencies",
    "projections_dir",
    "required_extras",
    "run_sweep",
    "set_num_threads",
    # summary
    "summary_table",
]
