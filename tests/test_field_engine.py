"""Issue 10, item 7 (engine drills): the work-dir lock, checkpoints never written with
NaN/Inf tensors, --load-from that matches too little, a checkpoint of another model type,
any unreadable file as a checkpoint, temp files of killed saves and a lagging
``last_checkpoint``, one-line user errors (exit 2) in the tools with ``--debug``."""
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from helpers_toy import toy_config
from helpers_tools import ROOT, TOOLS, tool

from defectkit.config import load_config
from defectkit.engine import Trainer, init_model, load_checkpoint
from defectkit.engine import checkpoint as C
from defectkit.engine.workdir import LOCK_NAME, WorkDirLockedError
from defectkit.registry import MODELS
from defectkit.structures import ClassificationResult


class _BNToy(nn.Module):
    """conv -> BatchNorm -> pool -> linear; at training call ``inf_at_call`` the BN running
    variance overflows to +inf while the (batch-statistics) loss stays finite."""

    def __init__(self, num_classes: int = 2, inf_at_call: int | None = None):
        super().__init__()
        self.stem, self.bn, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, num_classes)
        self.inf_at_call, self.calls = inf_at_call, 0

    def logits(self, batch):
        return self.head(F.relu(self.bn(self.stem(batch["image"]))).amax(dim=(2, 3)))

    def forward(self, batch):
        self.calls += 1
        if self.calls == self.inf_at_call:    # (train mode normalises with batch statistics)
            with torch.no_grad():
                self.bn.running_var.fill_(float("inf"))
        return {"loss_cls": F.cross_entropy(self.logits(batch), batch["label"])}

    @torch.no_grad()
    def predict(self, batch):
        return [ClassificationResult(label=int(p.argmax()), scores=p) for p in self.logits(batch).softmax(1)]


if "_BNToy" not in MODELS:
    MODELS.register(obj=_BNToy)


def _train(cfg, work_dir, **kw):
    t = Trainer(cfg, work_dir=work_dir, **kw)
    try:
        return t, t.train()
    finally:
        t.close()


def _tool(name, *args, env=None, cwd=ROOT):
    e = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1")
    e.pop("DEFECTKIT_DEBUG", None)
    e.update(env or {})
    return subprocess.run([sys.executable, str(TOOLS / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=e, timeout=300)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- lock
def test_second_run_into_same_work_dir_is_refused(tmp_path):
    cfg = toy_config(train={"epochs": 1}, evaluation=None)
    first = Trainer(cfg, work_dir=tmp_path)
    try:
        lock = (tmp_path / LOCK_NAME).read_text()
        assert str(os.getpid()) in lock and socket.gethostname() in lock
        with pytest.raises(WorkDirLockedError, match=rf"in use by .*{LOCK_NAME}"):
            Trainer(cfg, work_dir=tmp_path)
        first.train()
    finally:
        first.close()
    assert not (tmp_path / LOCK_NAME).exists()           # released at close
    with pytest.raises(C.CheckpointError):               # a failing start releases it too
        Trainer(cfg, work_dir=tmp_path, load_from=tmp_path / "config.yaml")
    assert not (tmp_path / LOCK_NAME).exists()

    # another live process holds it: the tool stops at once, one line naming PID and host, exit 2
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / LOCK_NAME).write_text(f'{{"pid": {holder.pid}, "host": "{socket.gethostname()}", '
                                          f'"started": "then"}}')
        cfg_file = tmp_path / "toy.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg))
        proc = _tool("train", cfg_file, "--work-dir", tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("work dir error: "), proc.stderr
    assert f"PID {holder.pid} on host {socket.gethostname()}" in lines[0]
    assert (tmp_path / LOCK_NAME).exists()               # someone else's lock is left alone


def test_stale_lock_is_taken_over(tmp_path):
    dead = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(f'{{"pid": {dead}, "host": "{socket.gethostname()}"}}')
    with pytest.warns(RuntimeWarning, match=rf"stale lock .*PID {dead} on this host is not running"):
        t, r = _train(toy_config(train={"epochs": 1}, evaluation=None), tmp_path)
    assert r.iter == 4 and (tmp_path / "epoch_1.pth").is_file()
    assert "stale lock" in (tmp_path / "train.log").read_text()
    assert not (tmp_path / LOCK_NAME).exists()


# ----------------------------------------------------------------------------- non-finite
def test_inf_batchnorm_statistics_are_never_saved(tmp_path):
    cfg = toy_config(model={"type": "_BNToy", "inf_at_call": 6}, train={"epochs": 3}, evaluation=None)
    cfg["model"].pop("hidden")
    t = Trainer(cfg, work_dir=tmp_path)
    try:
        with pytest.raises(C.NonFiniteCheckpointError) as info:
            t.train()
    finally:
        t.close()
    msg = str(info.value)
    assert "epoch_2.pth: not saved" in msg and "bn.running_var (inf)" in msg
    assert f"last finite checkpoint: {tmp_path / 'epoch_1.pth'}" in msg
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["epoch_1.pth", "latest.pth"]
    assert not list(tmp_path.glob(".*tmp*"))
    good = load_checkpoint(tmp_path / "latest.pth")
    assert good["meta"]["epoch"] == 1 and not C.nonfinite_tensors(good["state_dict"])

    # the shared writer refuses too (nothing written) ...
    bad = dict(good, state_dict=dict(good["state_dict"], **{"bn.running_var": torch.full((4,), float("inf"))}))
    with pytest.raises(C.NonFiniteCheckpointError, match=r"x.pth: not written: 1 tensors hold NaN/Inf: bn.running_var"):
        C.save_checkpoint(bad, tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()
    # ... and loading such a file (written by an older version) for inference warns
    torch.save(bad, tmp_path / "old.pth")
    with pytest.warns(RuntimeWarning, match=r"old.pth: 1 of \d+ tensors hold NaN/Inf: bn.running_var \(inf\)"):
        init_model(cfg, tmp_path / "old.pth", "cpu")
    # a run resumed from it says so and never names it as the last finite checkpoint
    t = Trainer(cfg, work_dir=tmp_path / "r", resume=tmp_path / "old.pth")
    t.close()
    assert t.iter == 4 and t.last_checkpoint is None
    assert "bn.running_var (inf): training will not recover" in (tmp_path / "r" / "train.log").read_text()


# ----------------------------------------------------------------------------- load_from / model type
def test_load_from_that_matches_too_little_is_an_error(tmp_path):
    src, _ = _train(toy_config(train={"epochs": 1}, evaluation=None), tmp_path / "src")
    ckpt = tmp_path / "src" / "latest.pth"
    bn_cfg = toy_config(model={"type": "_BNToy"}, train={"epochs": 1}, evaluation=None)
    bn_cfg["model"].pop("hidden")
    with pytest.raises(C.CheckpointError) as info:       # another type: nothing has the right shape
        Trainer(bn_cfg, work_dir=tmp_path / "a", load_from=ckpt)
    msg = str(info.value)
    assert "load_from matched 0 of the model's 9 tensors" in msg
    assert "checkpoint model type '_ToyClassifier', config model.type '_BNToy'" in msg

    three = toy_config(model={"num_classes": 3}, train={"epochs": 1, "load_from_min_match": 0.75},
                       evaluation=None)                  # new head: conv matches, fc does not
    with pytest.raises(C.CheckpointError, match=r"matched 2 of the model's 4 tensors \(50%; "
                                                r"train.load_from_min_match is 0.75\)"):
        Trainer(three, work_dir=tmp_path / "b", load_from=ckpt)
    three["train"]["load_from_min_match"] = 0.5
    t = Trainer(three, work_dir=tmp_path / "c", load_from=ckpt)
    t.close()
    assert (t.load_report.matched, t.load_report.total) == (2, 4)
    assert torch.equal(t.model.conv.weight, src.model.conv.weight)


def test_checkpoint_of_another_model_type_is_named(tmp_path):
    _train(toy_config(train={"epochs": 1}, evaluation=None), tmp_path / "src")
    ckpt = tmp_path / "src" / "latest.pth"
    bn_cfg = toy_config(model={"type": "_BNToy"}, evaluation=None)
    bn_cfg["model"].pop("hidden")
    want = r"latest.pth: a checkpoint of model type '_ToyClassifier', but the config's model.type is '_BNToy'"
    with pytest.raises(C.CheckpointError, match=want + ": --resume needs"):
        Trainer(bn_cfg, work_dir=tmp_path / "r", resume=ckpt)
    with pytest.raises(C.CheckpointError, match=want):
        init_model(bn_cfg, ckpt, "cpu")
    # the drill: a classifier checkpoint given to a ZNet config; the type is named before the
    # model is built (no complaint about the config's class_weights)
    meta = C.make_meta({"model": {"type": "Classifier"}}, 1, 4, 0, ["normal", "defective"])
    C.save_checkpoint({"meta": meta, "state_dict": {"fc.weight": torch.zeros(2, 4)}}, tmp_path / "cls.pth")
    with pytest.raises(C.CheckpointError, match="model type 'Classifier', but the config's model.type is 'ZNet'"):
        init_model(load_config(ROOT / "configs/znet/znet_ballscrew.yaml"), tmp_path / "cls.pth", "cpu")


def test_any_unreadable_file_is_a_checkpoint_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("epoch 3 looked good\n")                 # torch.load: an IndexError (KeyError for others)
    with pytest.raises(C.CheckpointError, match=r"notes.txt: corrupt, truncated or not a PyTorch checkpoint \(\w+Error"):
        C.load_checkpoint(text)
    torch.save([torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(C.CheckpointError, match=r"list.pth: not a checkpoint: holds a list"):
        C.load_checkpoint(tmp_path / "list.pth")
    for kw in ({"resume": text}, {"load_from": text}):
        with pytest.raises(C.CheckpointError, match="notes.txt"):
            Trainer(toy_config(), work_dir=tmp_path / "w", **kw)


# ----------------------------------------------------------------------------- killed saves
def test_stale_temp_files_removed_and_latest_pointer_consistent(tmp_path):
    cfg = toy_config(train={"epochs": 2}, evaluation=None)
    _train(cfg, tmp_path)
    e1, e2 = load_checkpoint(tmp_path / "epoch_1.pth"), load_checkpoint(tmp_path / "epoch_2.pth")
    junk = tmp_path / ".epoch_3.pth.tmp-4242"
    junk.write_bytes(b"x" * 1000)
    # killed between the two pointer updates: last_checkpoint names epoch_2, latest.pth is epoch_1
    os.unlink(tmp_path / "latest.pth")
    os.link(tmp_path / "epoch_1.pth", tmp_path / "latest.pth")
    assert C.find_latest_checkpoint(tmp_path) == tmp_path / "epoch_2.pth"
    # the other order (older versions): latest.pth newer than the pointer
    (tmp_path / "last_checkpoint").write_text("epoch_1.pth\n")
    os.unlink(tmp_path / "latest.pth")
    os.link(tmp_path / "epoch_2.pth", tmp_path / "latest.pth")
    assert C.find_latest_checkpoint(tmp_path) == tmp_path / "latest.pth"
    assert e2["meta"]["iter"] > e1["meta"]["iter"]

    t = Trainer(toy_config(train={"epochs": 3}, evaluation=None), work_dir=tmp_path, resume="auto")
    t.close()
    assert t.iter == 8                                   # resumed from the newest (epoch 2)
    assert not junk.exists()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "epoch_2.pth"
    assert os.path.samefile(tmp_path / "latest.pth", tmp_path / "epoch_2.pth")
    log = (tmp_path / "train.log").read_text()
    assert ".epoch_3.pth.tmp-4242" in log and "last_checkpoint lagged latest.pth" in log


# ----------------------------------------------------------------------------- tools
def test_tools_print_one_line_and_exit_2(tmp_path):
    cfg_file = tmp_path / "toy.yaml"
    cfg = toy_config(train={"epochs": 1}, evaluation=None)
    cfg["data"]["test"] = cfg["data"]["val"]
    cfg["evaluation"] = {"type": "_ToyEvaluator"}
    cfg_file.write_text(yaml.safe_dump(cfg))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")

    proc = _tool("test", cfg_file, text, "--out-dir", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"checkpoint error: {text}: corrupt")

    proc = _tool("train", cfg_file, "--work-dir", tmp_path / "w", "--cfg-options", "train.epoch=3")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("config error: train.epoch: unknown key; did you mean 'epochs'?")

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = _tool("train", cfg_file, "--work-dir", blocker / "sub")
    assert proc.returncode == 2 and proc.stderr.strip().startswith(
        f"work dir error: work_dir {blocker / 'sub'}: cannot create it"), proc.stderr

    proc = _tool("train", cfg_file, "--work-dir", tmp_path / "w", "--load-from", text, "--debug")
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "notes.txt" in proc.stderr
    proc = _tool("test", cfg_file, text, "--out-dir", tmp_path / "out", env={"DEFECTKIT_DEBUG": "1"})
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_run_main_sorts_user_errors_from_bugs(monkeypatch, capsys):
    tool("train")                                        # puts tools/ (and _common.py) on sys.path
    from _common import run_main

    from defectkit.config import ConfigError
    from defectkit.data.formats.common import DataFormatError
    from defectkit.engine.builders import check_pretrained

    def exits(fn, argv=("tool",)):
        monkeypatch.setattr(sys, "argv", list(argv))
        with pytest.raises(SystemExit) as info:
            run_main(fn)
        return info.value.code, capsys.readouterr().err.strip()

    def raising(exc):
        def main():
            raise exc
        return main

    monkeypatch.delenv("DEFECTKIT_DEBUG", raising=False)
    assert exits(raising(ConfigError("a.b: bad"))) == (2, "config error: a.b: bad")
    worker = DataFormatError("Caught DataFormatError in DataLoader worker process 0.\nOriginal Traceback "
                             "(most recent call last):\n  File \"x.py\", line 1\nDataFormatError: x.json: box 3 "
                             "outside the image\n")
    assert exits(raising(worker)) == (2, "data error: x.json: box 3 outside the image")
    code, err = exits(lambda: check_pretrained({"pretrained": "nope/smallcnn.pth"}))
    assert code == 2 and err.startswith("file error: model.pretrained: weights file 'nope/smallcnn.pth' not found")
    assert exits(lambda: sys.exit("export: not exportable")) == (2, "export: not exportable")
    assert exits(lambda: 0) == (0, "") and exits(lambda: 1) == (1, "")
    with pytest.raises(ZeroDivisionError):                # a bug keeps its traceback
        exits(lambda: 1 / 0)
    seen = []
    monkeypatch.setenv("DEFECTKIT_DEBUG", "0")             # restored after the test
    monkeypatch.setattr(sys, "argv", ["tool", "--debug", "cfg.yaml"])
    with pytest.raises(ConfigError):                       # --debug: the traceback, argv cleaned
        run_main(lambda: seen.append(list(sys.argv)) or (_ for _ in ()).throw(ConfigError("x")))
    assert seen == [["tool", "cfg.yaml"]] and os.environ["DEFECTKIT_DEBUG"] == "1"
