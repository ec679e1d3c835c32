"""Shared test fixtures and constants."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data_sample" / "medseg_covid100"  # the bundled MedSeg set (76 slices)
TINY = dict(width=0.125, aspp_channels=8, refine_channels=8)  # a CR-Net small enough for unit tests


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one intra-op thread is as fast as several and does not stall on OpenMP barriers
    (spin-waiting) when other processes share the CPU cores (gradcheck was 100x slower with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def seeded():
    """Seed torch's global generator (0) so that weights and random inputs repeat from run to run."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """A small real data folder: the first two slices (in index order) of each of the first six groups."""
    import csv
    import shutil

    root = tmp_path_factory.mktemp("small")
    with open(SAMPLE / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    chosen, seen = [], {}
    for row in rows:
        g = row["pseudo_patient_group"]
        if seen.get(g, 0) < 2 and (g in seen or len(seen) < 6):
            seen[g] = seen.get(g, 0) + 1
            chosen.append(row)
    for sub in ("images", "masks"):
        (root / sub).mkdir()
        for row in chosen:
            shutil.copy(SAMPLE / sub / f"{row['slice_id']}.png", root / sub)
    shutil.copy(SAMPLE / "labels.json", root)
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(chosen)
    return root
