"""Where the bundled data sets live: ``data_sample/`` beside the package in a clone (the install path the README
gives: clone, then ``pip install -e .``), else ``./data_sample`` relative to the working directory.

Nothing here imports torch, so the command line can show its defaults instantly.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_DATA = "data_sample/medseg_covid100"  # the segmentation set every command reads without --data
DEFAULT_CLASSIFICATION_DATA = "data_sample/sarscov2_ct"  # the classifier's labelled slices (§2.8)
LUNG_DATA = "data_sample/covid19_ct_lung_infection"  # the set with lung and infection masks (§3.4)


def bundled(relative: str) -> Path:
    """``relative`` beside the package (a clone), else relative to the working directory."""
    beside = Path(__file__).resolve().parents[2] / relative
    return beside if beside.is_dir() else Path(relative)


def default_data_dir() -> Path:
    """The bundled MedSeg set (``data_sample/medseg_covid100``)."""
    return bundled(DEFAULT_DATA)


def default_classification_dir() -> Path:
    """The bundled SARS-CoV-2 CT set (``data_sample/sarscov2_ct``)."""
    return bundled(DEFAULT_CLASSIFICATION_DATA)


def not_found(root: Path | str) -> str:
    """The message for a data folder that does not exist; for a bundled set, how to get it (the data travel with a
    clone of the repository, not with the installed package)."""
    hint = ""
    if str(root).replace("\\", "/").rstrip("/").endswith((DEFAULT_DATA, DEFAULT_CLASSIFICATION_DATA, LUNG_DATA)):
        hint = " (the bundled data come with a clone: git clone the repository, then pip install -e . inside it)"
    return f"{root}: data folder not found{hint}"
