"""crlearn: a teaching rebuild of the coarse-refine COVID-19 CT segmentation network.

Huang et al., "A coarse-refine segmentation network for COVID-19 CT images",
IET Image Processing 16(2), 2022, doi:10.1049/ipr2.12278.

For teaching only: nothing here is a medical device or gives a diagnosis.
"""

__version__ = "0.1.0"

from . import losses, metrics  # noqa: E402
from crlearn.data.folder import SegmentationDataset  # noqa: E402
from crlearn.nn.model import CRNet, CRNetConfig, CRNetOutput  # noqa: E402

__all__ = ["CRNet", "CRNetConfig", "CRNetOutput", "SegmentationDataset", "losses", "metrics", "__version__"]
