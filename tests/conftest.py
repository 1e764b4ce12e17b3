"""Settings for the whole test session."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest worker per core (pytest-xdist). Each worker gets one compute thread: with
    # two threads each, the OpenMP threads of both workers spin against each other on a 2-core machine
    # (measured: the 47 s training fixture of test_inference.py took 289 s). Subprocesses and notebook
    # kernels started by the tests inherit the variable.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
