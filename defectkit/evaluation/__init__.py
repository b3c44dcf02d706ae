"""Evaluators (registered in EVALUATORS); the contract is in docs/architecture.md.

Every module of this package is imported here, so a new family's evaluator registers by
adding its file (``evaluation/<family>.py``): no edit of this file is needed.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from .base import BaseEvaluator, format_table, scalar_metrics  # noqa: F401
from .anomaly import AnomalyEvaluator  # noqa: F401
from .classification import ClassificationEvaluator  # noqa: F401
from .detection import DetectionEvaluator, att_model  # noqa: F401
from .segmentation import SegmentationEvaluator  # noqa: F401

for _m in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_m.name}")
