"""Probe defaults the command line shows in ``--help``, importable without numpy, scikit-learn,
FAISS or torch (``stego-probe --help`` builds every subcommand's parser).

:mod:`stego_probe.probes.kmeans` takes its defaults from here (and re-exports them).
"""

from __future__ import annotations

#: k-means default stopping rule: Lloyd iterations until a fixed point (``tol = 0``), at most
#: ``KMEANS_NITER`` per restart, ``KMEANS_NREDO`` restarts (the best objective is kept).
KMEANS_TOL = 0.0
KMEANS_NITER = 500
KMEANS_NREDO = 3

#: The linear probe's default solver (:class:`~stego_probe.probes.LinearProbe`): the converged
#: full-batch L-BFGS; ``"adam"`` is the reference's mini-batch schedule (the only solver before
#: stego_probe 0.3.0, so a recorded setting without a solver means ``"adam"``).
LINEAR_SOLVER = "lbfgs"
#: The solver of linear probes recorded before the ``solver`` setting existed.
LEGACY_LINEAR_SOLVER = "adam"
#: Training images the L-BFGS linear probe reads from a training store (a seeded random subset
#: of larger stores, read once and kept in memory when it fits): its cost no longer grows with
#: the store (``docs/evaluation.md``, "Cost at paper scale"). ``None``: every image.
LINEAR_MAX_IMAGES = 1000
