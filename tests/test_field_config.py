"""Issue 10, item 7: wrong value types and pipeline value errors fail at load naming the
dotted key; ``--cfg-options`` edge cases give one line naming the option as written."""
from __future__ import annotations

import glob
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import pytest

from defectkit.config import ConfigError, check_value, load_config, options_from, validate_config
from defectkit.registry import MODELS


@dataclass
class _Opts:
    mode: Literal["a", "b"] = "a"
    ratio: float = 0.5
    count: int = 1

    def __post_init__(self):
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"opts.ratio: must be in [0, 1], got {self.ratio}")


@MODELS.register()
class _FieldCfgModel:
    def __init__(self, depth: int = 18, name: str = "x", scale: float = 1.0, flag: bool = False,
                 sizes: tuple[int, ...] = (1, 2), pair: Optional[tuple[int, int]] = None,
                 tags: list[str] | None = None, table: dict[str, float] | None = None,
                 either: Union[int, Sequence[int]] = 1, opts: _Opts | dict | None = None,
                 free=None):
        pass


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def err(cfg) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    return str(e.value)


def model(**kw):
    return {"model": {"type": "_FieldCfgModel", **kw}}


# ----------------------------------------------------------------------- value types
@pytest.mark.parametrize("kw,message", [
    ({"depth": 1.5}, "model.depth: expected int, got float 1.5"),
    ({"depth": True}, "model.depth: expected int, got bool True"),
    ({"scale": "fast"}, "model.scale: expected float, got str 'fast'"),
    ({"scale": False}, "model.scale: expected float, got bool False"),
    ({"flag": 1}, "model.flag: expected bool, got int 1"),
    ({"name": 3}, "model.name: expected str, got int 3"),
    ({"sizes": [1, "2"]}, "model.sizes: expected list[int], got list [1, '2']"),
    ({"sizes": "12"}, "model.sizes: expected list[int], got str '12'"),
    ({"pair": [1, 2, 3]}, "model.pair: expected list of 2 [int, int] | None, got list [1, 2, 3]"),
    ({"tags": {"a": 1}}, "model.tags: expected list[str] | None, got dict {'a': 1}"),
    ({"table": [1, 2]}, "model.table: expected dict | None, got list [1, 2]"),
    ({"table": {"a": "b"}}, "model.table: expected dict | None, got dict {'a': 'b'}"),
    ({"either": 2.5}, "model.either: expected int | list[int], got float 2.5"),
    ({"opts": [1, 2]}, "model.opts: expected dict | None, got list [1, 2]"),
    ({"opts": {"ratio": "high"}}, "model.opts.ratio: expected float, got str 'high'"),
    ({"opts": {"mode": "c"}}, "model.opts.mode: 'c' is not one of ['a', 'b']"),
    ({"opts": {"ratio": 2}}, "model.opts.ratio: must be in [0, 1], got 2"),   # __post_init__
])
def test_wrong_value_types_name_key_expected_and_value(kw, message):
    assert err(model(**kw)) == message


def test_right_values_pass_int_for_float_none_for_optional_list_for_tuple():
    validate_config(model(depth=50, scale=2, flag=True, sizes=[1, 2, 3], pair=[4, 5], tags=None,
                          table={"a": 1}, either=[1, 2], opts={"mode": "b", "ratio": 1},
                          free={"anything": [object]}))
    check_value(None, Optional[float], "k")
    check_value(3, None, "k")            # no annotation: nothing is checked


def test_real_constructors_and_option_dataclasses():
    assert err({"optimizer": {"type": "SGD", "lr": "fast"}}) == \
        "optimizer.lr: expected float, got str 'fast'"
    assert err({"optimizer": {"type": "SGD", "lr": 0.1, "momentum": True}}) == \
        "optimizer.momentum: expected float, got bool True"
    assert "Invalid learning rate" in err({"optimizer": {"type": "SGD", "lr": -0.1}})
    assert "beta" in err({"optimizer": {"type": "Adam", "lr": 0.1, "betas": [0.9, 2.0]}})
    assert err({"model": {"type": "CascadeRCNN", "gate": {"w0": "high"}}}) == \
        "model.gate.w0: expected float, got str 'high'"
    assert err({"model": {"type": "CascadeRCNN", "gate": {"schedule": "linar"}}}).startswith(
        "model.gate.schedule: must be one of")
    assert err({"model": {"type": "ZNet", "aux_head": {"weight": "x"}}}) == \
        "model.aux_head.weight: expected float, got str 'x'"
    assert err({"model": {"type": "UNet", "aux_head": {"pooling": "mean"}}}).startswith(
        "model.aux_head.pooling: must be 'avg' or 'max'")
    assert err({"model": {"type": "PaDiM", "calibration": {"val_ratio": 1.5}}}).startswith(
        "model.calibration.val_ratio: must be in [0, 1)")
    assert err({"train": {"epochs": 1.5}}) == "train.epochs: expected int | None, got float 1.5"
    assert err({"data": {"batch_size": "2"}}) == "data.batch_size: expected int, got str '2'"
    assert err({"lr_schedule": {"type": "CosineLR", "warmup_ratio": 3}}).startswith(
        "lr_schedule (CosineLR): warmup_ratio must be in [0, 1]")
    assert err({"evaluation": {"type": "DetectionEvaluator", "score_thr": "0.5"}}) == \
        "evaluation.score_thr: expected float, got str '0.5'"
    validate_config({"lr_schedule": {"type": "StepLR", "milestones": 8}})   # an int is accepted


def test_unresolvable_annotation_is_skipped_others_still_checked():
    import types

    mod = types.ModuleType("_field_cfg_fwd")
    exec("from __future__ import annotations\n"
         "class Fwd:\n"
         "    def __init__(self, x: int = 0, y: NotImported = None, z: str | None = None): pass\n",
         mod.__dict__)
    sys.modules[mod.__name__] = mod
    MODELS.register("_FieldCfgFwd", mod.Fwd)
    validate_config({"model": {"type": "_FieldCfgFwd", "y": [object()], "z": None}})
    assert err({"model": {"type": "_FieldCfgFwd", "x": "1"}}) == "model.x: expected int, got str '1'"


def test_plain_top_level_sections_are_typed():
    assert err({"seed": "abc"}) == "seed: expected int, got str 'abc'"
    assert err({"deterministic": "yes"}) == "deterministic: expected bool, got str 'yes'"
    assert err({"custom_imports": "my_pkg"}) == "custom_imports: expected list[str] | None, got str 'my_pkg'"
    assert err({"classes": "scratch"}) == "classes: expected list[str], got str 'scratch'"
    validate_config({"seed": 0, "deterministic": False, "device": None, "work_dir": "w",
                     "classes": ["a", "b"], "load_from": None})


def test_options_from_checks_types_when_built_from_python():
    with pytest.raises(ConfigError, match=r"^gate.ratio: expected float, got str 'x'$"):
        options_from(_Opts, {"ratio": "x"}, "gate")
    assert options_from(_Opts, {"ratio": 1}, "gate").ratio == 1


# ---------------------------------------------------------------- pipeline values
def _coco(pipeline):
    return {"data": {"train": {"type": "CocoDataset", "ann_file": "a.json", "img_dir": "i",
                               "pipeline": pipeline}}}


@pytest.mark.parametrize("step,message", [
    ({"type": "RandomFlip", "direction": "vertcal"},
     "data.train.pipeline.2 (RandomFlip): direction: 'vertcal' is not one of ['horizontal', 'vertical']"),
    ({"type": "RandomFlip", "prob": 1.5}, "data.train.pipeline.2 (RandomFlip): prob: must be a number in [0, 1]"),
    ({"type": "Resize", "scale": [0, 10]}, "data.train.pipeline.2 (Resize): scale: sizes must be > 0"),
    ({"type": "Resize", "scale": [1, 2, 3]}, "data.train.pipeline.2 (Resize): scale: expected an int or (w, h)"),
    ({"type": "Resize", "scale": 8, "interpolation": "cubic"},
     "data.train.pipeline.2 (Resize): interpolation: 'cubic' is not one of"),
    ({"type": "Resize", "scale": "big"}, "data.train.pipeline.2.scale: expected int | list[int], got str 'big'"),
    ({"type": "Pad"}, "data.train.pipeline.2 (Pad): give exactly one of size_divisor and size"),
    ({"type": "Normalize", "std": [0.2, 0.0, 0.2]}, "data.train.pipeline.2 (Normalize): std: every value must be > 0"),
    ({"type": "GaussianBlur", "kernel_size": 4}, "data.train.pipeline.2 (GaussianBlur): kernel_size: must be a positive odd"),
    ({"type": "RandomResizedCrop", "size": 8, "scale": [0.9, 0.1]},
     "data.train.pipeline.2 (RandomResizedCrop): scale: expected (min, max)"),
    ({"type": "Compose", "pipeline": [{"type": "ToGray", "prob": -1}]},
     "data.train.pipeline.2.pipeline.0 (ToGray): prob: must be a number in [0, 1]"),
])
def test_pipeline_value_errors_name_split_and_step(step, message):
    assert err(_coco([{"type": "Resize", "scale": 16}, {"type": "Normalize"}, step])).startswith(message)


TINY = """
model: {type: ImageClassifier, backbone: resnet18, pretrained: null, num_classes: 2}
optimizer: {type: SGD, lr: 0.01}
train: {epochs: 1}
data:
  train:
    type: ImageFolderDataset
    root: nowhere
    pipeline: [{type: Resize, scale: 16}, {type: RandomFlip, direction: vertcal}]
"""


def test_train_tool_fails_on_pipeline_value_before_the_work_dir_exists(tmp_path):
    cfg = write(tmp_path / "bad.yaml", TINY)
    tool = Path(__file__).resolve().parents[1] / "tools" / "train.py"
    proc = subprocess.run([sys.executable, str(tool), str(cfg), "--work-dir", str(tmp_path / "wd")],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == ("config error: data.train.pipeline.1 (RandomFlip): direction: 'vertcal' is not "
                        "one of ['horizontal', 'vertical']")
    assert not (tmp_path / "wd").exists()


# ------------------------------------------------------------------ --cfg-options
@pytest.fixture
def cfg_file(tmp_path):
    return write(tmp_path / "c.yaml", TINY.replace("vertcal", "vertical"))


@pytest.mark.parametrize("option,message", [
    ("=3", "--cfg-options '=3': empty key before '='"),
    ("a..b=1", "--cfg-options 'a..b=1': empty part in the key 'a..b'"),
    ("a.b.=1", "--cfg-options 'a.b.=1': empty part in the key 'a.b.'"),
    ("novalue", "--cfg-options 'novalue': expected KEY=VALUE"),
    ("x=[1,2", "--cfg-options 'x=[1,2': unbalanced brackets in option value: '[1,2'"),
    ("optimizer.lr=1e-3=4",   # the value is everything after the first '=': a string
     "optimizer.lr: expected float, got str '1e-3=4' (set by --cfg-options 'optimizer.lr=1e-3=4')"),
    ("model.backbone.depth=3",
     "--cfg-options 'model.backbone.depth=3': model.backbone holds the str 'resnet18', not a mapping "
     "or list, so it has no 'depth'; set model.backbone=... instead"),
    ("optimizer.lr.0=3", "--cfg-options 'optimizer.lr.0=3': optimizer.lr holds the float 0.01"),
    ("data.train.0=3", "--cfg-options 'data.train.0=3': '0' looks like a list index, but data.train "
                       "is a mapping"),
    ("data.train.pipeline.5.prob=1", "--cfg-options 'data.train.pipeline.5.prob=1': '5' is not a valid "
                                     "index of data.train.pipeline (a list of 2)"),
    ("data.train.pipeline.first.prob=1", "--cfg-options 'data.train.pipeline.first.prob=1': 'first' is "
                                         "not a valid index"),
    ("data.train.pipeline.1.direction=vertcal",
     "data.train.pipeline.1 (RandomFlip): direction: 'vertcal' is not one of ['horizontal', 'vertical'] "
     "(set by --cfg-options 'data.train.pipeline.1.direction=vertcal')"),
    ("train.epochs=1.5", "train.epochs: expected int | None, got float 1.5 (set by --cfg-options "
                         "'train.epochs=1.5')"),
])
def test_cfg_options_edge_cases_one_line_naming_the_option(cfg_file, option, message):
    with pytest.raises(ConfigError) as e:
        load_config(cfg_file, [option])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_cfg_options_that_are_right_still_apply(cfg_file):
    cfg = load_config(cfg_file, ["optimizer.lr=1e-3", "data.train.pipeline.-1.prob=1",
                                 "model.pretrained=None", "train.max_iters=5", "lr_schedule.type=StepLR",
                                 "lr_schedule.milestones=8,11"])
    assert cfg["optimizer"]["lr"] == 1e-3 and cfg["data"]["train"]["pipeline"][1]["prob"] == 1
    assert cfg["lr_schedule"] == {"type": "StepLR", "milestones": [8, 11]}
    cfg = load_config(cfg_file, {"model.gate": None}, validate=False)   # dict form, no validation
    assert cfg["model"]["gate"] is None


def test_every_shipped_config_loads_without_false_errors():
    root = Path(__file__).resolve().parents[1] / "configs"
    files = [f for f in glob.glob(f"{root}/**/*.yaml", recursive=True) if "/_base_/" not in f]
    assert len(files) > 40
    for f in files:
        load_config(f)
