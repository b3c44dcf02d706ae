"""Per-class loss weights shared by the classifier and the segmenters."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def register_class_weights(module: nn.Module, class_weights: Sequence[float] | None, num_classes: int,
                           where: str) -> None:
    """Set ``module.class_weights``: a non-persistent float buffer (follows ``.to(device)``,
    not saved), or None. ``where`` names the config key in the error."""
    if class_weights is None:
        module.class_weights = None
        return
    if len(class_weights) != num_classes:
        raise ValueError(f"{where}: {len(class_weights)} values for {num_classes} classes")
    module.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32),
                           persistent=False)
