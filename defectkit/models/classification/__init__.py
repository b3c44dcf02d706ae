"""Image-level classification models (normal/defective, ImageFolder classes, grades)."""
from .classifier import BINARY_CLASS_NAMES, ImageClassifier, class_names_for  # noqa: F401
