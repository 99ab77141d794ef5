"""Device resolution with one home: ``"auto"`` / ``"cpu"`` / ``"cuda[:i]"`` -> ``torch.device``.

Every entry point (the Python API and the command line) resolves its ``device`` / ``--device``
argument with :func:`resolve_device`, so "CUDA requested but not available" is one error with
one message, raised before any work starts (instead of a driver error halfway through).

Examples:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto").type in ("cpu", "cuda")
    True
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def _unavailable(option: str, device, reason: str) -> ValueError:
    if option.startswith("-"):  # a command-line option: --device cuda
        where, alt = f"{option} {device}", f"{option} cpu or auto"
    else:
        where, alt = f"{option}={str(device)!r}", f"{option}='cpu' or 'auto'"
    return ValueError(f"{where}: {reason}; use {alt}")


def resolve_device(
    device: str | torch.device | None = "auto", *, option: str = "device", check: bool = True
) -> torch.device:
    """Resolve a device argument.

    Args:
        device: ``"auto"`` / None (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"`` or a ``torch.device``.
        option: the argument's name for error messages (``"device"``, ``"--device"``).
        check: require that a CUDA device exists on this machine.

    Returns:
        the ``torch.device``.

    Raises:
        ValueError: not a device string; or (``check``) a CUDA device is requested but CUDA is
            not available, or its index is out of range (the message names ``option``).
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{option}: expected 'cpu', 'cuda[:i]' or 'auto', got {device!r}") from e
    if check and dev.type == "cuda":
        if not torch.cuda.is_available():
            raise _unavailable(option, device, "CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise _unavailable(option, device, f"this machine has {count} CUDA device(s)")
    return dev
