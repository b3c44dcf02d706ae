"""Procedural defect generator: the embedded default dataset.

    from defectkit.data.synth import generate
    meta = generate("fabric", "data/synth_fabric", num_images=400, size=(256, 256), seed=0)

writes images plus COCO, MVTec-AD, class-index masks, LabelMe, Pascal VOC and a severity
ImageFolder under one directory (layout: docs/synthetic_data.md) and returns the content
of its ``dataset.json``. Command line: ``python tools/make_synth.py --help``.
"""
from .generator import VERSION, SynthError, generate, parse_size, plan, render
from .presets import PRESETS, Preset
from .severity import severity_grade, severity_score

__all__ = ["generate", "PRESETS", "Preset", "SynthError", "VERSION", "parse_size", "plan",
           "render", "severity_grade", "severity_score"]
