"""The classes of a data folder: which mask values each class covers (``labels.json``), and the merged class.

A folder's ``labels.json`` maps class names to mask values; a plain integer is exactly that one value, a list makes
the class the union of its values (classes may overlap: the channels are multi-label), e.g. the lung set's
``{"background": 0, "lung": [1, 2], "infection": 2}``. ``background`` may only be 0 and is not a class; no other
class may cover 0. Without the file a folder is read with MedSeg's labels (:data:`MEDSEG_LABELS`). The paper's
ablation (Table 7) segments one merged ``infection`` class, the union of the lesion classes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from crlearn.data.errors import DataError

# Label values of MedSeg COVID-19 "dataset 1" (data_sample/medseg_covid100/README.md). The paper's third class is
# fibrosis, which this data does not have: pleural effusion takes its place.
MEDSEG_LABELS: dict[str, int] = {"ggo": 1, "consolidation": 2, "effusion": 3}
DEFAULT_CLASSES: tuple[str, ...] = tuple(MEDSEG_LABELS)
MERGED_CLASS = "infection"  # the single class of the paper's ablation (Table 7)
BACKGROUND = "background"  # the name labels.json may give to value 0; never a class
MAX_MASK_VALUE = 255  # masks are read as uint8


LabelValues = dict[str, tuple[int, ...]]  # class name -> the mask values it covers


class UnknownClassError(DataError):
    """A class was asked for that the folder's labels do not declare."""


def _is_value(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_MASK_VALUE


def check_labels(raw: object, where: str) -> LabelValues:
    """Validate a class name -> mask value(s) mapping (the content of a ``labels.json``) and normalise it.

    A value is an integer in ``0..255`` (that one mask value) or a non-empty list of them (the union). The
    ``background`` entry must be 0 and is dropped; no other class may cover 0. ``where`` (a file, or "labels")
    starts every :class:`DataError` message.
    """
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}: expected an object mapping class name -> mask value(s), got {type(raw).__name__}")
    out: LabelValues = {}
    for name, value in raw.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: class name {name!r} is not a non-empty string")
        if not values or not all(_is_value(v) for v in values):
            raise DataError(
                f"{where}: class {name!r} has value {value!r}; expected an integer 0..{MAX_MASK_VALUE} "
                "or a non-empty list of them"
            )
        if name == BACKGROUND:
            if list(values) != [0]:
                raise DataError(f"{where}: {BACKGROUND!r} must be 0, got {value!r}")
            continue
        if 0 in values:
            raise DataError(f"{where}: class {name!r} covers value 0, which is background")
        if len(set(values)) != len(values):
            raise DataError(f"{where}: class {name!r} lists a value twice: {value!r}")
        same = next((other for other, vals in out.items() if set(vals) == set(values)), None)
        if same is not None:
            raise DataError(
                f"{where}: classes {same!r} and {name!r} cover the same value(s) {value!r}; two classes may "
                "overlap (a union such as lung [1, 2] and infection 2) but not be identical"
            )
        out[name] = tuple(sorted(set(values)))
    if not out:
        raise DataError(f"{where}: declares no class besides {BACKGROUND!r}")
    return out


def _no_repeated_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"class name(s) {repeated} given more than once")
    return dict(pairs)


def _medseg_values() -> LabelValues:
    """MedSeg's labels in :func:`read_labels`'s form (what a folder without ``labels.json`` gets)."""
    return {name: (value,) for name, value in MEDSEG_LABELS.items()}


def read_labels(root: str | Path) -> LabelValues:
    """Class name -> mask values of a data folder, from ``root/labels.json`` (see the module docstring).

    Without that file the folder is read with MedSeg's labels (ggo 1, consolidation 2, effusion 3). Bad JSON or
    a bad mapping raises :class:`DataError` naming the file.
    """
    path = Path(root) / "labels.json"
    if not path.is_file():
        return _medseg_values()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_repeated_keys)
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    return check_labels(raw, str(path))


def resolve_classes(
    classes: Sequence[str] | None = None,
    merge: bool = False,
    labels: dict[str, int] | dict[str, Sequence[int]] | None = None,
) -> tuple[list[str], list[tuple[int, ...]]]:
    """Output channel names and, for each channel, the label values it covers.

    ``labels`` maps class name -> mask value or values (default MedSeg's GGO, consolidation, effusion; see
    :func:`read_labels`). ``classes`` selects some of them (default all); ``merge=True`` unites them into one
    ``infection`` channel covering the union of their values (the paper's ablation setting, Table 7).
    ``classes=["infection"]`` means the same merge, unless ``labels`` declares a class named ``infection``: then
    it selects that class, and merging other classes under that name is refused.
    """
    values = _medseg_values() if labels is None else check_labels(labels, "labels")
    chosen = list(values) if classes is None else list(classes)
    if not chosen:
        raise DataError("no classes selected")
    declared = MERGED_CLASS in values
    if chosen == [MERGED_CLASS] and not declared:
        chosen, merge = list(values), True
    unknown = [c for c in chosen if c not in values]
    if unknown:
        extra = "" if declared else f" (or '{MERGED_CLASS}')"
        raise UnknownClassError(f"unknown class name(s) {unknown}; known classes: {list(values)}{extra}")
    if len(set(chosen)) != len(chosen):
        raise DataError(f"class names repeated: {chosen}")
    if merge and declared and chosen != [MERGED_CLASS]:
        raise DataError(
            f"merging {chosen} would name the union '{MERGED_CLASS}', but the labels declare a class of that name "
            f"(values {list(values[MERGED_CLASS])}); select classes=['{MERGED_CLASS}'] instead, or do not merge"
        )
    if merge:
        return [MERGED_CLASS], [tuple(sorted({v for c in chosen for v in values[c]}))]
    return chosen, [values[c] for c in chosen]
