"""Dense CRF post-processing (evaluation only, PROTOCOL §5), via ``pydensecrf2``.

Fully connected CRF of Krähenbühl & Koltun with the reference parameters:

* unary ``-log clip(softmax(log_probs), 1e-5, 1)`` (float32, ``(C, H*W)``),
* Gaussian kernel ``sxy=1, compat=3``, bilateral kernel ``sxy=67, srgb=3, compat=4`` on the
  uint8 image **in BGR order**, as the reference passes it (Potts compatibility,
  ``DIAG_KERNEL``, ``NORMALIZE_SYMMETRIC``: pydensecrf defaults),
* 10 mean-field iterations, prediction = argmax of ``Q``.

Why the channel order matters: in exact arithmetic the bilateral kernel is invariant to the
order of the colour channels (one bandwidth for all three), but pydensecrf evaluates it with a
permutohedral-lattice approximation whose embedding depends on the order of the feature
dimensions. On colour images RGB and BGR give marginals that differ by up to ~0.2 and a different
argmax at some pixels; only a grey image is order-free. Images are therefore given to
:func:`dense_crf` in RGB (as everywhere in stego_probe) and reversed to BGR before the bilateral
kernel, matching the reference; ``channel_order="rgb"`` passes them unchanged.

``batch_crf`` is serial by default: the reference's ``multiprocessing.Pool`` can hang (quirk Q27).
With ``num_workers > 0`` a spawn-context process pool is used with a per-image timeout; on a
timeout or a broken pool the workers are stopped and the remaining images are done serially, so
the call always returns. Inference is deterministic, so both paths give identical results.

The module imports only numpy at import time, so spawned workers start quickly.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import warnings

import numpy as np

#: Reference CRF parameters (``mhamilton723/STEGO:src/crf.py``, see PROTOCOL §5).
REFERENCE_PARAMS = {
    "n_iter": 10,
    "gauss_sxy": 1,
    "gauss_compat": 3,
    "bi_sxy": 67,
    "bi_srgb": 3,
    "bi_compat": 4,
}

#: Channel orders :func:`dense_crf` can hand to pydensecrf's bilateral kernel.
CHANNEL_ORDERS = ("bgr", "rgb")


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as e:
        raise ImportError(
            "the dense CRF needs the 'pydensecrf2' package (imports as pydensecrf): "
            "pip install 'stego-probe[crf]'"
        ) from e
    return dcrf


def image_to_uint8(image, mean=None, std=None) -> np.ndarray:
    """Un-normalise a normalised image and convert it to uint8 by truncation (quirk Q28).

    The CRF's name for :func:`stego_probe.data.transforms.denormalize_to_uint8` on one image
    (imported when called: this module imports only numpy, for its spawned workers).

    Args:
        image: ``(3, H, W)`` float array / tensor, normalised with ``mean`` / ``std``.
        mean, std: per-channel statistics used for the normalisation (None: the ImageNet ones,
            ``stego_probe.data.transforms.IMAGENET_MEAN`` / ``IMAGENET_STD``).

    Returns:
        ``(H, W, 3)`` uint8 C-contiguous RGB array: ``uint8(trunc(255 * clip(x * std + mean,
        0, 1)))``, as ``torchvision.transforms.functional.to_pil_image`` does.
    """
    from stego_probe.data.transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize_to_uint8

    if isinstance(image, np.ndarray) and not image.flags.writeable:
        image = np.array(image)  # torch warns about read-only arrays (e.g. broadcast views)
    shape = tuple(getattr(image, "shape", np.shape(image)))
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(f"image: expected a normalised (3, H, W) array, got shape {shape}")
    return np.ascontiguousarray(
        denormalize_to_uint8(
            image, IMAGENET_MEAN if mean is None else mean, IMAGENET_STD if std is None else std
        )
    )


def _check_inputs(image, log_probs) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(image)
    lp = np.asarray(log_probs)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(
            f"image: expected a (H, W, 3) uint8 array, got shape {img.shape} dtype {img.dtype} "
            "(use image_to_uint8 for normalised float images)"
        )
    if lp.ndim != 3 or lp.shape[1:] != img.shape[:2]:
        raise ValueError(
            f"log_probs: expected shape (C, {img.shape[0]}, {img.shape[1]}) to match the image, "
            f"got {lp.shape}"
        )
    if lp.dtype.kind != "f" or np.isnan(lp).any() or np.isposinf(lp).any():
        raise ValueError("log_probs: expected float log-probabilities without NaN or +inf")
    return np.ascontiguousarray(img), lp


def dense_crf(
    image,
    log_probs,
    n_iter: int = 10,
    return_probs: bool = False,
    gauss_sxy: float = 1,
    gauss_compat: float = 3,
    bi_sxy: float = 67,
    bi_srgb: float = 3,
    bi_compat: float = 4,
    channel_order: str = "bgr",
):
    """Refine one image's soft prediction with a fully connected CRF.

    Args:
        image: ``(H, W, 3)`` uint8 **RGB** image (as :func:`image_to_uint8` returns it).
        log_probs: ``(C, H, W)`` float log-probabilities (or logits: a softmax over ``C`` is
            applied first, as in the reference).
        n_iter: mean-field iterations.
        return_probs: also return ``Q``.
        gauss_sxy, gauss_compat, bi_sxy, bi_srgb, bi_compat: kernel parameters; the defaults
            are the reference values (:data:`REFERENCE_PARAMS`).
        channel_order: order in which the colour channels reach pydensecrf's bilateral kernel:
            ``"bgr"`` (default, the reference: the RGB image is reversed) or ``"rgb"`` (passed
            as given). The two differ on colour images (see the module docstring).

    Returns:
        ``(H, W)`` int64 labels in ``[0, C)``; with ``return_probs`` also ``Q`` ``(C, H, W)``
        float32.

    Raises:
        ValueError: wrong shapes / dtypes, NaN input, unknown ``channel_order``.
        ImportError: ``pydensecrf2`` is not installed.
    """
    img, lp = _check_inputs(image, log_probs)
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(
            f"channel_order: expected one of {list(CHANNEL_ORDERS)}, got {channel_order!r}"
        )
    if channel_order == "bgr":
        img = np.ascontiguousarray(img[:, :, ::-1])
    dcrf = _densecrf()
    n_classes, height, width = lp.shape
    z = lp.astype(np.float64)
    z = z - z.max(axis=0, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=0, keepdims=True)
    unary = -np.log(np.clip(probs, 1e-5, 1.0)).astype(np.float32).reshape(n_classes, -1)
    crf = dcrf.DenseCRF2D(width, height, n_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    crf.addPairwiseBilateral(sxy=bi_sxy, srgb=bi_srgb, rgbim=img, compat=bi_compat)
    q = np.asarray(crf.inference(int(n_iter)), dtype=np.float32).reshape(n_classes, height, width)
    labels = q.argmax(axis=0).astype(np.int64)
    return (labels, q) if return_probs else labels


def _crf_task(args) -> np.ndarray:
    image, log_probs, kwargs = args
    return dense_crf(image, log_probs, **kwargs)


def _stop_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Stop a pool whose tasks may still be running, without waiting for them."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    # Python < 3.14 has no public way to stop running workers: take the process handles
    # before shutdown() drops them, then terminate (and if needed kill) each one.
    procs = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    # The pool's manager thread sees the workers die and joins them too; when it reaps a
    # worker first, this thread's join() returns early and multiprocessing still lists the
    # worker as a child until the manager has finished. Wait for it, so that no worker is
    # left (alive or listed) when this returns.
    if manager is not None and manager.is_alive():
        manager.join(timeout=10)


def batch_crf(
    images,
    log_probs,
    num_workers: int = 0,
    timeout: float = 60.0,
    window: int | None = None,
    **crf_kwargs,
) -> np.ndarray:
    """Run :func:`dense_crf` on a batch of images.

    Args:
        images: ``(N, H, W, 3)`` uint8.
        log_probs: ``(N, C, H, W)`` float.
        num_workers: 0 = serial (default, cannot hang); ``> 0`` = spawn-context process pool.
        timeout: seconds to wait for one image in the pool before giving up on the pool.
        window: images in flight at once in the pool (default ``2 * num_workers``), which
            bounds memory.
        **crf_kwargs: forwarded to :func:`dense_crf` (``n_iter``, kernel parameters).

    Returns:
        ``(N, H, W)`` int64 labels. The pool path falls back to serial processing for every
        image not finished when a timeout or a pool failure happens (with a warning), so the
        result is always complete and equal to the serial result.
    """
    imgs = np.asarray(images)
    lps = np.asarray(log_probs)
    if imgs.ndim != 4 or lps.ndim != 4 or len(imgs) != len(lps):
        raise ValueError(
            f"images {imgs.shape} / log_probs {lps.shape}: expected (N, H, W, 3) and (N, C, H, W)"
        )
    n = len(imgs)
    out = np.empty((n, *imgs.shape[1:3]), dtype=np.int64)
    if n == 0:
        return out
    _check_inputs(imgs[0], lps[0])  # fail fast, in this process, on bad input
    _densecrf()
    done = 0
    if num_workers and num_workers > 0:
        done = _pool_crf(imgs, lps, out, int(num_workers), float(timeout), window, crf_kwargs)
    for i in range(done, n):
        out[i] = dense_crf(imgs[i], lps[i], **crf_kwargs)
    return out


def _pool_crf(imgs, lps, out, num_workers, timeout, window, crf_kwargs) -> int:
    """Fill ``out`` in order with a process pool; return how many images are done."""
    window = max(1, int(window) if window else 2 * num_workers)
    n = len(imgs)
    done = 0
    pool = cf.ProcessPoolExecutor(max_workers=num_workers, mp_context=mp.get_context("spawn"))
    clean = False
    try:
        pending: dict[int, cf.Future] = {}
        submitted = 0
        while done < n:
            while submitted < n and submitted - done < window:
                args = (imgs[submitted], lps[submitted], crf_kwargs)
                pending[submitted] = pool.submit(_crf_task, args)
                submitted += 1
            out[done] = pending.pop(done).result(timeout=timeout)
            done += 1
        clean = True
    except (cf.TimeoutError, cf.BrokenExecutor, OSError) as e:
        reason = "timed out" if isinstance(e, cf.TimeoutError) else f"failed ({e!r})"
        warnings.warn(
            f"batch_crf: the worker pool {reason} at image {done}; finishing the remaining "
            f"{n - done} images serially",
            RuntimeWarning,
            stacklevel=3,
        )
    finally:
        if clean:
            pool.shutdown(wait=True)
        else:  # timeout, broken pool, or an error raised by a task (re-raised after cleanup)
            _stop_pool(pool)
    return done
