"""Data: a folder of slices and masks (§2.2), its classes, the x5 augmentation views (§2.3), patient-level splits,
the classifier's labelled slices (§2.8) and the error bad input raises."""

from crlearn.data.errors import DataError
from crlearn.data.folder import SegmentationDataset, default_data_dir

__all__ = ["DataError", "SegmentationDataset", "default_data_dir"]
