"""Mask R-CNN: instance targets, the instance result, its evaluator, the model (tiny)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from defectkit.data.collate import collate
from defectkit.data.datasets import LabelMeDataset, MaskFolderDataset
from defectkit.data.instances import mask_instances, masks_to_boxes, polygon_instances
from defectkit.evaluation.instance_segmentation import InstanceSegmentationEvaluator
from defectkit.evaluation.segmentation import SegmentationEvaluator
from defectkit.registry import EVALUATORS, MODELS
from defectkit.structures import InstanceSegmentationResult
from defectkit.visualization import draw_result


def _tiny_model(**kw) -> torch.nn.Module:
    cfg = dict(type="MaskRCNN", backbone="small_cnn", pretrained=None, classes=["pit"], frozen_stages=-1,
               norm_eval=False, fpn_channels=16, fc_dim=32, mask_dim=16, rois_per_img=32, rpn_train_topn=100,
               rpn_test_topn=50, anchor_sizes=[8, 16, 32, 64, 128])
    cfg.update(kw)
    return MODELS.build(cfg)


# ------------------------------------------------------------------ instance targets
def test_polygon_instance_mask_box_and_pixel_count_by_hand():
    # the rectangle x 2..9, y 3..7 (PIL fills the outline too): 8 x 5 = 40 pixels,
    # box in pixel edges (2, 3, 10, 8); a triangle (0,0) (4,0) (0,4): 1+2+3+4+5 = 15 pixels
    masks, labels = polygon_instances([(0, [(2, 3), (9, 3), (9, 7), (2, 7)]),
                                       (1, [(0, 0), (4, 0), (0, 4)])], 12, 20)
    assert masks.shape == (2, 12, 20) and masks.dtype == np.uint8 and labels.tolist() == [0, 1]
    assert int(masks[0].sum()) == 40 and int(masks[1].sum()) == 15
    assert masks_to_boxes(masks).tolist() == [[2, 3, 10, 8], [0, 0, 5, 5]]
    assert polygon_instances([], 4, 5)[0].shape == (0, 4, 5)


def test_components_of_a_class_index_mask():
    m = np.zeros((8, 10), np.int64)
    m[1:3, 1:3] = 1            # class 0, component A (4 px)
    m[3, 3] = 1                # touches A by a corner: the same instance (8-connectivity)
    m[6:8, 7:10] = 1           # class 0, component B (6 px)
    m[0:2, 6:9] = 2            # class 1 (6 px)
    m[5, 0] = 255              # ignored
    masks, labels = mask_instances(m, num_classes=2)
    assert labels.tolist() == [0, 0, 1]
    assert [int(x.sum()) for x in masks] == [5, 6, 6]
    assert masks_to_boxes(masks).tolist() == [[1, 1, 4, 4], [7, 6, 10, 8], [6, 0, 9, 2]]


def _write_labelme(tmp_path, shapes, w=20, h=12):
    img_dir, ann_dir = tmp_path / "img", tmp_path / "ann"
    img_dir.mkdir(), ann_dir.mkdir()
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(img_dir / "a.png")
    (ann_dir / "a.json").write_text(json.dumps({
        "shapes": [{"label": lab, "points": pts, "shape_type": "polygon"} for lab, pts in shapes],
        "imagePath": "a.png", "imageHeight": h, "imageWidth": w}))
    return ann_dir, img_dir


def test_labelme_dataset_with_instances_one_per_shape_aligned_through_a_flip(tmp_path):
    ann, img = _write_labelme(tmp_path, [("pit", [[2, 3], [9, 3], [9, 7], [2, 7]]),
                                         ("pit", [[5, 5], [12, 5], [12, 9], [5, 9]])])   # overlapping
    ds = LabelMeDataset(str(ann), str(img), classes=["pit"], with_instances=True)
    s = ds[0]
    assert s["instance_masks"].shape == (2, 12, 20)          # overlap kept in both instances
    assert s["boxes"].tolist() == [[2, 3, 10, 8], [5, 5, 13, 10]] and s["labels"].tolist() == [0, 0]
    assert int(s["mask"].sum()) == int((s["instance_masks"].sum(0) > 0).sum())   # semantic = union
    flipped = LabelMeDataset(str(ann), str(img), classes=["pit"], with_instances=True,
                             pipeline=[{"type": "RandomFlip", "prob": 1.0}])[0]
    assert masks_to_boxes(flipped["instance_masks"].numpy()).tolist() == flipped["boxes"].tolist()
    assert flipped["boxes"].tolist() == [[10, 3, 18, 8], [7, 5, 15, 10]]
    plain = LabelMeDataset(str(ann), str(img), classes=["pit"])[0]
    assert "instance_masks" not in plain                      # the option is off by default


def test_a_crop_and_sanitize_drop_an_instance_mask_with_its_box(tmp_path):
    ann, img = _write_labelme(tmp_path, [("a", [[2, 3], [9, 3], [9, 7], [2, 7]]),
                                         ("b", [[14, 2], [18, 2], [18, 6], [14, 6]])])
    ds = LabelMeDataset(str(ann), str(img), classes=["a", "b"], with_instances=True,
                        pipeline=[{"type": "CenterCrop", "size": [8, 12]},      # x 6..13 kept
                                  {"type": "SanitizeBoundingBoxes"}])
    s = ds[0]
    assert s["labels"].tolist() == [0] and s["instance_masks"].shape == (1, 12, 8)
    assert s["boxes"].tolist() == [[0, 3, 4, 8]]
    assert masks_to_boxes(s["instance_masks"].numpy()).tolist() == s["boxes"].tolist()


# ------------------------------------------------------------------ the result
def _result(masks, scores, labels, boxes=None):
    masks = torch.as_tensor(np.asarray(masks)).bool()
    if boxes is None:
        boxes = torch.from_numpy(masks_to_boxes(masks.numpy()))
    return InstanceSegmentationResult(boxes=torch.as_tensor(boxes, dtype=torch.float32),
                                      scores=torch.tensor(scores, dtype=torch.float32),
                                      labels=torch.tensor(labels, dtype=torch.long), masks=masks)


def test_semantic_map_pastes_instances_above_threshold_higher_score_wins():
    a = np.zeros((4, 6), bool); a[0:3, 0:4] = True           # class 0, score 0.6
    b = np.zeros((4, 6), bool); b[1:4, 2:6] = True           # class 1, score 0.9: wins the overlap
    c = np.zeros((4, 6), bool); c[3, 0] = True                # class 1, score 0.3: below 0.5
    r = _result([a, b, c], [0.6, 0.9, 0.3], [0, 1, 1])
    expected = torch.tensor([[1, 1, 1, 1, 0, 0],
                             [1, 1, 2, 2, 2, 2],
                             [1, 1, 2, 2, 2, 2],
                             [0, 0, 2, 2, 2, 2]])
    assert torch.equal(r.semantic_map(0.5), expected)
    expected[3, 0] = 2
    assert torch.equal(r.semantic_map(0.0), expected)
    r2 = _result([a, b], [0.95, 0.9], [0, 1])                 # now a scores higher: a wins
    assert r2.semantic_map(0.5)[1, 2] == 1 and r2.semantic_map(0.5)[1, 4] == 2
    assert torch.equal(_result(np.zeros((0, 4, 6), bool), [], []).semantic_map(), torch.zeros(4, 6, dtype=torch.long))


def test_result_json_rle_rows_and_drawing():
    from pycocotools import mask as mask_utils

    a = np.zeros((10, 16), bool); a[2:5, 3:9] = True
    r = _result([a], [0.8], [0])
    js = json.loads(json.dumps(r.to_json()))
    rle = dict(js["masks"][0]); rle["counts"] = rle["counts"].encode()
    assert np.array_equal(mask_utils.decode(rle).astype(bool), a) and js["image_size"] == [10, 16]
    rows = r.table_rows("x.png", ["pit"])["instances"]
    assert rows == [{"file": "x.png", "class": "pit", "score": 0.8, "area": 18,
                     "xmin": 3.0, "ymin": 2.0, "xmax": 9.0, "ymax": 5.0, "counted": True}]
    pic = draw_result(np.zeros((10, 16, 3), np.uint8), r, ["pit"], gt=torch.from_numpy(a.astype(np.int64)))
    assert pic.mode == "RGB" and pic.width > 2 * 16         # image | GT | prediction panels


# ------------------------------------------------------------------ evaluation
def _mask_folder(tmp_path, n=3, h=24, w=32):
    """n images with class-index masks (classes a, b); image 0 is normal."""
    (tmp_path / "img").mkdir(), (tmp_path / "mask").mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{k}.png")
        m = np.zeros((h, w), np.uint8)
        if k:
            m[2:8, 3:10] = 1
            m[12:20, 15 + k:25 + k] = 2
            m[20:23, 2:5] = 1
        Image.fromarray(m).save(tmp_path / "mask" / f"{k}.png")
    return MaskFolderDataset(str(tmp_path / "img"), str(tmp_path / "mask"), classes=["a", "b"],
                             with_instances=True)


def _perfect(ds, k):
    rec = ds.records[k]
    h, w = Image.open(rec.img_path).size[::-1]
    masks, labels = ds.load_instances(rec, h, w)
    return _result(masks, [1.0] * len(labels), labels.tolist())


def test_perfect_prediction_segm_ap_is_one_and_semantic_metrics_match_segmentation_evaluator(tmp_path):
    ds = _mask_folder(tmp_path)
    batch = collate([ds[k] for k in range(len(ds))])
    results = [_perfect(ds, k) for k in range(len(ds))]
    ev = EVALUATORS.build({"type": "InstanceSegmentationEvaluator", "classes": ds.classes, "dataset": ds})
    ev.process(batch, results)
    m = ev.compute()
    assert m["segm_mAP"] == pytest.approx(1.0) and m["bbox_mAP"] == pytest.approx(1.0)
    assert m["num_gt_instances"] == 6 and m["mIoU"] == pytest.approx(1.0) and m["defect_IoU"] == pytest.approx(1.0)
    assert ev.main_metric == "mIoU" and ev.table_columns == SegmentationEvaluator.table_columns
    # a worse prediction: image 2 loses its class-b instance (components: a, a, b) -> the semantic numbers are the
    # SegmentationEvaluator's on the pasted maps, in both protocols
    results[2] = _result(results[2].masks[[0, 1]], [1.0, 1.0], results[2].labels[[0, 1]].tolist())
    for protocol in ("mmseg", "znet_repo"):
        ev = InstanceSegmentationEvaluator(classes=ds.classes, protocol=protocol, dataset=ds)
        ev.process(batch, results)
        m = ev.compute()
        sem = SegmentationEvaluator(classes=ds.classes, protocol=protocol, dataset=ds)
        from defectkit.structures import SegmentationResult
        sem.process(batch, [SegmentationResult(mask=r.semantic_map(0.5)) for r in results])
        ref = sem.compute()
        for k in ("mIoU", "defect_IoU", "znet_defect_IoU", "IoU.b"):
            assert m[k] == pytest.approx(ref[k])
        assert ev.main_metric == ("mIoU" if protocol == "mmseg" else "znet_defect_IoU")
        assert m["segm_AP50"] < 1.0 and m["IoU.b"] < 1.0 and m["IoU.a"] == pytest.approx(1.0)
        assert "segm" in ev.summary(m) or "COCO" in ev.summary(m)


# ------------------------------------------------------------------ the model
def _toy_batch(n=4, size=64, seed=0):
    """Normalised noise images with bright squares; instances = the squares."""
    g = torch.Generator().manual_seed(seed)
    imgs, boxes, labels, masks, metas = [], [], [], [], []
    for i in range(n):
        img = torch.randn(3, size, size, generator=g) * 0.2
        m = torch.zeros(0, size, size, dtype=torch.uint8)
        b = []
        for _ in range(1 + i % 2):
            x, y = (torch.randint(4, size - 20, (2,), generator=g)).tolist()
            s = int(torch.randint(8, 16, (1,), generator=g))
            img[:, y:y + s, x:x + s] += 2.0
            mk = torch.zeros(1, size, size, dtype=torch.uint8)
            mk[0, y:y + s, x:x + s] = 1
            m = torch.cat([m, mk])
            b.append([x, y, x + s, y + s])
        imgs.append(img)
        boxes.append(torch.tensor(b, dtype=torch.float32))
        labels.append(torch.zeros(len(b), dtype=torch.long))
        masks.append(m)
        metas.append({"orig_size": (size, size), "scale_factor": (1.0, 1.0), "id": i, "path": f"{i}.png"})
    return {"image": torch.stack(imgs), "boxes": boxes, "labels": labels, "instance_masks": masks,
            "meta": metas, "image_sizes": [(size, size)] * n, "is_defective": torch.ones(n, dtype=torch.long)}


@pytest.fixture
def one_thread():
    """One intra-op thread: these tiny ops only lose to thread hand-offs (25 steps take
    ~3 s with one thread, ~15 s with two on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_mask_rcnn_loss_falls_on_a_tiny_set(one_thread):
    # 25 Adam steps on 4 images of 64x64
    torch.manual_seed(0)
    model = _tiny_model()
    batch = _toy_batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = None
    for step in range(25):
        losses = {k: v for k, v in model(batch).items()}
        assert set(losses) >= {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"}
        total = sum(v for k, v in losses.items() if k.startswith("loss"))
        first = {k: float(v.detach()) for k, v in losses.items()} if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    with torch.no_grad():
        last = {k: float(v) for k, v in model(batch).items()}
    assert last["loss_mask"] < 0.6 * first["loss_mask"]
    assert sum(v for k, v in last.items() if k.startswith("loss")) < \
        0.6 * sum(v for k, v in first.items() if k.startswith("loss"))
    model.eval()
    res = model.predict(batch)
    assert all(isinstance(r, InstanceSegmentationResult) and r.masks.shape[-2:] == (64, 64) for r in res)


def test_masks_come_back_in_original_pixels_and_gate_skips_the_heads(one_thread):
    torch.manual_seed(0)
    model = _tiny_model(score_thr=0.0).eval()
    batch = _toy_batch(n=2)
    for m in batch["meta"]:                         # the input is a 2x resize of 32x32 originals
        m.update(orig_size=(32, 32), scale_factor=(2.0, 2.0))
    res = model.predict(batch)
    assert all(r.masks.shape[-2:] == (32, 32) and r.masks.dtype == torch.bool for r in res)
    assert len(res[0]) > 0 and float(res[0].boxes.max()) <= 32.0
    gated = _tiny_model(gate={"threshold": 1.0}).eval()   # P(defective) > 1 never: all gated
    out = gated.predict(batch)
    assert all(r.gated and len(r) == 0 and r.masks.shape == (0, 32, 32) for r in out)
    assert gated.gate_stats()["passed"] == 0
    gated.train()
    losses = gated(batch)
    assert "loss_gate" in losses and "loss_mask" in losses


def test_the_tiny_config_builds_its_model_and_evaluator():
    from defectkit.config import load_config

    cfg = load_config("configs/znet/maskrcnn_tiny_ballscrew.yaml")
    model = MODELS.build({**cfg["model"], "classes": ["pitting"]})
    assert type(model).__name__ == "MaskRCNN" and sum(p.numel() for p in model.parameters()) < 2_000_000
    assert cfg["data"]["train"]["with_instances"] and cfg["data"]["test"]["with_instances"]
    ev = EVALUATORS.build({**cfg["evaluation"], "classes": ["pitting"]})
    assert ev.table_columns == SegmentationEvaluator.table_columns and not math.isnan(ev.score_thr)
    # sized to the pits: RPN positives from IoU 0.5, normal images kept as negatives
    assert (model.rpn.proposal_matcher.high_threshold, model.rpn.proposal_matcher.low_threshold) == (0.5, 0.3)
    assert model.normal_negatives


def test_rpn_iou_defaults_to_mmdet_and_rejects_an_inverted_pair():
    m = _tiny_model()
    assert (m.rpn.proposal_matcher.high_threshold, m.rpn.proposal_matcher.low_threshold) == (0.7, 0.3)
    with pytest.raises(ValueError, match="rpn_iou"):
        _tiny_model(rpn_iou=[0.3, 0.5])


def test_the_texture_labelme_configs_share_data_and_schedule():
    from defectkit.config import load_config

    cfgs = {n: load_config(f"configs/znet/{n}_tiny_texture_labelme.yaml", validate=False)
            for n in ("znet", "unet", "maskrcnn")}
    for key in ("ann_dir", "img_dir", "classes", "split_file", "unlabeled"):
        assert len({str(c["data"][s][key]) for c in cfgs.values() for s in ("train",)}) == 1
        assert len({str(c["data"]["test"][key]) for c in cfgs.values()}) == 1
    assert len({(c["train"]["epochs"], c["data"]["batch_size"], c["optimizer"]["lr"]) for c in cfgs.values()}) == 1
    assert cfgs["maskrcnn"]["data"]["train"]["with_instances"] and cfgs["maskrcnn"]["data"]["test"]["with_instances"]


# ------------------------------------------------------------------ field inputs (regressions)
def test_the_evaluators_score_thr_is_the_one_written_and_drawn(tmp_path):
    # evaluation.score_thr 0.3 (the tiny configs' choice): an instance scored 0.4 is a defect
    # in the metrics, so it must also be in the mask PNG, the JSON and the drawing that
    # tools/infer.py / tools/test.py write (they used a fixed 0.5: an empty mask file)
    a = np.zeros((10, 16), bool); a[2:5, 3:9] = True
    r = _result([a], [0.4], [0])
    ev = InstanceSegmentationEvaluator(classes=["pit"], score_thr=0.3, resolution="input")
    fields = ev.export_fields(r)                                   # what tools/infer.py calls
    assert fields["score_thr"] == 0.3 and r.to_json()["score_thr"] == 0.3
    assert int((r.semantic_map() > 0).sum()) == 18
    (path,) = r.write_files(tmp_path, "x")
    assert int((np.asarray(Image.open(path)) == 1).sum()) == 18
    pic = np.asarray(draw_result(np.zeros((10, 16, 3), np.uint8), r, ["pit"]))
    assert pic[-10:][3, 5].any()                                   # the instance is painted
    r2 = _result([a], [0.4], [0])
    batch = {"mask": torch.from_numpy(a.astype(np.int64))[None], "meta": [{"id": 0, "path": "x.png"}]}
    ev.process(batch, [r2])                                         # tools/test.py: process, then draw
    assert r2.score_thr == 0.3 and np.asarray(ev.records[0]["cm"])[1, 1] == 18


def test_a_labelme_circle_drawn_at_the_border_is_clipped_not_rejected(tmp_path):
    # LabelMe keeps a circle's two clicks (centre, rim point) in the image, but the circle
    # itself may cross the border: it was rejected as a "box outside the image" (both
    # points inside), or with skip_invalid silently dropped (its pixels background)
    ann, img = _write_labelme(tmp_path, [])
    js = ann / "a.json"
    d = json.loads(js.read_text())
    d["shapes"] = [{"label": "pit", "points": [[3, 6], [3, 1]], "shape_type": "circle"}]   # r 5 at x 3
    js.write_text(json.dumps(d))
    s = LabelMeDataset(str(ann), str(img), classes=["pit"], with_instances=True)[0]
    m = s["instance_masks"].numpy()
    assert m.shape == (1, 12, 20) and s["boxes"].tolist() == [[0, 1, 9, 12]]
    assert np.array_equal(m[0].astype(bool), s["mask"].numpy() > 0)
    yy, xx = np.mgrid[:12, :20]
    disc = (xx - 3) ** 2 + (yy - 6) ** 2 <= 25                     # the clipped disc, edge +-1 px
    assert abs(int(m[0].sum()) - int(disc.sum())) <= 12 and m[0, 6, 0] and not m[0, 6, 9]
    assert m[0, 1:12, 0].sum() < 11                                 # no straight wall along x = 0
    d["shapes"][0]["points"] = [[3, 6], [30, 6]]                     # a click outside: still an error
    js.write_text(json.dumps(d))
    with pytest.raises(Exception, match=r"a\.json: shapes\[0\]\.points.*outside"):
        LabelMeDataset(str(ann), str(img), classes=["pit"], with_instances=True)


def test_two_labelme_files_on_one_image_are_an_error_naming_both(tmp_path):
    # b.json copied from a.json with its imagePath left at a.png: a.png got both files'
    # shapes as two records (the evaluators' ground truth of one of them silently the
    # other's) and b.png, with unlabeled: normal, a clean image
    ann, img = _write_labelme(tmp_path, [("pit", [[2, 3], [9, 3], [9, 7]])])
    Image.open(img / "a.png").save(img / "b.png")
    (ann / "b.json").write_text((ann / "a.json").read_text())
    with pytest.raises(Exception, match=r"b\.json: imagePath: .*a\.png is also annotated by .*a\.json"):
        LabelMeDataset(str(ann), str(img), classes=["pit"], with_instances=True, unlabeled="normal")
    ds = LabelMeDataset(str(ann), str(img), classes=["pit"], skip_invalid=True)
    assert [r.id for r in ds.records] == ["a"]


def test_a_one_pixel_wide_labelme_polygon_is_a_line_not_a_degenerate_box(tmp_path):
    # make_synth's sensor preset writes a dead column as [[5, 0], [5, 0], [5, 11], [5, 11]]
    # (its COCO bbox [5, 0, 1, 12]); the reader rejected its own generator's file
    ann, img = _write_labelme(tmp_path, [("pit", [[5, 0], [5, 0], [5, 11], [5, 11]]),
                                         ("pit", [[9, 4], [15, 4], [15, 4]])])         # a row
    ds = LabelMeDataset(str(ann), str(img), classes=["pit"], with_instances=True)
    assert ds.records[0].boxes.tolist() == [[5, 0, 6, 11], [9, 4, 15, 5]]
    s = ds[0]
    assert s["boxes"].tolist() == [[5, 0, 6, 12], [9, 4, 16, 5]]
    assert [int(m.sum()) for m in s["instance_masks"]] == [12, 7] and int((s["mask"] > 0).sum()) == 19
    (tmp_path / "dot").mkdir()
    ann2, img2 = _write_labelme(tmp_path / "dot", [("pit", [[5, 5], [5, 5], [5, 5]])])   # a stray click
    with pytest.raises(Exception, match=r"a\.json: shapes\[0\]\.points: degenerate box"):
        LabelMeDataset(str(ann2), str(img2), classes=["pit"])


def test_labelme_shapes_sharing_a_group_id_are_one_instance(tmp_path):
    # LabelMe's instance grouping (labelme2coco: one instance per (label, group_id)): a crack
    # annotated as two polygons with group_id 1 is ONE gt instance, not two (COCO AP
    # counted a half as a missed instance); group_id null: one instance per shape
    ann, img = _write_labelme(tmp_path, [])
    js = ann / "a.json"
    d = json.loads(js.read_text())
    sq = lambda x, y: [[x, y], [x + 2, y], [x + 2, y + 2], [x, y + 2]]
    d["shapes"] = [{"label": "pit", "points": sq(1, 1), "shape_type": "polygon", "group_id": 1},
                   {"label": "pit", "points": sq(10, 6), "shape_type": "polygon", "group_id": None},
                   {"label": "pit", "points": sq(6, 6), "shape_type": "polygon", "group_id": 1},
                   {"label": "dent", "points": sq(15, 1), "shape_type": "polygon", "group_id": 1}]
    js.write_text(json.dumps(d))
    ds = LabelMeDataset(str(ann), str(img), classes=["pit", "dent"], with_instances=True)
    s = ds[0]
    assert s["labels"].tolist() == [0, 0, 1]
    assert [int(m.sum()) for m in s["instance_masks"]] == [18, 9, 9]
    assert s["boxes"].tolist() == [[1, 1, 9, 9], [10, 6, 13, 9], [15, 1, 18, 4]]
    flipped = LabelMeDataset(str(ann), str(img), classes=["pit", "dent"], with_instances=True,
                             pipeline=[{"type": "RandomFlip", "prob": 1.0}])[0]
    assert [int(m.sum()) for m in flipped["instance_masks"]] == [18, 9, 9]


def test_instances_csv_rows_say_which_instances_the_overlay_and_metrics_count():
    # infer.py's instances.csv lists every instance down to model.score_thr (0.05): without a
    # flag, its row count disagreed with the overlay's "N instances (score >= thr)"
    a = np.zeros((10, 16), bool); a[2:5, 3:9] = True
    r = _result([a, a], [0.5, 0.2], [0, 0])
    r.score_thr = 0.3
    rows = r.table_rows("x.png", ["pit"])["instances"]
    assert [row["counted"] for row in rows] == [True, False]


def test_a_0_255_mask_png_error_says_what_255_is(tmp_path):
    # the commonest field mask (0 / 255, or 255 painted as "ignore"): the error named only
    # the range; it now says that 255 is neither read as ignore nor as class 1
    (tmp_path / "img").mkdir(), (tmp_path / "mask").mkdir()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    m = np.zeros((6, 8), np.uint8); m[1:3, 1:3] = 255
    Image.fromarray(m).save(tmp_path / "mask" / "a.png")
    with pytest.raises(Exception, match=r"a\.png: mask value 255 is outside 0\.\.1 .*255.*ignore.*0/1"):
        MaskFolderDataset(str(tmp_path / "img"), str(tmp_path / "mask"), classes=["pit"], with_instances=True)
