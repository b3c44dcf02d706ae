"""One reader per on-disk format. A reader parses annotations (images are not
decoded) into ``Record``s plus the ordered ``classes`` list and raises
``DataFormatError`` naming the file and the field. Datasets in
``defectkit.data.datasets`` wrap them; see ``docs/data_formats.md``."""
from .common import DataFormatError, Record  # noqa: F401
from .coco import read_coco  # noqa: F401
from .image_folder import read_image_folder  # noqa: F401
from .images import decode_mask, open_image  # noqa: F401  (the one image / mask decoder)
from .labelme import read_labelme  # noqa: F401
from .mask_folder import read_mask_folder  # noqa: F401
from .mvtec import read_anomaly_folders, read_mvtec  # noqa: F401
from .voc import read_voc, read_voc_file, write_voc  # noqa: F401
