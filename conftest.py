"""pytest runs on two workers (pytest-xdist; ``--dist loadfile`` keeps each notebook's cells on one worker, in order).
Each worker, and every notebook kernel it starts, uses one intra-op thread, so two workers share a 2-core machine
without oversubscribing it. Set before torch is imported; the kernels inherit the environment."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
