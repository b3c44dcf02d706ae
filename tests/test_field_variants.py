"""Hidden variants of the issue-10 kinds found by trying the tools as a user would:
a model option's own value check, PaDiM masks at another size than the model's input,
a checkpoint whose classes differ from the data's, class names in infer's results,
and a mask drawn only in its alpha channel."""
import numpy as np
import pytest
import torch
from PIL import Image

from defectkit.config import ConfigError
from defectkit.data.formats.common import DataFormatError
from defectkit.data.formats.images import decode_mask
from defectkit.engine.builders import build_model, check_classes
from defectkit.evaluation.anomaly import AnomalyEvaluator
from defectkit.evaluation.detection import DetectionEvaluator
from defectkit.structures import AnomalyResult, DetectionResult


def test_a_model_constructors_value_check_is_a_config_error_naming_the_section():
    cfg = {"type": "ImageClassifier", "backbone": "small_cnn", "pretrained": None, "pool": "maxx"}
    with pytest.raises(ConfigError, match=r"model \(ImageClassifier\): .*pool must be 'avg' or 'max'"):
        build_model(cfg, ["a", "b"])
    with pytest.raises(ConfigError, match=r"model \(ImageClassifier\): unknown backbone 'small_cnnn'"):
        build_model({**cfg, "pool": "avg", "backbone": "small_cnnn"}, ["a", "b"])


def test_anomaly_decisions_at_another_size_are_resized_to_the_ground_truth():
    ev = AnomalyEvaluator(num_overlays=0)
    results, masks = [], []
    for k in range(4):                                   # model input 8x8, ground truth 6x6
        pred = torch.zeros(8, 8, dtype=torch.bool)
        raw = torch.zeros(8, 8)
        if k % 2:
            pred[:4, :4] = True
            raw[:4, :4] = 5.0
        results.append(AnomalyResult(score=float(k % 2), anomaly_map=raw, pred_label=k % 2,
                                     pred_mask=pred, raw_score=float(raw.max()), raw_map=raw))
        m = torch.zeros(6, 6, dtype=torch.long)
        if k % 2:
            m[:3, :3] = 1
        masks.append(m)
    ev.process({"mask": torch.stack(masks), "is_defective": torch.tensor([0, 1, 0, 1]),
                "image": torch.zeros(4, 3, 6, 6)}, results)
    m = ev.compute()
    assert m["image_auroc"] == 1.0 and m["pixel_auroc"] == pytest.approx(1.0)
    assert m["pixel_f1"] == pytest.approx(1.0)          # the 4x4 decision lands on the 3x3 defect


def test_checkpoint_classes_must_equal_the_datas_in_order():
    assert check_classes(["a", "b"], ["a", "b"], "data.test") == ["a", "b"]
    assert check_classes(None, ["a", "b"], "data.test") == ["a", "b"]
    for model in (["hole", "unused", "stain"], ["b", "a"]):
        with pytest.raises(ConfigError, match=r"data.test: the checkpoint's classes .* differ from the data's"):
            check_classes(model, ["a", "b"] if model == ["b", "a"] else ["hole", "stain"], "data.test")


def test_detection_results_name_their_labels():
    ev = DetectionEvaluator(classes=["dent", "scratch"])
    r = DetectionResult(torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]]), torch.tensor([0.9, 0.8]),
                        torch.tensor([1, 0]))
    assert ev.export_fields(r) == {"label_names": ["scratch", "dent"]}


def test_a_mask_drawn_only_in_alpha_is_an_error_not_a_normal_image(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[2:5, 2:5, 3] = 255
    Image.fromarray(a, "RGBA").save(tmp_path / "m.png")
    with pytest.raises(DataFormatError, match=r"m.png: mask mode 'RGBA' varies only in its alpha"):
        decode_mask(tmp_path / "m.png")
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 1] = 255                                        # constant alpha: fine, all background
    la[2:5, 2:5, 0] = 1
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert decode_mask(tmp_path / "la.png").sum() == 9


def test_images_the_reader_dropped_are_listed_with_the_unreadable_ones(tmp_path, capsys):
    """A missing file is dropped while reading (skip_invalid), a truncated one while
    evaluating: tools/test.py lists both in metrics.json ``skipped`` and its summary."""
    import json

    from helpers_tools import tool
    from test_field_eval import noisy_oracle_config, write_coco

    ann = write_coco(tmp_path, corrupt=1)
    (tmp_path / "img" / "im5.png").unlink()            # a normal image whose file is gone
    cfg, ckpt = noisy_oracle_config(tmp_path, ann)
    tool("test").main([str(cfg), str(ckpt), "--out-dir", str(tmp_path / "out"), "--show", "0"])
    printed = capsys.readouterr().out
    rec = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert rec["metrics"]["num_images"] == 4 and rec["metrics"]["num_skipped"] == 2
    assert "im1.jpg" in rec["skipped"][0]["path"]
    assert rec["skipped"][1]["when"] == "reading the annotations" and "im5.png" in rec["skipped"][1]["error"]
    assert "skipped 2 unreadable sample(s)" in printed and "im5.png" in printed


def test_compare_retests_when_only_test_settings_differ():
    """A checkpoint is judged by the settings its weights depend on: data.test, evaluation
    and benchmark changes re-test it; a training setting makes compare stop (or retrain)."""
    from helpers_tools import tool

    compare = tool("compare")
    base = {"model": {"type": "X"}, "optimizer": {"lr": 0.1},
            "data": {"train": {"p": 1}, "test": {"scale": [64, 64]}}, "evaluation": {"score_thr": 0.05}}
    test_only = {**base, "data": {"train": {"p": 1}, "test": {"scale": [96, 96]}},
                 "evaluation": {"score_thr": 0.3}}
    trained = {**base, "optimizer": {"lr": 0.2}}
    h = lambda c: compare.config_hash(compare.training_part(c))   # noqa: E731
    assert h(base) == h(test_only) and compare.config_hash(base) != compare.config_hash(test_only)
    assert h(base) != h(trained)
    assert "optimizer.lr: 0.1 != 0.2" in compare.config_diff(compare.training_part(base),
                                                          compare.training_part(trained))
