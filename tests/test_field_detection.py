"""Field inputs for the plain detectors (issue 10): normal images as RPN / RoI negatives."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import defectkit  # noqa: F401  (registers everything)
from defectkit.config import load_config
from defectkit.engine.builders import build_model
from defectkit.models.detection import CascadeRCNN, FasterRCNN

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(backbone="small_cnn", num_classes=2, frozen_stages=-1, norm_eval=False, fpn_channels=32,
            fc_dim=64, rois_per_img=64, anchor_sizes=(8, 16, 32, 64, 128), rpn_train_topn=200,
            rpn_test_topn=100)


def batch(n=3, normal=(0, 1, 2), size=64):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(n, 3, size, size, generator=g) * 0.1
    boxes, labels = [], []
    for i in range(n):
        if i in normal:
            boxes.append(torch.zeros(0, 4))
            labels.append(torch.zeros(0, dtype=torch.long))
        else:
            imgs[i, :, 10:34, 10:34] += 2.0
            boxes.append(torch.tensor([[10.0, 10.0, 34.0, 34.0]]))
            labels.append(torch.tensor([1]))
    return {"image": imgs, "image_sizes": [(size, size)] * n, "boxes": boxes, "labels": labels,
            "is_defective": torch.tensor([0 if i in normal else 1 for i in range(n)])}


def roi_cls_key(model):
    return "loss_cls_s0" if isinstance(model, CascadeRCNN) else "loss_cls"


@pytest.mark.parametrize("cls", [CascadeRCNN, FasterRCNN])
def test_normal_negatives_give_rpn_and_roi_losses_on_normal_images(cls):
    torch.manual_seed(0)
    model = cls(**TINY, normal_negatives=True).train()
    losses = model(batch())
    assert losses["loss_rpn_cls"].item() > 0.1          # objectness of random init on all-bg anchors ~0.69
    assert losses[roi_cls_key(model)].item() > 0.1       # RoI classification against background
    assert losses["loss_rpn_bbox"].item() == 0.0         # nothing to regress on a normal image
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert model.rpn.head.cls_logits.weight.grad.abs().sum() > 0
    head = model.stages[0] if isinstance(model, CascadeRCNN) else model.roi_head
    assert head.cls_score.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())


@pytest.mark.parametrize("cls", [CascadeRCNN, FasterRCNN])
def test_without_normal_negatives_normal_images_give_zero_detection_losses(cls):
    torch.manual_seed(0)
    model = cls(**TINY).train()
    assert model.normal_negatives is False                # the default, as the original DefectNet
    losses = model(batch())
    assert all(v.item() == 0.0 for k, v in losses.items() if k.startswith("loss"))


def test_normal_negatives_learn_to_suppress_objectness_on_normal_images():
    """A few steps on normal images only: the RPN's objectness on them falls (they are negatives)."""
    torch.manual_seed(0)
    model = FasterRCNN(**TINY, normal_negatives=True).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    first = last = None
    for _ in range(8):
        losses = model(batch())
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = losses["loss_rpn_cls"].item() if first is None else first
        last = losses["loss_rpn_cls"].item()
    assert last < 0.5 * first


def test_normal_negatives_mixed_batch_keeps_every_image_in_the_detection_branch():
    seen = []
    model = CascadeRCNN(**TINY, normal_negatives=True).train()
    model.fpn.register_forward_hook(lambda m, a, o: seen.append(next(iter(a[0].values())).shape[0]))
    model(batch(n=4, normal=(1, 3)))
    assert seen == [4]
    seen.clear()
    off = CascadeRCNN(**TINY).train()
    off.fpn.register_forward_hook(lambda m, a, o: seen.append(next(iter(a[0].values())).shape[0]))
    off(batch(n=4, normal=(1, 3)))
    assert seen == [2]


def test_gate_normal_negatives_is_the_same_switch():
    assert CascadeRCNN(**TINY, gate={"normal_negatives": True}).normal_negatives is True
    assert CascadeRCNN(**TINY, gate={"schedule": "inverse"}).normal_negatives is False


def test_normal_negatives_is_a_config_key_of_the_plain_detector_and_off_in_faithful_configs():
    cfg = load_config(ROOT / "configs/defectnet/one_model_cascade_tiny_synth.yaml",
                      ["model.normal_negatives=true", "model.pretrained=null"])
    assert build_model(cfg["model"], ["a", "b"]).normal_negatives is True
    for name in ("one_model_cascade_r50_fpn_1x_fabric.yaml", "defectnet_const_cascade_r50_fpn_1x_fabric.yaml",
                 "defectnet_inverse_cascade_r50_fpn_1x_bottle.yaml", "one_model_faster_r50_fpn_1x_bottle.yaml"):
        model_cfg = load_config(ROOT / "configs/defectnet" / name)["model"]
        assert not model_cfg.get("normal_negatives", False), name
        assert not (model_cfg.get("gate") or {}).get("normal_negatives", False), name


# ------------------------------------------------------------ the demo's interleaved ATT
def _load(path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Recorder(torch.nn.Module):
    def __init__(self, name, log):
        super().__init__()
        self.name, self.log = name, log

    def predict(self, batch):
        self.log.append(self.name)
        return []


def test_interleaved_att_rotates_the_call_order_and_times_every_image():
    bench = _load("benchmarks/detector_att_interleaved.py", "detector_att_interleaved")
    log = []
    models = {"a": _Recorder("a", log), "b": _Recorder("b", log)}
    loader = [{"image": torch.zeros(1, 3, 8, 8), "is_defective": torch.tensor([i % 2])} for i in range(3)]
    times = bench.interleaved_att(models, loader, torch.device("cpu"), repeats=2, warmup=1)
    assert log[:2] == ["a", "b"]                           # one warm-up call each, not timed
    assert log[2:] == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a"]
    for name in models:
        assert len(times[name]) == 6 and all(t >= 0 for t, _ in times[name])
        assert [d for _, d in times[name]] == [0, 1, 0, 0, 1, 0]


def test_demo_row_sentence_has_its_numbers_or_only_its_words():
    demo = _load("tools/demo.py", "demo_tool")
    assert demo.describe("finds defects (AP50 {AP50:.2f})", {"AP50": 0.4567}) == "finds defects (AP50 0.46)"
    assert demo.describe("finds defects (AP50 {AP50:.2f})", {}) == "finds defects"
    for _, config, _, says in demo.RUNS:
        assert (ROOT / config).is_file() and says


def test_demo_redoes_the_rows_that_start_from_a_remade_row(monkeypatch):
    """The detector rows load the classifier's checkpoint: when the classifier is (re)made they
    are retrained from scratch, even if a finished run of theirs would be reused; when it is
    reused, so are they. Defect-Gen's row is redone when one of its parts is."""
    demo = _load("tools/demo.py", "demo_tool")
    monkeypatch.setattr(demo, "loads_own_weights", lambda c: c == demo.DEFECTGEN)

    def planner(remade):
        def plan(config, fresh, train=True, test=True):
            return (config, fresh) if fresh or config in remade else None
        return plan

    monkeypatch.setattr(demo, "plan", planner({demo.CLASSIFIER}))
    assert demo.plan_jobs(demo.RUNS, fresh=False) == [
        (demo.CLASSIFIER, False), (demo.ONE_MODEL, True), (demo.DEFECTNET, True)]
    monkeypatch.setattr(demo, "plan", planner({demo.SEVERITY}))
    assert demo.plan_jobs(demo.RUNS, fresh=False) == [(demo.SEVERITY, False)]
    part = demo.TRAIN_FIRST[demo.DEFECTGEN][1]
    monkeypatch.setattr(demo, "plan", planner({part}))
    assert demo.plan_jobs(demo.RUNS, fresh=False) == [(part, False), (demo.DEFECTGEN, True)]


def test_demo_pool_takes_the_first_listed_run_whose_inputs_are_trained():
    demo = _load("tools/demo.py", "demo_tool")
    # the jobs main() plans, in table order: each row, its TRAIN_FIRST parts just before it
    todo = [(c, None, None, []) for _, config, _, _ in demo.RUNS
            for c in (*demo.TRAIN_FIRST.get(config, []), config)]
    assert set(demo.FIRST_FREE_SLOT) == {job[0] for job in todo}
    planned = {job[0] for job in todo}
    order, trained, waiting = [], set(), list(todo)
    while waiting:                      # one slot: the order in which runs become ready
        job = demo.next_job(waiting, trained, planned)
        waiting.remove(job)
        trained.add(job[0])
        order.append(job[0])
    # the classifier first: the two detector rows start from its backbone
    assert order[:3] == [demo.CLASSIFIER, demo.ONE_MODEL, demo.DEFECTNET]
    # Defect-Gen's sampling row after its three parts
    assert all(order.index(c) < order.index(demo.DEFECTGEN) for c in demo.TRAIN_FIRST[demo.DEFECTGEN])
    # nothing trained yet: the detectors wait, the next free slot takes Severity
    rest = [j for j in todo if j[0] != demo.CLASSIFIER]
    assert demo.next_job(rest, set(), planned)[0] == demo.SEVERITY
    # an input that is not planned (a finished run reused) does not hold a row back
    only = [(demo.ONE_MODEL, None, None, [])]
    assert demo.next_job(only, set(), {demo.ONE_MODEL})[0] == demo.ONE_MODEL
    # every Defect-Gen part planned but one untrained: the sampling row is not ready
    parts = demo.TRAIN_FIRST[demo.DEFECTGEN]
    assert demo.next_job([(demo.DEFECTGEN, None, None, [])], set(parts[:2]), {*parts, demo.DEFECTGEN}) is None
    for c in parts:
        assert (ROOT / c).is_file()


def _pool_job(tmp_path, name, events, rc=0, sleep=0.0):
    code = (f"import os, time; open({str(events)!r}, 'a').write('start {name} ' + os.environ['OMP_NUM_THREADS'] "
            f"+ '\\n'); time.sleep({sleep}); open({str(events)!r}, 'a').write('end {name}\\n'); raise SystemExit({rc})")
    return name, tmp_path / "work_dirs" / name, "stamp", [[sys.executable, "-c", code]]


def test_demo_pool_waits_for_inputs_and_stops_starting_runs_after_a_failure(tmp_path, monkeypatch):
    demo = _load("tools/demo.py", "demo_tool")
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    monkeypatch.setattr(demo, "STARTS_FROM", {"b": "a"})
    monkeypatch.setattr(demo, "TRAIN_FIRST", {})
    monkeypatch.setattr(demo, "FIRST_FREE_SLOT", ["a", "b", "c"])
    events = tmp_path / "events.txt"
    jobs = [_pool_job(tmp_path, "a", events, sleep=0.5), _pool_job(tmp_path, "b", events),
            _pool_job(tmp_path, "c", events)]
    demo.run_pool(jobs, slots=2)
    lines = events.read_text().split("\n")
    # a and c start together, one thread each; b starts from a's weights: after a ends
    assert {"start a 1", "start c 1"} <= set(lines)
    assert min(k for k, line in enumerate(lines) if line.startswith("start b")) > lines.index("end a")
    for name in "abc":
        assert json.loads((tmp_path / "work_dirs" / name / "demo_time.json").read_text())["config_hash"] == "stamp"
        assert (tmp_path / "work_dirs" / name / "demo.log").read_text().startswith("$ ")
    # a chain a -> b: each run has nothing beside it and gets both threads
    events.unlink()
    demo.run_pool([_pool_job(tmp_path, "a", events), _pool_job(tmp_path, "b", events)], slots=2)
    assert events.read_text().split("\n")[::2] == ["start a 2", "start b 2", ""]
    # a fails: b (which needs it) never starts, c (already running beside it) finishes
    events.unlink()
    jobs = [_pool_job(tmp_path, "a", events, rc=3, sleep=0.3), _pool_job(tmp_path, "b", events),
            _pool_job(tmp_path, "c", events)]
    with pytest.raises(SystemExit, match=r"exit 3: .*full log: .*work_dirs/a/demo.log.*not started: b"):
        demo.run_pool(jobs, slots=2)
    assert "start b" not in events.read_text() and "end c" in events.read_text()


def test_demo_pool_reports_a_command_that_cannot_start_and_inputs_never_made(tmp_path, monkeypatch):
    demo = _load("tools/demo.py", "demo_tool")
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    monkeypatch.setattr(demo, "TRAIN_FIRST", {})
    events = tmp_path / "events.txt"
    # a command that cannot start is a failure like an exit status; the run beside it is still reported
    missing = ("a", tmp_path / "work_dirs" / "a", "stamp", [[str(tmp_path / "no-such-program")]])
    with pytest.raises(SystemExit, match=r"FileNotFoundError: .*no-such-program.*exit 4: "):
        demo.run_pool([missing, _pool_job(tmp_path, "c", events, rc=4, sleep=0.3)], slots=2)
    # runs that load each other (a cycle): an error naming them, not a hang
    monkeypatch.setattr(demo, "STARTS_FROM", {"a": "b", "b": "a"})
    with pytest.raises(SystemExit, match=r"wait for inputs that no run makes: a \(needs b\), b \(needs a\)"):
        demo.run_pool([_pool_job(tmp_path, "a", events), _pool_job(tmp_path, "b", events)], slots=2)
