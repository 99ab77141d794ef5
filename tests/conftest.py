"""Test-wide settings: offline, deterministic, one BLAS/OpenMP thread, headless plotting.

One thread keeps the suite deterministic and avoids OpenMP spin-waiting when the machine is
shared (FAISS and torch each run their own OpenMP pool).
"""

import os

os.environ.setdefault("STEGO_PROBE_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import faiss  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)
