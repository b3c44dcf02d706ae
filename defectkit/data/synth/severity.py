"""Severity grade 1..5 of a synthetic defect, from its size and its visibility.

    area_score     = clip(log10(area / (W*H) / 1e-4) / log10(300), 0, 1)
                     (0 at 0.01% of the image, 1 at 3% and above; log scale)
    cnr            = mean |dY| inside the mask / (std(Y_before) + 2)
                     (dY: change of the grey level Y = mean(R, G, B) made by the defect;
                      std over the defect's box before painting: a contrast-to-noise ratio)
    contrast_score = clip(log2(1 + cnr) / log2(1 + 4), 0, 1)      (1 at CNR >= 4)
    score          = 0.5 * area_score + 0.5 * contrast_score
    grade          = 1 + number of thresholds (0.40, 0.52, 0.64, 0.76) that score reaches

The thresholds are roughly the 10/35/65/90% quantiles of the score over all presets at
their default sizes, so grades come out near 10/25/30/25/10% (per preset they differ:
texture defects are easier to see than bottle ones).
"""
from __future__ import annotations

import math

AREA_LO = 1e-4
AREA_SPAN = 300.0
CNR_MAX = 4.0
NOISE_FLOOR = 2.0
THRESHOLDS = (0.40, 0.52, 0.64, 0.76)


def severity_score(area: int, image_area: int, contrast: float, local_std: float) -> float:
    """Score in [0, 1]; see the module docstring."""
    rel = max(area, 1) / float(image_area)
    a = min(max(math.log10(rel / AREA_LO) / math.log10(AREA_SPAN), 0.0), 1.0)
    cnr = max(contrast, 0.0) / (max(local_std, 0.0) + NOISE_FLOOR)
    c = min(max(math.log2(1.0 + cnr) / math.log2(1.0 + CNR_MAX), 0.0), 1.0)
    return 0.5 * a + 0.5 * c


def severity_grade(area: int, image_area: int, contrast: float, local_std: float) -> int:
    """Grade 1 (slight) .. 5 (severe)."""
    score = severity_score(area, image_area, contrast, local_std)
    return 1 + sum(score >= t for t in THRESHOLDS)
