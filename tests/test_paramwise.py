"""optimizer.paramwise: per-parameter LR and weight decay groups (mmengine names)."""
import pytest
from torch import nn

from defectkit.config import ConfigError, validate_config
from defectkit.engine.optim import build_optimizer
from helpers_toy import toy_config


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)
        self.head_norm = nn.LayerNorm(2)


def _groups(opt):
    return {name: (g["lr"], g["weight_decay"]) for g in opt.param_groups for name in g["names"]}


def test_paramwise_groups_lr_and_decay():
    cfg = {"type": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
           "paramwise": {"norm_decay_mult": 0.0, "bias_decay_mult": 0.5, "bias_lr_mult": 2.0,
                         "custom_keys": {"backbone": {"lr_mult": 0.1}, "backbone.1": {"lr_mult": 0.01, "decay_mult": 3.0}}}}
    opt = build_optimizer(cfg, _Net())
    g = _groups(opt)
    assert g["backbone.0.weight"] == pytest.approx((0.01, 1e-4))
    assert g["backbone.0.bias"] == pytest.approx((0.01, 1e-4))          # custom key wins over bias rule
    assert g["backbone.1.weight"] == pytest.approx((0.001, 3e-4))       # longest key wins
    assert g["head.weight"] == pytest.approx((0.1, 1e-4))
    assert g["head.bias"] == pytest.approx((0.2, 0.5e-4))
    assert g["head_norm.weight"] == pytest.approx((0.1, 0.0))
    assert g["head_norm.bias"] == pytest.approx((0.1, 0.0))              # norm rule before bias rule
    n_params = sum(len(grp["params"]) for grp in opt.param_groups)
    assert n_params == len(list(_Net().parameters()))
    assert len(opt.param_groups) == len(set(g.values()))                 # equal settings share a group


def test_no_paramwise_is_one_group_and_frozen_params_skipped():
    net = _Net()
    net.backbone.requires_grad_(False)
    opt = build_optimizer({"type": "AdamW", "lr": 0.01, "paramwise": {}}, net)
    assert [len(g["params"]) for g in opt.param_groups] == [4]
    plain = build_optimizer({"type": "SGD", "lr": 0.01}, _Net())
    assert len(plain.param_groups) == 1 and len(plain.param_groups[0]["params"]) == 8


def test_trainer_schedule_scales_each_group(tmp_path):
    from defectkit.engine import Trainer

    cfg = toy_config(train={"epochs": 1}, evaluation=None,
                     optimizer={"type": "SGD", "lr": 0.2, "momentum": 0.9, "paramwise": {"custom_keys": {"conv": {"lr_mult": 0.5}}}},
                     lr_schedule={"type": "StepLR", "milestones": [1], "gamma": 0.1, "warmup_iters": 0})
    t = Trainer(cfg, work_dir=tmp_path)
    try:
        t.train()
        lrs = {g["names"][0].split(".")[0]: g["lr"] for g in t.optimizer.param_groups}
        assert lrs == {"conv": pytest.approx(0.1), "fc": pytest.approx(0.2)}   # epoch 0: factor 1
        assert t.base_lrs == pytest.approx([0.1, 0.2])
    finally:
        t.close()


def test_paramwise_config_errors():
    with pytest.raises(ConfigError, match="optimizer.paramwise.norm_decy_mult: unknown key; did you mean 'norm_decay_mult'"):
        validate_config(toy_config(optimizer={"type": "SGD", "lr": 0.1, "paramwise": {"norm_decy_mult": 0}}))
    with pytest.raises(ConfigError, match="optimizer.paramwise: .*lr_mul"):
        validate_config(toy_config(optimizer={"type": "SGD", "lr": 0.1,
                                              "paramwise": {"custom_keys": {"conv": {"lr_mul": 0.1}}}}))
    with pytest.raises(ConfigError, match="optimizer.paramwise: bias_decay_mult: must be >= 0"):
        validate_config(toy_config(optimizer={"type": "SGD", "lr": 0.1, "paramwise": {"bias_decay_mult": -1}}))
