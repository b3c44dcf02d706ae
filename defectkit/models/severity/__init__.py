"""Severity family (issue 13; research note ``severity.md``): a single-level Faster R-CNN
(``detector``), per-defect-type severity classifiers on batched ``roi_align`` crops (``crops``,
``dashnet``, any registered classifier with ``logits``), the severity score and verdict rules
(``scoring``), the composite ``SeverityDetector`` (``severity``) and its result (``result``).
Importing registers ``SeverityFasterRCNN``, ``DashNet``, ``SeverityDetector`` (MODELS), the
``shallownet`` backbone and the ``SeverityResult`` drawer."""
from .scoring import (Verdict, VerdictRule, VerdictRules, compat_weights, default_weights,  # noqa: F401
                      resolve_weights, severity_score)
from .crops import (CropSpec, adjust_boundary, box_regions, column_strip_regions,  # noqa: F401
                    crop_regions, jitter_boxes, window_regions)
from .shallownet import Mixed0, ShallowNet  # noqa: F401
from .dashnet import DashNet  # noqa: F401
from .detector import SeverityFasterRCNN, SingleLevelNeck  # noqa: F401
from .result import SeverityResult, draw_severity  # noqa: F401
from .severity import SeverityDetector  # noqa: F401
