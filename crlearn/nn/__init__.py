"""The networks, small blocks first: the SE residual block and ASPP (§2.5), the SE-ResNet-34 encoder, the coarse
U-Net (Fig. 1), the refinement module (§2.6, Fig. 3) and CR-Net, which joins them."""

from crlearn.nn.model import VARIANTS, CRNet, CRNetConfig, CRNetOutput

__all__ = ["VARIANTS", "CRNet", "CRNetConfig", "CRNetOutput"]
