"""Models: backbones and one sub-package per family; importing registers them in MODELS."""
from . import backbones  # noqa: F401
from .backbones import (Backbone, PretrainedWeightsError, ResNetBackbone, SmallCNN,  # noqa: F401
                        build_backbone, load_pretrained, register_backbone)
from . import anomaly  # noqa: F401
from . import classification  # noqa: F401
from . import detection  # noqa: F401
from . import segmentation  # noqa: F401
