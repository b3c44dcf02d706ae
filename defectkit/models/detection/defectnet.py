"""DefectNet's image-level gate (the "defect finding network", DFN).

Li, Li & Xi, "DefectNet: Toward Fast and Effective Defect Detection", IEEE TIM 70 (2021);
see /work/shared/research/defectnet.md §1-2 and docs for the details reproduced here.

The gate is avgpool(C5) -> Linear(C5 channels, 2) -> softmax (0 normal, 1 defective), on
the detector's own backbone. Training adds ``loss_gate = CE(logits, is_defective) * f(n)``
over ALL images of the batch; the detection losses only see defective images. At test
time an image whose P(defective) <= ``threshold`` skips FPN, RPN and the RoI heads.

DefectNet is a config, not a class: ``CascadeRCNN`` / ``FasterRCNN`` with a ``gate:``
section (a dict with the fields of ``GateConfig``)::

    model:
      type: CascadeRCNN
      gate: {schedule: inverse}          # f(n) = k*w0/(n/T + 1), n = 0-based epoch

Loss-weight schedules f(n) (the original ``get_dfn_weight``), n = 0-based epoch (or the
iteration with ``by: iter``), T = ``period``:

=============  =====================================  ==========================
constant       f = w0                                   k unused
linear         f = w0 - k * n / T                       k default 1/12
inverse        f = k * w0 / (n / T + 1)                 k default 1
exponential    f = k * w0 / max(a ** (n / T), 1e-6)     k default 1, a default 2
=============  =====================================  ==========================

``enabled: false`` is the paper's w=0 ablation: the gate is computed and its loss trained
(with the schedule's weight), but it never skips an image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import parse_options

SCHEDULES = ("constant", "linear", "inverse", "exponential")


@dataclass
class GateConfig:
    """Options of the DefectNet gate (``model.gate`` in a config)."""
    enabled: bool = True            # False: computed and trained, never used to skip (w=0 ablation)
    schedule: str = "constant"      # constant | linear | inverse | exponential
    w0: float = 1.0                 # init_weight
    k: float | None = None          # scale_factor; None -> 1/12 for linear, 1 otherwise
    a: float = 2.0                  # base of the exponential schedule
    period: float = 1.0             # T
    by: str = "epoch"               # n = 0-based epoch ("epoch") or iteration ("iter")
    threshold: float = 0.5          # gate passes an image when P(defective) > threshold
    normal_negatives: bool = False  # also feed normal images to RPN/RoI heads as negatives (the
                                    # detector's own ``normal_negatives`` option; either turns it on)
    pool: str = "avg"               # avg (the original) | max: global max pooling of C5, so a
                                    # small defect is not averaged away (helps from scratch)
    detach: bool = False            # True: the gate loss does not reach the backbone (the gate
                                    # reads the detector's features); the original trains jointly

    def __post_init__(self):
        if self.schedule == "exponent":   # the original's spelling
            self.schedule = "exponential"
        if self.schedule not in SCHEDULES:
            raise ValueError(f"gate.schedule: must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.pool not in ("avg", "max"):
            raise ValueError(f"gate.pool: must be 'avg' or 'max', got {self.pool!r}")
        if self.by not in ("epoch", "iter"):
            raise ValueError(f"gate.by: must be 'epoch' or 'iter', got {self.by!r}")
        if not self.period > 0:
            raise ValueError(f"gate.period: must be > 0, got {self.period!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"gate.threshold: must be in [0, 1], got {self.threshold!r}")
        if self.k is None:
            self.k = 1.0 / 12.0 if self.schedule == "linear" else 1.0

    @classmethod
    def parse(cls, gate: "GateConfig | dict | None") -> "GateConfig | None":
        """``model.gate`` (a dict, a ``GateConfig`` or None) as a ``GateConfig``; called once,
        by ``TwoStageDetector``. Unknown or ill-typed fields or bad values raise a
        ``ConfigError`` naming ``model.gate`` (``config.parse_options``, the one parser)."""
        return parse_options(cls, gate, "model.gate")


def gate_weight(cfg: GateConfig, n: float) -> float:
    """f(n): the weight of the gate loss at epoch (or iteration) index ``n`` (0-based)."""
    t = float(n) / cfg.period
    if cfg.schedule == "constant":
        return float(cfg.w0)
    if cfg.schedule == "linear":
        return float(cfg.w0 - cfg.k * t)
    if cfg.schedule == "inverse":
        return float(cfg.k * cfg.w0 / (t + 1.0))
    return float(cfg.k * cfg.w0 / max(cfg.a ** t, 1e-6))


class GateHead(nn.Module):
    """avgpool(C5) (or maxpool) -> Linear(C5 channels, 2): logits of (normal, defective)."""

    def __init__(self, in_channels: int, pool: str = "avg"):
        super().__init__()
        self.pool = F.adaptive_avg_pool2d if pool == "avg" else F.adaptive_max_pool2d
        self.fc = nn.Linear(in_channels, 2)

    def forward(self, c5: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(c5, 1), 1))
