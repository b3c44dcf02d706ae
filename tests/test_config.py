from dataclasses import dataclass

import pytest

from defectkit.config import (ConfigError, apply_options, dump_config, load_config, merge,
                              parse_cfg_options, parse_value, validate_config)
from defectkit.registry import MODELS


@dataclass
class _GateCfg:
    schedule: str = "constant"
    w0: float = 1.0


@MODELS.register()
class _CfgTestModel:
    def __init__(self, depth: int = 18, gate: _GateCfg | dict | None = None, head: dict | None = None):
        pass


@MODELS.register()
class _CfgTestHead:
    def __init__(self, num_classes: int = 2):
        pass


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_merge_relative_paths_and_delete(tmp_path):
    write(tmp_path / "_base_/models/m.yaml",
          "model: {type: _CfgTestModel, depth: 50, gate: {schedule: linear, w0: 2.0}}\n")
    write(tmp_path / "_base_/sched.yaml", "train: {epochs: 12, log_interval: 5}\nseed: 1\n")
    cfg_path = write(tmp_path / "fam/exp.yaml", """
_base_: [../_base_/models/m.yaml, ../_base_/sched.yaml]
model:
  depth: 18
  gate: {_delete_: true, schedule: inverse}
train: {epochs: 24}
""")
    cfg = load_config(cfg_path)
    assert cfg["model"] == {"type": "_CfgTestModel", "depth": 18, "gate": {"schedule": "inverse"}}
    assert cfg["train"] == {"epochs": 24, "log_interval": 5}
    assert cfg["seed"] == 1


def test_single_string_base_and_lists_replaced(tmp_path):
    write(tmp_path / "a.yaml", "model: {type: _CfgTestModel}\nclasses: [a, b, c]\n")
    cfg = load_config(write(tmp_path / "b.yaml", "_base_: a.yaml\nclasses: [x]\n"))
    assert cfg["classes"] == ["x"]


def test_missing_base_names_the_asking_file(tmp_path):
    p = write(tmp_path / "child.yaml", "_base_: [nope/base.yaml]\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "nope/base.yaml" in str(e.value) and "child.yaml" in str(e.value)


def test_base_cycle_detected(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_broken_yaml_names_file(tmp_path):
    p = write(tmp_path / "bad.yaml", "model: {type: [\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(p)


@pytest.mark.parametrize("text,expected", [
    ("1", 1), ("0.5", 0.5), ("1e-4", 1e-4), ("true", True), ("False", False), ("None", None),
    ("abc", "abc"), ("[1,2]", [1, 2]), ("(1,2)", (1, 2)), ("1,2,3", [1, 2, 3]),
    ("[(1,2),(3,4)]", [(1, 2), (3, 4)]), ('"[a, b]"', ["a", "b"]), ("[[1,2],[3]]", [[1, 2], [3]]),
])
def test_parse_value_mmengine_grammar(text, expected):
    assert parse_value(text) == expected


def test_cfg_options_dotted_list_index_and_new_keys():
    cfg = {"a": {"b": 1}, "data": {"train": {"pipeline": [{"type": "X", "p": 0.5}, {"type": "Y"}]}}}
    apply_options(cfg, parse_cfg_options([
        "a.b=2", "a.l=[1,2]", "data.train.pipeline.0.p=0.1", "new.key=None", "data.train.pipeline.1.type=Z"]))
    assert cfg["a"] == {"b": 2, "l": [1, 2]}
    assert cfg["data"]["train"]["pipeline"] == [{"type": "X", "p": 0.1}, {"type": "Z"}]
    assert cfg["new"] == {"key": None}


def test_cfg_options_bad_index_and_bad_syntax():
    with pytest.raises(ConfigError, match="index"):
        apply_options({"l": [1]}, {"l.3": 0})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_cfg_options(["novalue"])


def test_validation_unknown_model_key_path_and_suggestion():
    cfg = {"model": {"type": "_CfgTestModel", "dpth": 3}}
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert "model.dpth" in str(e.value) and "did you mean 'depth'" in str(e.value)


def test_validation_dataclass_subconfig():
    cfg = {"model": {"type": "_CfgTestModel", "gate": {"shedule": "linear"}}}
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert "model.gate.shedule: unknown key; did you mean 'schedule'?" in str(e.value)


def test_validation_nested_registry_object_and_unknown_type():
    with pytest.raises(ConfigError, match=r"model.head.num_clases.*num_classes"):
        validate_config({"model": {"type": "_CfgTestModel", "head": {"type": "_CfgTestHead",
                                                                     "num_clases": 3}}})
    with pytest.raises(ConfigError, match=r"model.type.*did you mean '_CfgTestModel'"):
        validate_config({"model": {"type": "_CfgTestModl"}})


def test_validation_sections_and_settings():
    with pytest.raises(ConfigError, match=r"^trian: unknown key; did you mean 'train'"):
        validate_config({"trian": {}})
    with pytest.raises(ConfigError, match=r"train.epoch: unknown key; did you mean 'epochs'"):
        validate_config({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"data.batchsize"):
        validate_config({"data": {"batchsize": 3}})
    with pytest.raises(ConfigError, match=r"optimizer.lrr"):
        validate_config({"optimizer": {"type": "SGD", "lrr": 0.1}})


def test_load_config_validates_overrides(tmp_path):
    p = write(tmp_path / "c.yaml", "model: {type: _CfgTestModel}\n")
    assert load_config(p, ["model.depth=34"])["model"]["depth"] == 34
    with pytest.raises(ConfigError, match="model.deph"):
        load_config(p, ["model.deph=34"])


def test_dump_roundtrip(tmp_path):
    cfg = {"model": {"type": "_CfgTestModel", "depth": 18}, "x": (1, 2), "name": "背景"}
    dump_config(cfg, tmp_path / "out/config.yaml")
    back = load_config(tmp_path / "out/config.yaml", validate=False)
    assert back == {"model": {"type": "_CfgTestModel", "depth": 18}, "x": [1, 2], "name": "背景"}


def test_merge_leaves_inputs_untouched():
    a, b = {"x": {"y": 1}}, {"x": {"z": 2}}
    assert merge(a, b) == {"x": {"y": 1, "z": 2}}
    assert a == {"x": {"y": 1}} and b == {"x": {"z": 2}}


def test_yaml_aliases_become_independent_copies(tmp_path):
    p = write(tmp_path / "c.yaml", "a: &x {k: 1}\nb: *x\n")
    cfg = load_config(p, ["a.k=2"], validate=False)
    assert cfg["a"] == {"k": 2} and cfg["b"] == {"k": 1}
