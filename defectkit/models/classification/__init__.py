"""Image-level classification models (normal/defective, ImageFolder classes, grades)."""
from .classifier import ImageClassifier  # noqa: F401
