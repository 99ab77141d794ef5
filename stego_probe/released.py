"""The released STEGO checkpoints: where to get them, and Table 2's evaluation of them.

Table 2 of Koenig et al. evaluates, per dataset, in the reference's final "eval" mode (320-px
centre crops, flip-averaged codes, PROTOCOL §4.4), with and without the dense CRF (§5):

* ``stego_released``: the released checkpoint applied to the stored DINO tokens, scored with the
  checkpoint's own cluster and linear probes, and with stego_probe's k-means probe fitted on the
  head's codes of the training store;
* ``dino``: the DINO-only baseline (§6.1): cluster, linear and k-means probes fitted on the raw
  backbone features of the training store.

* :func:`released_checkpoints` / :func:`released_checkpoint` — the file names (from
  :data:`stego_probe.projections.stego.presets.RELEASES`) and the path in a local folder, with a
  download hint when it is missing (:data:`RELEASED_URL`).
* :func:`load_released` — import a checkpoint and check it matches the stores' backbone.
* :func:`evaluate_released` — the evaluation loop over (method, seed) pairs, one results frame
  each, so a caller can append and resume; :func:`stego_probe.published.compare_with_published`
  then lays the rows out next to the published numbers.

torch and the STEGO code are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from stego_probe.published import TABLE2_METHODS, TABLE2_PROBES

#: Where the released checkpoints are published (append a file name of
#: :func:`released_checkpoints`; mhamilton723/STEGO ``download_models.py``).
RELEASED_URL = "https://marhamilresearch4.blob.core.windows.net/stego-public/saved_models/"


def released_checkpoints() -> dict[str, str]:
    """``{dataset preset: file name}`` of the released checkpoints, e.g.
    ``{"cocostuff27": "cocostuff27_vit_base_5.ckpt", ...}`` (the ``checkpoint`` entries of
    :data:`stego_probe.projections.stego.presets.RELEASES`, the facts of the released runs)."""
    from stego_probe.projections.stego.presets import RELEASES

    return {name: r["checkpoint"] for name, r in RELEASES.items() if r.get("checkpoint")}


def released_checkpoint(
    dataset: str, folder: str | os.PathLike = "saved_models", path: str | os.PathLike | None = None
) -> Path:
    """The released checkpoint file of ``dataset``.

    Args:
        dataset: a preset with a released checkpoint (:func:`released_checkpoints`).
        folder: the folder holding the downloaded ``.ckpt`` files (STEGO's ``saved_models/``).
        path: an explicit file, which wins over ``folder`` (and works for any dataset).

    Returns:
        the path (``path``, or ``folder / <file name>``); not checked when ``path`` is given.

    Raises:
        KeyError: no released checkpoint for ``dataset`` and no ``path``.
        FileNotFoundError: ``folder / <file name>`` does not exist (the message names the URL).
    """
    if path is not None:
        return Path(path)
    names = released_checkpoints()
    if dataset not in names:
        raise KeyError(
            f"no released STEGO checkpoint for {dataset!r} (known: {sorted(names)}); pass an "
            "explicit checkpoint path"
        )
    found = Path(folder) / names[dataset]
    if not found.exists():
        raise FileNotFoundError(
            f"released checkpoint {found} not found: download {RELEASED_URL}{names[dataset]} "
            f"into {folder}/"
        )
    return found


def load_released(path: str | os.PathLike, backbone: str | None = None, verbose: bool = False):
    """Import a released (Lightning) checkpoint as a fitted STEGO head.

    Args:
        path: the ``.ckpt`` file (:func:`released_checkpoint`).
        backbone: the backbone of the stores it will be applied to (e.g. ``dino_vitb8``); None
            skips the check.
        verbose: print the checkpoint's hyperparameters.

    Returns:
        the :class:`~stego_probe.projections.stego.StegoHead` (its ``probes(device=)`` gives the
        checkpoint's own cluster and linear probes).

    Raises:
        ValueError: the checkpoint records another backbone than ``backbone``.
    """
    from stego_probe.projections.stego.checkpoint import import_checkpoint

    head, hparams = import_checkpoint(path, verbose=verbose)
    trained_on = hparams.get("backbone")
    if backbone is not None and trained_on not in (None, backbone):
        raise ValueError(
            f"{path}: the checkpoint was trained on {trained_on} features but the stores use "
            f"{backbone}; pass backbone={trained_on!r} (--backbone {trained_on})"
        )
    return head


def crf_images(config, val_store):
    """The image reader the CRF needs for ``val_store``: the config's validation split, read
    in the store's order (:func:`stego_probe.evaluate.store_images`).

    Args:
        config: a :class:`stego_probe.sweep.SweepConfig` (``dataset``, ``data_root``,
            ``val.split``, ``dataset_kwargs``).
        val_store: the validation store.

    Returns:
        ``images(indices, ids) -> (B, H, W, 3) uint8``.
    """
    from stego_probe.data import get_dataset
    from stego_probe.evaluate import store_images

    split = get_dataset(
        config.dataset, root=config.data_root, split=config.val.split, **config.dataset_kwargs
    )
    return store_images(val_store, split)


def evaluate_released(
    config,
    train_store,
    val_store,
    points: Iterable[tuple[str, int]],
    *,
    head=None,
    crf: bool = True,
    crf_workers: int = 0,
    progress: bool = True,
) -> Iterator[tuple[str, int, object]]:
    """Table 2's evaluations of one dataset, one (method, seed) at a time ("eval" mode, ± CRF).

    ``dino`` fits the :data:`~stego_probe.published.TABLE2_PROBES` on the raw training tokens.
    ``stego_released`` applies ``head``; the checkpoint's own cluster and linear probes are
    deterministic, so they are scored once, with the config's first seed; the k-means probe is
    fitted on the head's training codes for every seed.

    Args:
        config: the dataset's :class:`stego_probe.sweep.SweepConfig` (``probe_kwargs``,
            ``device``, ``seeds``; the data fields when ``crf``).
        train_store, val_store: feature stores; ``val_store`` must hold the flipped tokens
            (``tokens_flipped``, extracted with ``flipped=True``).
        points: ``(method, seed)`` pairs to evaluate, method in
            :data:`~stego_probe.published.TABLE2_METHODS`.
        head: the released head (:func:`load_released`), required for ``stego_released``.
        crf: also score the CRF-refined predictions (reads the validation images).
        crf_workers: CRF processes (0: serial).
        progress: tqdm bars.

    Yields:
        ``(method, seed, frame)``: the tidy results rows of that evaluation
        (:func:`stego_probe.evaluate.evaluate_stores`; ``mode == "pixel_flip"``, the reference's "eval" pass), as soon as it is done.

    Raises:
        ValueError: an unknown method, or ``stego_released`` without ``head``.
    """
    points = [(str(m), int(s)) for m, s in points]
    bad = sorted({m for m, _ in points if m not in TABLE2_METHODS})
    if bad:
        raise ValueError(f"points: unknown methods {bad}; expected some of {list(TABLE2_METHODS)}")
    if head is None and any(m == "stego_released" for m, _ in points):
        raise ValueError("head: stego_released points need the released head (load_released)")
    if not points:
        return
    from stego_probe.evaluate import evaluate_stores

    common = dict(
        mode="pixel",
        flip=True,
        crf=crf,
        probe_kwargs=config.probe_kwargs,
        images=crf_images(config, val_store) if crf else None,
        crf_workers=crf_workers,
        progress=progress,
    )
    first_seed = config.seeds[0]
    for method, seed in points:
        if method == "dino":
            probes = list(TABLE2_PROBES)
            frame = evaluate_stores(
                train_store, val_store, probes=probes, method="dino", seed=seed, **common
            )
        else:
            probes = ["kmeans"]
            if seed == first_seed:
                cluster, linear = head.probes(device=config.device)
                probes = {"cluster": cluster, "linear": linear, "kmeans": None}
            frame = evaluate_stores(
                train_store,
                val_store,
                probes=probes,
                projection=head,
                method="stego_released",
                seed=seed,
                **common,
            )
        yield method, seed, frame
