"""Argparse ``type=`` functions for integer flags with a range.

argparse names the flag in its error when a ``type=`` function raises
:class:`argparse.ArgumentTypeError` (or ``ValueError``), so a bad value fails at parsing with
one line such as ``error: argument --steps: expected a positive integer (>= 1), got '0'``.
"""

from __future__ import annotations

import argparse

__all__ = ["nonneg_int", "nonneg_int_or_auto", "positive_int", "positive_int_or_all"]


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """Parse a flag value as an integer >= 1.

    Use as ``parser.add_argument("--steps", type=positive_int)``; a value such as ``0``,
    ``-3`` or ``x`` fails at parsing with an error that names the flag.
    """
    what = "a positive integer (>= 1)"
    value = _int(text, what)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def nonneg_int(text: str) -> int:
    """Parse a flag value as an integer >= 0.

    Use as ``parser.add_argument("--seed", type=nonneg_int)``; a value such as ``-1`` or
    ``x`` fails at parsing with an error that names the flag.
    """
    what = "a non-negative integer (>= 0)"
    value = _int(text, what)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int_or_all(text: str) -> int | None:
    """Parse a flag value as an integer >= 1, or ``all`` (returned as None: no cap).

    Use as ``parser.add_argument("--linear-max-images", type=positive_int_or_all)``.
    """
    if text.strip().lower() == "all":
        return None
    what = "a positive integer (>= 1) or 'all'"
    value = _int(text, what)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def nonneg_int_or_auto(text: str) -> int | str:
    """Parse a flag value as an integer >= 0, or ``auto`` (returned as ``"auto"``).

    Use as ``parser.add_argument("--num-workers", type=nonneg_int_or_auto)``.
    """
    if text.strip().lower() == "auto":
        return "auto"
    what = "a non-negative integer (>= 0) or 'auto'"
    value = _int(text, what)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value
