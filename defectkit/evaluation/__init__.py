"""Evaluators (registered in EVALUATORS); the contract is in docs/architecture.md."""
from .base import BaseEvaluator, format_table, scalar_metrics  # noqa: F401
from .anomaly import AnomalyEvaluator  # noqa: F401
from .classification import ClassificationEvaluator  # noqa: F401
from .detection import DetectionEvaluator, att_model  # noqa: F401
from .segmentation import SegmentationEvaluator  # noqa: F401
