"""Checkpoint files: format, atomic writes (also under SIGKILL), loading errors, key handling."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from defectkit.engine import checkpoint as C
from defectkit.engine.seeding import get_rng_state


def _ckpt(value: float, epoch: int = 1) -> dict:
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, value)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    meta = C.make_meta({"model": {"type": "X"}}, epoch, epoch * 4, seed=3, classes=["a", "b"])
    return C.make_checkpoint(model, meta, optimizer=opt, rng=get_rng_state())


def test_format_roundtrip_weights_only(tmp_path):
    ck = _ckpt(0.5)
    path = C.save_checkpoint(ck, tmp_path / "epoch_1.pth")
    loaded = C.load_checkpoint(path, weights_only=True)     # plain types only: safe loading works
    assert set(loaded) >= {"meta", "state_dict", "optimizer", "scheduler", "scaler", "rng"}
    meta = loaded["meta"]
    assert meta["epoch"] == 1 and meta["iter"] == 4 and meta["seed"] == 3 and meta["classes"] == ["a", "b"]
    assert meta["config"] == {"model": {"type": "X"}}
    assert set(meta["versions"]) >= {"torch", "torchvision", "defectkit", "python"}
    assert "time" in meta and "best_metric" in meta
    assert torch.equal(loaded["state_dict"]["weight"], ck["state_dict"]["weight"])
    assert set(loaded["rng"]) >= {"torch", "numpy", "python"}
    assert not list(tmp_path.glob(".*tmp*"))


def test_latest_and_last_checkpoint(tmp_path):
    assert C.find_latest_checkpoint(tmp_path) is None
    for e in (1, 2):
        p = C.save_checkpoint(_ckpt(float(e), e), tmp_path / f"epoch_{e}.pth")
        C.update_latest(tmp_path, p)
    assert (tmp_path / "last_checkpoint").read_text().strip() == "epoch_2.pth"
    assert C.find_latest_checkpoint(tmp_path) == tmp_path / "epoch_2.pth"
    assert (tmp_path / "latest.pth").read_bytes() == (tmp_path / "epoch_2.pth").read_bytes()
    # the named file is gone (e.g. pruned by hand): fall back to latest.pth
    (tmp_path / "epoch_2.pth").unlink()
    assert C.find_latest_checkpoint(tmp_path) == tmp_path / "latest.pth"
    assert C.load_checkpoint(tmp_path / "latest.pth")["meta"]["epoch"] == 2


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    good = C.save_checkpoint(_ckpt(1.0), tmp_path / "epoch_1.pth")
    C.update_latest(tmp_path, good)
    before = (tmp_path / "latest.pth").read_bytes()

    def crashing_write(obj, f):
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError("No space left on device")

    monkeypatch.setattr(C, "_write", crashing_write)
    with pytest.raises(OSError, match="No space left"):
        C.save_checkpoint(_ckpt(2.0, 2), tmp_path / "latest.pth")      # overwrite attempt
    with pytest.raises(OSError):
        C.save_checkpoint(_ckpt(2.0, 2), tmp_path / "epoch_2.pth")
    assert (tmp_path / "latest.pth").read_bytes() == before
    assert C.load_checkpoint(tmp_path / "latest.pth")["meta"]["epoch"] == 1
    assert not (tmp_path / "epoch_2.pth").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1.pth", "last_checkpoint", "latest.pth"]


_KILLED_WRITER = textwrap.dedent("""
    import io, sys, time, torch
    from pathlib import Path
    from defectkit.engine import checkpoint as C

    work = Path(sys.argv[1])
    C.update_latest(work, C.save_checkpoint({"meta": {"epoch": 1}, "state_dict": {"w": torch.ones(4)}},
                                            work / "epoch_1.pth"))

    def slow_write(obj, f):          # the real bytes, written slowly so the kill lands mid-file
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("MIDWRITE", flush=True)
        time.sleep(60)
        f.write(data[len(data) // 2:])

    C._write = slow_write
    big = {"meta": {"epoch": 2}, "state_dict": {"w": torch.zeros(2_000_000)}}
    C.update_latest(work, C.save_checkpoint(big, work / "epoch_2.pth"))
""")


def test_sigkill_during_save_leaves_latest_intact(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_KILLED_WRITER)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(work)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "MIDWRITE", line
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (work / "epoch_2.pth").exists()            # nothing half-written under a final name
    leftovers = [p.name for p in work.iterdir() if p.name not in ("epoch_1.pth", "latest.pth", "last_checkpoint")]
    assert all(n.startswith(".epoch_2.pth.tmp-") for n in leftovers), leftovers
    assert C.find_latest_checkpoint(work) == work / "epoch_1.pth"
    latest = C.load_checkpoint(work / "latest.pth")
    assert latest["meta"]["epoch"] == 1 and torch.equal(latest["state_dict"]["w"], torch.ones(4))


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(C.CheckpointNotFoundError, match="checkpoint file not found: .*nope.pth"):
        C.load_checkpoint(missing)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(C.CheckpointError, match="junk.pth: corrupt"):
        C.load_checkpoint(junk)
    good = C.save_checkpoint(_ckpt(1.0), tmp_path / "good.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(C.CheckpointError, match="cut.pth: corrupt"):
        C.load_checkpoint(cut)


class _Custom:
    pass


def test_weights_only_refusal_is_explained(tmp_path):
    p = tmp_path / "custom.pth"
    torch.save({"state_dict": {}, "obj": _Custom()}, p)
    with pytest.raises(C.CheckpointError, match="custom.pth: .*weights_only=False"):
        C.load_checkpoint(p)


def test_state_dict_loading_strips_module_and_reports(tmp_path):
    src = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    ddp_style = {f"module.{k}": v for k, v in src.state_dict().items()}
    dst = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    assert C.load_state_dict(dst, ddp_style, strict=True).clean
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))

    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 5))   # new head
    sd = dict(src.state_dict(), extra=torch.zeros(1))
    del sd["0.bias"]
    with pytest.raises(C.CheckpointError, match="missing keys: 0.bias"):
        C.load_state_dict(other, sd, strict=True)
    report = C.load_state_dict(other, sd, strict=False)
    assert report.missing == ["0.bias"] and report.unexpected == ["extra"]
    assert report.mismatched == ["1.weight: (2, 2) vs (5, 2)", "1.bias: (2,) vs (5,)"]
    assert torch.equal(other[0].weight, src[0].weight)


def test_extract_state_dict_variants():
    sd = {"w": torch.ones(1)}
    assert C.extract_state_dict({"state_dict": sd, "meta": {}}) is sd
    assert C.extract_state_dict({"model": sd, "optimizer": {}}) is sd
    assert C.extract_state_dict(sd) is sd
    with pytest.raises(C.CheckpointError, match="no model weights"):
        C.extract_state_dict({"meta": {}}, "x.pth")
