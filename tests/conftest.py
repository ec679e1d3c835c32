"""Shared test fixtures and constants."""

import csv
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


def copy_first_slices(src: Path, root: Path, group_column: str, groups: int, per_group: int = 2) -> Path:
    """Copy into ``root`` the first ``per_group`` slices (in index order) of each of the first ``groups`` groups of
    the data folder ``src``, with its labels.json and the matching rows of its index.csv."""
    import shutil

    with open(src / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    chosen, seen = [], {}
    for row in rows:
        g = row[group_column]
        if seen.get(g, 0) < per_group and (g in seen or len(seen) < groups):
            seen[g] = seen.get(g, 0) + 1
            chosen.append(row)
    for sub in ("images", "masks"):
        (root / sub).mkdir()
        for row in chosen:
            shutil.copy(src / sub / f"{row['slice_id']}.png", root / sub)
    shutil.copy(src / "labels.json", root)
    write_rows(root / "index.csv", chosen, list(rows[0]))
    return root


def write_rows(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Write ``rows`` (dicts) as a CSV file with the header ``fields``: an ``index.csv`` for a test folder."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """A small real data folder: the first two slices (in index order) of each of the first six groups."""
    return copy_first_slices(SAMPLE, tmp_path_factory.mktemp("small"), "pseudo_patient_group", groups=6)


LUNG_SET = ROOT / "data_sample" / "covid19_ct_lung_infection"  # the bundled lung/infection set (109 slices)


@pytest.fixture(scope="session")
def lung_data(tmp_path_factory) -> Path:
    """A small copy of the lung set: the first two slices (in index order) of each of its first three volumes."""
    return copy_first_slices(LUNG_SET, tmp_path_factory.mktemp("lung"), "volume", groups=3)
