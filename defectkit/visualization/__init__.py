"""Drawing on images (draw.py) and metric/training plots to PNG (plots.py).

matplotlib is imported only when a plot or a colour map is made.
"""
from .draw import (IMAGENET_MEAN, IMAGENET_STD, color_for, colorize, draw_banner,  # noqa: F401
                   draw_boxes, draw_classification, draw_detection, draw_heatmap, draw_mask,
                   draw_result, draw_sample, drawer_for, line_scale, register_drawer,
                   make_grid, palette, to_pil)
from .plots import (plot_confusion_matrix, plot_curves, plot_pr_curve, plot_roc_curve,  # noqa: F401
                    plot_scalars, read_scalars)
from .frame import input_frame  # noqa: F401,E402
# register the AnomalyResult / InstanceSegmentationResult / SegmentationResult drawers
from . import anomaly, instances, segmentation  # noqa: F401,E402
