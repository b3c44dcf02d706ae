"""LR schedules against hand-computed factors (mmdet linear warm-up by iteration)."""
import math

import pytest

from defectkit.config import ConfigError, validate_config
from defectkit.engine.lr_schedule import ConstantLR, CosineLR, StepLR
from defectkit.registry import LR_SCHEDULES


def test_step_lr_by_epoch_with_warmup():
    s = StepLR(milestones=[2, 3], gamma=0.1, warmup_iters=4, warmup_ratio=0.1).bind(max_epochs=4)
    ipe = 2   # iterations per epoch
    # warm-up: factor = 1 - (1 - i/4) * (1 - 0.1)
    assert s(0, 0, ipe) == pytest.approx(0.1)
    assert s(1, 0, ipe) == pytest.approx(0.325)
    assert s(2, 1, ipe) == pytest.approx(0.55)
    assert s(3, 1, ipe) == pytest.approx(0.775)
    assert s(4, 2, ipe) == pytest.approx(0.1)      # first milestone (epoch 2)
    assert s(5, 2, ipe) == pytest.approx(0.1)
    assert s(6, 3, ipe) == pytest.approx(0.01)     # second milestone


def test_step_lr_by_iteration_and_warmup_multiplies_regular():
    s = StepLR(milestones=[5, 8], gamma=0.5, by_epoch=False).bind(max_iters=10)
    assert [s(i, 0, 100) for i in (0, 4, 5, 7, 8, 9)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    w = StepLR(milestones=[1], gamma=0.1, warmup_iters=10, warmup_ratio=0.0, by_epoch=False).bind(max_iters=20)
    assert w(5, 0, 100) == pytest.approx(0.1 * 0.5)     # decayed regular x half-way warm-up


def test_cosine_lr_by_epoch():
    s = CosineLR(min_lr_ratio=0.1).bind(max_epochs=4)
    assert s(0, 0, 3) == pytest.approx(1.0)
    assert s(3, 1, 3) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)   # 0.86820
    assert s(5, 1, 3) == pytest.approx(0.868198, abs=1e-6)    # constant within an epoch
    assert s(6, 2, 3) == pytest.approx(0.55)
    assert s(12, 4, 3) == pytest.approx(0.1)


def test_cosine_lr_by_iteration():
    s = CosineLR(by_epoch=False).bind(max_epochs=2)      # T = 2 epochs x 5 iterations
    assert s(5, 1, 5) == pytest.approx(0.5)
    assert s(10, 2, 5) == pytest.approx(0.0, abs=1e-12)
    t = CosineLR(by_epoch=False, warmup_iters=2, warmup_ratio=0.5).bind(max_iters=8)
    assert t(1, 0, 100) == pytest.approx((1 + math.cos(math.pi / 8)) / 2 * 0.75)


def test_constant_lr_warmup():
    s = ConstantLR(warmup_iters=10).bind(max_epochs=1)
    assert s(0, 0, 10) == pytest.approx(0.001)
    assert s(5, 0, 10) == pytest.approx(1 - 0.5 * 0.999)
    assert s(10, 1, 10) == 1.0


def test_registered_and_validated():
    assert {"StepLR", "CosineLR", "ConstantLR"} <= set(LR_SCHEDULES.keys())
    with pytest.raises(ConfigError, match="lr_schedule.milestone: unknown key; did you mean 'milestones'"):
        validate_config({"lr_schedule": {"type": "StepLR", "milestone": [8]}})


def test_trainer_applies_schedule(tmp_path):
    from helpers_toy import toy_config

    from defectkit.engine import train

    cfg = toy_config(lr_schedule={"type": "StepLR", "milestones": [1], "gamma": 0.5, "warmup_iters": 2,
                                  "warmup_ratio": 0.5}, train={"epochs": 2}, evaluation=None)
    r = train(cfg, work_dir=tmp_path)
    lrs = [h["lr"] for h in r.history]
    # base lr 0.2, 4 iterations per epoch: warm-up 0.5 -> 0.75 -> 1, then x0.5 from epoch 1
    assert lrs == pytest.approx([0.1, 0.15, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1])
