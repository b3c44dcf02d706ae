from . import collate  # noqa: F401
from . import formats, transforms, datasets  # noqa: F401  (register TRANSFORMS and DATASETS)
from . import defect_spectrum, mixed  # noqa: F401  (DefectSpectrumDataset, MixedDataset)
from .formats.common import DataFormatError, Record  # noqa: F401
from .transforms import build_pipeline  # noqa: F401
