"""Test-wide settings: offline, deterministic, small thread pools, headless plotting."""

import os

os.environ.setdefault("STEGO_PROBE_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(2)
