"""Hounsfield units and windowing: how a CT volume becomes the [0, 1] slices the models read.

A CT scanner measures how strongly each voxel attenuates X-rays and reports it in **Hounsfield units** (HU), a scale
fixed by two points: water is 0 HU and air -1000 HU. On it, a chest has a few landmarks:

==========================  ==============
air (outside the body)      about -1000
healthy, aerated lung       about -850
ground-glass opacity        about -700 to -300 (partly filled air spaces: the lesion the paper segments most)
fat                         about -100
water, soft tissue, blood   0 to +60
consolidation               about -100 to +50 (air spaces filled: lung that looks like soft tissue)
bone                        +300 to +1900
==========================  ==============

A scan spans some 3000 HU, a screen (and an 8-bit PNG) 256 grey levels. A **window** picks the part of the scale
to show: ``level`` (its centre) and ``width`` (its span). HU below ``level - width / 2`` become black (0), above
``level + width / 2`` white (1), and the rest are spread linearly in between. The radiologist's two chest windows:

- **lung** (:data:`LUNG`, level -600, width 1500: -1350 to +150 HU): air, lung and ground glass in distinct greys,
  soft tissue and bone near white. The window to see COVID-19 lesions in.
- **mediastinal** (:data:`MEDIASTINAL`, level 40, width 400: -160 to +240 HU): the heart, vessels and lymph nodes;
  the whole lung, healthy or ground glass, is black. Consolidation and effusion show, ground glass does not.

A model learns the grey levels of its training data, so a scan must be windowed **as the training slices were**
(:func:`checkpoint_window` reads what a checkpoint recorded). The bundled PNG sets were windowed (or equalised)
before they were distributed and do not say how (their READMEs); a folder made by ``crlearn convert`` records its
window in ``window.json`` (:func:`read_window`).

Huang et al. 2022 (§2.2) train on slices of this kind; the paper does not state a window.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crlearn.data.errors import DataError

LUNG = (-600.0, 1500.0)  # (level, width) in HU: the lung window
MEDIASTINAL = (40.0, 400.0)  # (level, width) in HU: the mediastinal (soft-tissue) window
WINDOWS = {"lung": LUNG, "mediastinal": MEDIASTINAL}  # the named windows, by the name the CLI accepts
WINDOW_FILE = "window.json"  # a converted data folder's record of its window
UNKNOWN_NOTE = "unknown, 8-bit PNG as distributed"  # what a folder without window.json records

__all__ = [
    "LUNG",
    "MEDIASTINAL",
    "WINDOWS",
    "WINDOW_FILE",
    "checkpoint_window",
    "folders_window",
    "parse_window",
    "read_window",
    "window",
    "window_record",
]


def window(hu: Any, level: float, width: float) -> np.ndarray:
    """HU values (any shape, array-like) to float32 in [0, 1]: ``clip((hu - (level - width / 2)) / width, 0, 1)``.

    ``level - width / 2`` maps to 0, ``level + width / 2`` to 1, linearly between (module docstring). A width
    that is not positive is a ``ValueError``.
    """
    if not width > 0 or not np.isfinite(level) or not np.isfinite(width):
        raise ValueError(f"a window needs a finite level and a positive width, got level {level}, width {width}")
    low = level - width / 2.0
    out = (np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(width)
    return np.clip(out, np.float32(0.0), np.float32(1.0))


def parse_window(text: str) -> tuple[str, float, float]:
    """``(name, level, width)`` of a window named on the command line: ``lung``, ``mediastinal`` or
    ``LEVEL,WIDTH`` in HU (e.g. ``-600,1500``); anything else is a ``ValueError`` listing the choices."""
    key = str(text).strip().lower()
    if key in WINDOWS:
        return (key, *WINDOWS[key])
    try:
        level, width = (float(v) for v in key.split(","))
    except ValueError:
        raise ValueError(f"window {text!r}: expected one of {', '.join(WINDOWS)} or LEVEL,WIDTH in HU "
                         f"(e.g. -600,1500)") from None
    window(0.0, level, width)  # refuses a width <= 0
    return (f"{level:g},{width:g}", level, width)


def window_record(name: str | None, level: float | None, width: float | None, note: str = "") -> dict[str, Any]:
    """The window as recorded in ``window.json`` and in checkpoints: ``name``, ``level``, ``width`` (HU, or
    ``None`` when unknown) and a ``note``."""
    known = level is not None and width is not None
    return {"name": name, "level": float(level) if known else None, "width": float(width) if known else None,
            "units": "HU", "note": note}


def read_window(folder: str | Path) -> dict[str, Any]:
    """The window a data folder's PNGs were made with: its ``window.json`` (written by ``crlearn convert``), or an
    unknown window (:data:`UNKNOWN_NOTE`) when there is none. A ``window.json`` without a level and a positive
    width is a :class:`DataError` naming it."""
    path = Path(folder) / WINDOW_FILE
    if not path.is_file():
        return window_record(None, None, None, f"{UNKNOWN_NOTE} ({Path(folder).name} has no {WINDOW_FILE})")
    try:
        raw = json.loads(path.read_text())
        rec = window_record(raw.get("name"), float(raw["level"]), float(raw["width"]), str(raw.get("note", "")))
        window(0.0, rec["level"], rec["width"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a window record (expected level and width in HU: {exc})") from None
    return rec


def folders_window(folders: Sequence[str | Path]) -> dict[str, Any]:
    """The one window of the data folders a model is trained on: theirs when they all record the same one, else
    an unknown window whose note says why."""
    records = [read_window(f) for f in folders]
    same = len({(r["level"], r["width"]) for r in records}) == 1 and records[0]["level"] is not None
    if len(records) == 1 or same:
        return records[0]
    return window_record(None, None, None, "; ".join(f"{Path(f).name}: {r['note'] or r['name']}"
                                                         for f, r in zip(folders, records)))


def checkpoint_window(ckpt: Mapping[str, Any], fallback: tuple[float, float] = LUNG) -> tuple[dict[str, Any], str]:
    """The window to apply to a volume for a segmentation checkpoint, and a sentence saying where it came from.

    A checkpoint records its data's window as ``data_window`` (:func:`window_record`); an older checkpoint has
    none. When the window is unknown (the bundled 8-bit PNGs, or no record), ``fallback`` (the lung window) is
    used, and the sentence says so.
    """
    rec = ckpt.get("data_window")
    if isinstance(rec, Mapping) and rec.get("level") is not None and rec.get("width") is not None:
        return dict(rec), f"the checkpoint's training window, level {rec['level']:g} / width {rec['width']:g} HU"
    why = rec.get("note") if isinstance(rec, Mapping) and rec.get("note") else "no window recorded (older checkpoint)"
    name = next((k for k, v in WINDOWS.items() if v == tuple(fallback)), "fallback")
    return (window_record(name, *fallback, note=f"assumed: the checkpoint's training window is {why}"),
            f"the {name} window, level {fallback[0]:g} / width {fallback[1]:g} HU, assumed: the checkpoint's "
            f"training window is {why}")
