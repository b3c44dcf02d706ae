"""The training loop's hooks: call order, custom hooks from train.hooks, run_step override,
the model interface calls (train_step_begin/end), the metric direction from the evaluator."""
import pytest

from defectkit.engine import Trainer
from defectkit.engine.hooks import HookBase
from defectkit.models.base import BaseModel, Progress
from defectkit.registry import HOOKS, MODELS
from helpers_toy import _ToyClassifier, toy_config


class _Calls(HookBase):
    """Records every hook call as (event, epoch, iter)."""

    log: list = []

    def __init__(self, tag: str = "x"):
        self.tag = tag

    def _rec(self, event):
        _Calls.log.append((event, self.trainer.epoch, self.trainer.iter))

    def before_train(self): _Calls.log.clear(); self._rec("before_train")
    def after_train(self): self._rec("after_train")
    def before_epoch(self): self._rec("before_epoch")
    def after_epoch(self): self._rec("after_epoch")
    def before_step(self): self._rec("before_step")
    def after_step(self): self._rec("after_step")
    def before_eval(self): self._rec("before_eval")
    def after_eval(self, metrics): self._rec("after_eval" if metrics else "after_eval_empty")


class _ProgressModel(_ToyClassifier, BaseModel):
    """The toy classifier declaring the model interface; records what the engine tells it."""

    def __init__(self, num_classes: int = 2, hidden: int = 8):
        super().__init__(num_classes=num_classes, hidden=hidden)
        self.begun, self.ended = [], []

    def train_step_begin(self, progress: Progress) -> None:
        self.begun.append(progress)

    def train_step_end(self, progress: Progress) -> None:
        self.ended.append(progress)


for _obj, _reg in ((_Calls, HOOKS), (_ProgressModel, MODELS)):
    if _obj.__name__ not in _reg:
        _reg.register(obj=_obj)


def _run(t):
    try:
        return t.train()
    finally:
        t.close()


def test_hook_order_and_custom_hooks_from_config(tmp_path):
    cfg = toy_config(train={"epochs": 2, "hooks": [{"type": "_Calls", "tag": "a"}]})
    cfg["data"]["train"]["num_samples"] = 16
    t = Trainer(cfg, work_dir=tmp_path)
    assert [type(h).__name__ for h in t.hooks] == ["LRScheduleHook", "LoggerHook", "EvalHook", "CheckpointHook",
                                                    "BestCheckpointHook", "_Calls"]
    _run(t)
    ev = [e for e, _, _ in _Calls.log]
    per_epoch = ["before_epoch"] + ["before_step", "after_step"] * 2 + ["before_eval", "after_eval", "after_epoch"]
    assert ev == ["before_train"] + per_epoch * 2 + ["after_train"]
    assert ("after_epoch", 1, 2) in _Calls.log and ("after_epoch", 2, 4) in _Calls.log
    log = (tmp_path / "train.log").read_text()
    assert "hooks: LRScheduleHook, LoggerHook, EvalHook, CheckpointHook, BestCheckpointHook, _Calls" in log


def test_after_train_runs_when_training_fails(tmp_path):
    cfg = toy_config(model={"crash_at_call": 3}, train={"epochs": 2, "hooks": [{"type": "_Calls"}]}, evaluation=None)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(Trainer(cfg, work_dir=tmp_path))
    assert _Calls.log[-1] == ("after_train", 0, 2)


def test_run_step_override_and_model_interface(tmp_path):
    class Counting(Trainer):
        steps = 0

        def run_step(self, batch):
            Counting.steps += 1
            return super().run_step(batch)

    cfg = toy_config(train={"max_iters": 6}, evaluation=None)
    cfg["model"]["type"] = "_ProgressModel"
    t = Counting(cfg, work_dir=tmp_path)
    _run(t)
    assert Counting.steps == 6
    assert [(p.epoch, p.iter) for p in t.model.begun] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 4), (1, 5)]
    assert [p.iter for p in t.model.ended] == [1, 2, 3, 4, 5, 6]
    assert all(p.max_iters == 6 and p.max_epochs is None for p in t.model.begun)


def test_plain_module_trains_without_interface(tmp_path):
    t = Trainer(toy_config(train={"max_iters": 2}, evaluation=None), work_dir=tmp_path)
    assert not isinstance(t.model, BaseModel)
    assert _run(t).iter == 2


def test_metric_direction_comes_from_the_evaluator(tmp_path):
    from defectkit.evaluation.base import BaseEvaluator, metric_greater_is_better

    class Ev(BaseEvaluator):
        main_metric = "mAP"
        greater_is_better = True
        metric_directions = {"att_ms": False}

    assert metric_greater_is_better(Ev(), "att_ms") is False
    assert metric_greater_is_better(Ev(), "mAP") is True
    assert metric_greater_is_better(Ev(), "error_rate") is True   # no guessing from the name
    from defectkit.evaluation.detection import DetectionEvaluator

    det = DetectionEvaluator(classes=["a"])
    assert [metric_greater_is_better(det, m) for m in ("mAP", "att_ms", "att_ideal_ms", "ideal_time")] == \
        [True, False, False, False]
    # the trainer: scripted accuracy under "accuracy" declared lower-is-better keeps the lowest
    from helpers_toy import _ToyEvaluator

    class LowEv(_ToyEvaluator, BaseEvaluator):
        metric_directions = {"accuracy": False}

    if "_LowEv" not in __import__("defectkit").registry.EVALUATORS:
        __import__("defectkit").registry.EVALUATORS.register("_LowEv", LowEv)
    cfg = toy_config(train={"epochs": 3}, evaluation={"type": "_LowEv", "scripted": [0.5, 0.2, 0.4]})
    r = _run(Trainer(cfg, work_dir=tmp_path))
    assert r.best_metric["value"] == 0.2 and r.best_metric["epoch"] == 2
    assert r.best_metric["greater_is_better"] is False


def test_builtin_hook_in_train_hooks_is_an_error(tmp_path):
    from defectkit.config import ConfigError

    with pytest.raises(ConfigError, match="train.hooks.0: CheckpointHook is a built-in hook"):
        Trainer(toy_config(train={"hooks": [{"type": "CheckpointHook"}]}), work_dir=tmp_path)
