"""defectkit: one PyTorch framework for industrial defect-inspection research."""
__version__ = "0.1.0"

# Importing the subpackages registers every model, dataset, transform and evaluator,
# so "X is not in the registry" can only mean a typo or a missing custom_imports entry.
from . import registry, config  # noqa: E402,F401
from . import data, models, evaluation, engine  # noqa: E402,F401
