"""Models: backbones and one sub-package per family; importing registers them in MODELS."""
from . import backbones  # noqa: F401
from .backbones import (Backbone, PretrainedWeightsError, ResNetBackbone, SmallCNN,  # noqa: F401
                        build_backbone, load_pretrained, register_backbone)
import importlib as _importlib
import pkgutil as _pkgutil

# every family sub-package (models/<family>/) registers at import: a new family is a new folder
for _m in _pkgutil.iter_modules(__path__):
    if _m.ispkg:
        _importlib.import_module(f"{__name__}.{_m.name}")
