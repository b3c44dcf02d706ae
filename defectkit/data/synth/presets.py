"""The generator's presets: a background, defect classes with painters, and defaults.

Class order here is the category-id order of every output (COCO id = index + 1, the
class-index masks use the same numbers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from . import painters as P
from . import textures as T


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    background: Callable                 # fn(rng, h, w) -> (image, scene)
    painters: dict[str, Callable]        # class name -> painter, in category-id order
    weights: dict[str, float]            # relative frequency of each class
    size: tuple[int, int]                # default (width, height)
    num_images: int                      # default number of images
    normal_ratio: float                  # default share of defect-free images
    max_defects: int = 3                 # defects per defective image: 1 + geometric(p_more)
    p_more: float = 0.35
    modelled_on: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.painters)


PRESETS: dict[str, Preset] = {}


def _add(p: Preset) -> None:
    assert set(p.weights) == set(p.painters), p.name
    PRESETS[p.name] = p


_add(Preset(
    name="fabric",
    description="woven textile (plain or twill weave, warp and weft threads, several colours)",
    background=T.fabric,
    painters={"hole": P.hole, "stain": P.stain, "broken_thread": P.broken_thread,
              "loose_thread": P.loose_thread, "knot": P.knot,
              "thick_thin_place": P.thick_thin_place},
    weights={"hole": 0.12, "stain": 0.22, "broken_thread": 0.2, "loose_thread": 0.16,
             "knot": 0.18, "thick_thin_place": 0.12},
    size=(512, 256), num_images=1000, normal_ratio=0.44, max_defects=4, p_more=0.35,
    modelled_on="DefectNet fabric (Tianchi 2019): 44% normal images, 2446x1000 photos"))

_add(Preset(
    name="bottle",
    description="bottle cap seen from above or a labelled bottle seen from the side, plain background",
    background=T.bottle,
    painters={"cap_broken": P.cap_broken, "cap_deformed": P.cap_deformed,
              "cap_edge_damage": P.cap_edge_damage, "label_skew": P.label_skew,
              "label_wrinkle": P.label_wrinkle, "label_bubble": P.label_bubble,
              "code_abnormal": P.code_abnormal},
    weights={"cap_broken": 0.15, "cap_deformed": 0.12, "cap_edge_damage": 0.2,
             "label_skew": 0.1, "label_wrinkle": 0.15, "label_bubble": 0.18,
             "code_abnormal": 0.1},
    size=(384, 288), num_images=1000, normal_ratio=0.25, max_defects=2, p_more=0.3,
    modelled_on="DefectNet bottle (Tianchi 2020): 25% normal, cap images 658x492"))

_add(Preset(
    name="ballscrew",
    description="ball-screw spindle: brushed steel, slanted bright flanks and dark ball tracks",
    background=T.ballscrew,
    painters={"pitting": P.pitting},
    weights={"pitting": 1.0},
    size=(512, 256), num_images=500, normal_ratio=0.5, max_defects=6, p_more=0.3,
    modelled_on="BSData (ZNet): one class Pitting, median defect 0.26% of the image, 256x512 input"))

_add(Preset(
    name="sensor",
    description="image-sensor dark frames: offset, noise, column/row pattern noise, amp glow",
    background=T.sensor,
    painters={"dash_col": P.dash_col, "blemish": P.blemish, "spot": P.spot_sensor},
    weights={"dash_col": 0.5, "blemish": 0.25, "spot": 0.25},
    size=(512, 288), num_images=500, normal_ratio=0.3, max_defects=3, p_more=0.3,
    modelled_on="Defect Detection with Severity Score: dash_col column lines in dark frames"))

_add(Preset(
    name="texture",
    description="generic stone/leather-like texture (multi-octave noise, grain, veins)",
    background=T.texture,
    painters={"scratch": P.scratch, "spot": P.spot, "crack": P.crack},
    weights={"scratch": 0.4, "spot": 0.35, "crack": 0.25},
    size=(256, 256), num_images=500, normal_ratio=0.5, max_defects=3, p_more=0.3,
    modelled_on="MVTec-AD-style texture category for anomaly detection"))

_add(Preset(
    name="demo",
    description="the demo's clear-defect detection set: stone-like texture with dark holes and "
                "colour stains at medium to high contrast (strength >= 0.5)",
    background=T.texture,
    painters={"hole": P.hole, "stain": P.stain},
    weights={"hole": 0.5, "stain": 0.5},
    size=(256, 256), num_images=400, normal_ratio=0.44, max_defects=2, p_more=0.3,
    modelled_on="none: `make demo`'s detector rows, where a few CPU minutes must show learning",
    extra={"min_strength": 0.5}))

_add(Preset(
    name="gen",
    description="Defect-Gen's tiny CPU set: the `texture` background with large, dark holes and "
                "large, vivid colour stains (rust, ink blue, yellow), every defect drawn at "
                "strength >= 0.8 and 2.5x the usual size, so both classes stay visible at 64 px",
    background=T.texture,
    painters={"hole": P.hole,
              "stain": partial(P.stain, colors=[(150, 45, 30), (45, 80, 165), (200, 175, 35)])},
    weights={"hole": 0.5, "stain": 0.5},
    size=(64, 64), num_images=200, normal_ratio=0.3, max_defects=2, p_more=0.3,
    modelled_on="Defect-Gen's tiny CPU experiment: 2 classes, 5 real defective images per class",
    extra={"min_strength": 0.8, "defect_scale": 2.5}))
