import pytest

from defectkit.registry import Registry


def make():
    r = Registry("thing")

    @r.register()
    class DefectNet:
        def __init__(self, depth=50, gate=None):
            self.depth, self.gate = depth, gate

    @r.register("alias")
    def build_small(depth=18):
        return ("small", depth)

    return r


def test_build_pops_type_and_passes_kwargs():
    r = make()
    obj = r.build({"type": "DefectNet", "depth": 18})
    assert obj.depth == 18 and obj.gate is None
    assert r.build({"type": "alias"}) == ("small", 18)


def test_build_does_not_mutate_config_and_extra_defaults():
    r = make()
    cfg = {"type": "DefectNet"}
    assert r.build(cfg, depth=34).depth == 34
    assert r.build({"type": "DefectNet", "depth": 101}, depth=34).depth == 101  # config wins
    assert cfg == {"type": "DefectNet"}


def test_unknown_type_suggests_close_match():
    r = make()
    with pytest.raises(KeyError) as e:
        r.build({"type": "DefectNt"})
    assert "did you mean 'DefectNet'" in str(e.value)
    assert "thing registry" in str(e.value)


def test_duplicate_name_rejected_and_missing_type():
    r = make()
    with pytest.raises(KeyError, match="already registered"):
        r.register("DefectNet", obj=lambda: None)
    with pytest.raises(TypeError, match="'type'"):
        r.build({"depth": 3})


def test_package_registers_everything_at_import():
    import defectkit
    from defectkit.registry import EVALUATORS, LR_SCHEDULES, MODELS, OPTIMIZERS

    assert "ImageClassifier" in MODELS
    assert "ClassificationEvaluator" in EVALUATORS
    assert {"SGD", "Adam", "AdamW"} <= set(OPTIMIZERS.keys())
    assert LR_SCHEDULES.keys()
    assert defectkit.__version__
