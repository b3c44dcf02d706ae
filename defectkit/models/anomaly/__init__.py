"""Anomaly detection models (fitted on normal images only)."""
from ...visualization import anomaly as _drawing  # noqa: F401  (registers the AnomalyResult drawer)
from .padim import CalibrationConfig, PaDiM  # noqa: F401
