"""Self-training (issue 13): threshold calibration, acceptance rule, pseudo-label audit
(defectkit/evaluation/pseudo_labels.py) and tools/self_train.py (round folders, the labelled
folder untouched, --resume)."""
import hashlib
import json
import math
import random
from pathlib import Path

import pytest
import torch

from defectkit.evaluation.pseudo_labels import (calibrate_thresholds, pseudo_label_metrics, select_pseudo_labels,
                                                size_bucket)
from helpers_tools import ROOT, tool

# ---------------------------------------------------------------------- calibration
# class "a": 13 predictions; sorted by IoU the first 6 have IoU >= 0.7 (horizon 6), the window
# [1, 11) holds the scores .95 .9 .85 .8 .7 .65 .6 .45 .3 .55, those > 0.5 average to 6.0 / 8
A_ROWS = [(0.95, 0.99), (0.9, 0.95), (0.85, 0.9), (0.8, 0.85), (0.75, 0.8), (0.72, 0.7), (0.6, 0.65),
          (0.5, 0.6), (0.4, 0.45), (0.3, 0.3), (0.2, 0.55), (0.1, 0.9), (0.0, 0.1)]


def test_calibration_hand_table():
    rows = [("a", iou, s) for iou, s in A_ROWS]
    random.Random(0).shuffle(rows)                     # the input order does not matter
    thr, notes = calibrate_thresholds(rows, ["a"])
    assert thr == {"a": pytest.approx(0.75)} and notes == []
    # by class index, a narrower window: rows [4, 8) -> .8 .7 .65 .6 -> 0.6875
    thr, _ = calibrate_thresholds([(0, iou, s) for iou, s in A_ROWS], ["a"], window=2)
    assert thr["a"] == pytest.approx((0.8 + 0.7 + 0.65 + 0.6) / 4)


def test_calibration_guard_too_few_matches_falls_back_with_a_note():
    rows = [("a", iou, s) for iou, s in A_ROWS]
    rows += [("b", 0.9, 0.9), ("b", 0.8, 0.8), ("b", 0.75, 0.7), ("b", 0.1, 0.6)]          # 3 matches
    rows += [("d", 0.9, 0.3)] * 6 + [("d", 0.1, 0.2)] * 3                                  # no score > 0.5
    thr, notes = calibrate_thresholds(rows, ["a", "b", "c", "d"], fallback=0.4)
    assert thr == {"a": pytest.approx(0.75), "b": 0.4, "c": 0.4, "d": 0.4}
    assert all(math.isfinite(v) for v in thr.values())
    assert len(notes) == 3
    assert "'b'" in notes[0] and "3 prediction(s)" in notes[0] and "0.4" in notes[0]
    assert "'c'" in notes[1] and "0 prediction(s)" in notes[1]
    assert "'d'" in notes[2] and "6 prediction(s)" in notes[2] and "no score > 0.5" in notes[2]
    with pytest.raises(ValueError, match="class 'x' is not one of"):
        calibrate_thresholds([("x", 0.9, 0.9)], ["a"])


# ------------------------------------------------------------------------ acceptance
THR = [0.6, 0.8]          # class 0, class 1


def _sel(scores, labels, thr=THR):
    boxes = torch.tensor([[0.0, 0.0, 10.0 + i, 10.0] for i in range(len(scores))]).reshape(-1, 4)
    return select_pseudo_labels(boxes, torch.tensor(labels, dtype=torch.int64), torch.tensor(scores), thr, low=0.2)


def test_acceptance_rules():
    b, l, s = _sel([0.7, 0.9, 0.1], [0, 1, 1])           # confident boxes + an ignored low one
    assert l.tolist() == [0, 1] and s.tolist() == pytest.approx([0.7, 0.9]) and b[:, 2].tolist() == [10.0, 11.0]
    assert _sel([0.9, 0.5], [0, 0]) is None               # 0.5 in (0.2, 0.6): ambiguous image
    assert _sel([0.9, 0.7], [0, 1]) is None               # 0.7 is confident for class 0, not for class 1
    assert _sel([], []) is None                           # empty: never added
    assert _sel([0.15, 0.2], [0, 1]) is None              # only background: never added
    b, l, s = _sel([0.6, 0.2], [0, 1])                    # score == thr accepted, score == low ignored
    assert l.tolist() == [0] and s.tolist() == pytest.approx([0.6])
    assert _sel([0.85], [1], thr={0: 0.6, 1: 0.8}) is not None          # thresholds as a dict
    with pytest.raises(ValueError, match="no threshold for class index 2"):
        _sel([0.9], [2])


# ---------------------------------------------------------------------------- audit
def test_pseudo_label_precision_recall_per_class_and_size():
    pred = [{"boxes": [[0, 0, 10, 10], [50, 50, 60, 60]], "labels": [0, 1], "scores": [0.9, 0.8]},   # TP a, FP b
            None,                                                                                    # rejected
            {"boxes": [[0, 0, 20, 20]], "labels": [0]}]                                             # FP a
    gt = [{"boxes": [[0, 0, 10, 10], [0, 0, 40, 40]], "labels": [0, 1]},    # a small, b medium
          {"boxes": [[0, 0, 100, 100]], "labels": [0]},                    # a large, missed
          {"boxes": [], "labels": []}]
    m = pseudo_label_metrics(pred, gt, classes=["a", "b"])
    assert (m["tp"], m["num_pred"], m["num_gt"]) == (1, 3, 3)
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == pytest.approx(1 / 3)
    assert (m["images"], m["images_accepted"]) == (3, 2)
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "tp": 1, "num_pred": 2, "num_gt": 2}
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "tp": 0, "num_pred": 1, "num_gt": 1}
    assert m["per_size"]["small"]["precision"] == pytest.approx(1 / 3) and m["per_size"]["small"]["recall"] == 1.0
    assert m["per_size"]["medium"] == {"precision": None, "recall": 0.0, "tp": 0, "num_pred": 0, "num_gt": 1}
    assert m["per_size"]["large"] == {"precision": None, "recall": 0.0, "tp": 0, "num_pred": 0, "num_gt": 1}
    # GT boxes of ACCEPTED images without a pseudo-label (trained as background next round): image 0's
    # b box; image 1 is rejected (its missed box costs recall, not background), image 2 has no GT
    assert m["in_accepted"] == {"gt": 2, "missed": 1, "per_class": {"a": {"gt": 1, "missed": 0},
                                                                    "b": {"gt": 1, "missed": 1}}}
    # two boxes on one GT box: the higher score matches, the other is a false positive
    dup = pseudo_label_metrics([{"boxes": [[1, 1, 10, 10], [0, 0, 10, 10]], "labels": [0, 0], "scores": [0.5, 0.9]}],
                               [{"boxes": [[0, 0, 10, 10]], "labels": [0]}])
    assert (dup["tp"], dup["num_pred"], dup["precision"], dup["recall"]) == (1, 2, 0.5, 1.0)
    assert [size_bucket(a) for a in (0, 1023.9, 1024, 9215, 9216)] == ["small"] * 2 + ["medium"] * 2 + ["large"]


# ----------------------------------------------------------------------------- tool
def _tree_hash(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth_voc(tmp_path_factory):
    from defectkit.data.synth.generator import generate

    root = tmp_path_factory.mktemp("st_data")
    generate("demo", root / "demo", num_images=20, size=(64, 64), seed=0, workers=1)
    cfg = root / "tiny.yaml"
    cfg.write_text(f"""
_base_: {ROOT / 'configs/_base_/runtime/default.yaml'}
model: {{type: FasterRCNN, backbone: small_cnn, pretrained: null, frozen_stages: -1, norm_eval: false,
        fpn_channels: 16, fc_dim: 16, rois_per_img: 16, anchor_sizes: [8, 16, 32, 64, 128], rpn_train_topn: 50,
        rpn_test_topn: 50, score_thr: 0.0, max_per_img: 10}}
evaluation: {{type: DetectionEvaluator, score_thr: 0.05}}
data:
  train: {{type: VOCDataset, root: {root / 'demo/voc'}, split: train, img_dir: {root / 'demo/images'},
          pipeline: [{{type: Normalize}}, {{type: Pad, size_divisor: 32}}]}}
  val: {{type: VOCDataset, root: {root / 'demo/voc'}, split: test, img_dir: {root / 'demo/images'},
        classes: [hole, stain], pipeline: [{{type: Normalize}}, {{type: Pad, size_divisor: 32}}]}}
  batch_size: 2
  num_workers: 0
optimizer: {{type: AdamW, lr: 0.001}}
lr_schedule: {{type: StepLR, milestones: [100], by_epoch: false}}
train: {{max_iters: 1, val_interval: 0, log_interval: 1}}
""")
    return {"cfg": cfg, "data": root / "demo"}


def test_tool_round_folders_labelled_untouched_and_resume(synth_voc, tmp_path, monkeypatch, capsys):
    st = tool("self_train")
    wd = tmp_path / "wd"
    before = _tree_hash(synth_voc["data"])
    # fallback threshold 0 and no calibration match: every image with a detection is accepted
    argv = [str(synth_voc["cfg"]), "--labelled-fraction", "0.5", "--rounds", "2", "--work-dir", str(wd),
            "--fallback-thr", "0", "--precision-floor", "0", "--patience", "5", "--seed", "1"]
    real = st.process_round

    def interrupted(k, ckpt, cfg, ctx, log):           # killed while pseudo-labelling round 1
        if k == 1:
            (ctx["work_dir"] / "round_1" / "pseudo.tmp" / "Annotations").mkdir(parents=True)
            raise KeyboardInterrupt
        return real(k, ckpt, cfg, ctx, log)

    monkeypatch.setattr(st, "process_round", interrupted)
    with pytest.raises(KeyboardInterrupt):
        st.main(argv)
    state = json.loads((wd / "rounds.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [0] and not state["finished"]
    assert not (wd / "round_2").exists()
    r0 = _tree_hash(wd / "round_0" / "pseudo")
    assert r0 and all(k.startswith("Annotations/train__") for k in r0)
    ckpt_times = {d: (wd / d / "latest.pth").stat().st_mtime_ns for d in ("round_0", "round_1")}

    with pytest.raises(SystemExit, match="pass --resume"):
        st.main(argv)
    monkeypatch.setattr(st, "process_round", real)
    assert st.main(argv + ["--resume"]) == 0
    state2 = json.loads((wd / "rounds.json").read_text())
    assert [r["round"] for r in state2["rounds"]] == [0, 1, 2] and state2["finished"]
    assert state2["rounds"][0] == state["rounds"][0]                         # round 0 kept as it was
    assert {d: (wd / d / "latest.pth").stat().st_mtime_ns for d in ckpt_times} == ckpt_times   # not retrained
    assert _tree_hash(wd / "round_0" / "pseudo") == r0                       # an earlier round never rewritten
    assert not (wd / "round_1" / "pseudo.tmp").exists() and (wd / "round_1" / "pseudo" / "Annotations").is_dir()
    assert _tree_hash(synth_voc["data"]) == before                           # the labelled folder is unchanged
    # round k trains on labelled + round k-1's pseudo-labels
    r2 = state2["rounds"][2]
    assert r2["train_pseudo"] == state2["rounds"][1]["pseudo"]["images_accepted"] > 0
    assert r2["train_images"] == len(state2["split"]["labelled"]) + r2["train_pseudo"]
    assert str(wd / "round_1" / "pseudo") in (wd / "round_2" / "config.yaml").read_text()
    assert state2["rounds"][0]["audit"]["num_gt"] > 0 and "per_size" in state2["rounds"][0]["audit"]
    ia = state2["rounds"][1]["audit"]["in_accepted"]
    assert 0 <= ia["missed"] <= ia["gt"] and set(ia["per_class"]) == {"hole", "stain"}
    assert (wd / "rounds.png").is_file()
    out = capsys.readouterr().out
    assert "| round | train imgs (pseudo) | val mAP |" in out
    # the pseudo-labels read back as a VOC dataset (absolute image paths)
    from defectkit.data.datasets import VOCDataset
    ds = VOCDataset(root=str(wd / "round_1" / "pseudo"), classes=["hole", "stain"])
    assert len(ds) == state2["rounds"][1]["pseudo"]["images_accepted"] and Path(ds.records[0].img_path).is_file()


def test_tool_stops_on_the_precision_floor_and_resume_says_so(synth_voc, tmp_path, capsys):
    st = tool("self_train")
    wd = tmp_path / "wd"
    argv = [str(synth_voc["cfg"]), "--labelled-fraction", "0.5", "--rounds", "3", "--work-dir", str(wd),
            "--fallback-thr", "0", "--precision-floor", "1.01", "--seed", "1"]
    assert st.main(argv) == 0
    state = json.loads((wd / "rounds.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [0] and not (wd / "round_1").exists()
    assert state["stopped"].startswith("pseudo-label precision") and "< floor 1.01" in state["stopped"]
    capsys.readouterr()
    assert st.main(argv + ["--resume"]) == 0
    assert "stopped early at round 0" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other settings.*seed: 1 vs 2"):
        st.main(argv[:-1] + ["2", "--resume"])
