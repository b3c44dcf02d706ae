"""Semantic segmentation: ZNet (BSData) and its UNet baseline; see docs/znet.md."""
from .base import AuxHeadConfig, SegmentorBase  # noqa: F401
from .losses import segmentation_losses, soft_dice_loss  # noqa: F401
from .unet import UNet  # noqa: F401
from .znet import ZNet  # noqa: F401
