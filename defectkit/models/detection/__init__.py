"""Detection models: Faster / Cascade / Mask R-CNN with the optional DefectNet gate, two-model."""
from .defectnet import GateConfig, GateHead, gate_weight  # noqa: F401
from .rcnn_parts import RoIStage, build_backbone_fpn_rpn, detector_classes  # noqa: F401
from .two_stage import TwoStageDetector  # noqa: F401
from .cascade_rcnn import CascadeRCNN  # noqa: F401
from .faster_rcnn import FasterRCNN  # noqa: F401
from .mask_rcnn import MaskRCNN  # noqa: F401
from .two_model import TwoModelDetector  # noqa: F401
