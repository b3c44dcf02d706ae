"""Samplers (sharding, padding, skipping) and a real 2-process CPU DDP run through torchrun."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from defectkit.engine import distributed as D
from defectkit.engine.sampler import InferenceSampler, TrainSampler

TESTS = Path(__file__).resolve().parent


def test_train_sampler_shards_and_pads_like_distributed_sampler():
    for size, world in [(10, 3), (9, 3), (2, 4), (7, 1)]:
        ours = [list(TrainSampler(size, shuffle=False, rank=r, world_size=world)) for r in range(world)]
        ref = [list(DistributedSampler(range(size), num_replicas=world, rank=r, shuffle=False))
               for r in range(world)]
        assert ours == ref, (size, world)
        flat = [i for part in ours for i in part]
        assert set(flat) == set(range(size)) and len(flat) == len(ours[0]) * world


def test_train_sampler_is_a_function_of_seed_and_epoch():
    a = TrainSampler(20, seed=5, rank=1, world_size=2)
    b = TrainSampler(20, seed=5, rank=1, world_size=2)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    both = [TrainSampler(20, seed=5, rank=r, world_size=2) for r in range(2)]
    for s in both:
        s.set_epoch(3)
    assert sorted(list(both[0]) + list(both[1])) == list(range(20))   # a permutation, split


def test_train_sampler_skip_resumes_mid_epoch():
    s = TrainSampler(20, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, skip=8)
    assert list(s) == full[8:] and len(s) == 12
    with pytest.raises(ValueError):
        s.set_epoch(2, skip=21)


def test_inference_sampler_covers_each_index_once_in_order():
    for size, world in [(13, 2), (3, 4), (8, 3), (0, 2)]:
        parts = [list(InferenceSampler(size, r, world)) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(size)), (size, world)


def test_helpers_without_process_group():
    assert D.get_rank() == 0 and D.get_world_size() == 1 and D.is_main_process()
    assert D.all_gather_object({"a": 1}) == [{"a": 1}]
    assert D.gather_lists([1, 2]) == [1, 2]
    assert D.broadcast_object(3) == 3
    D.barrier()
    m = torch.nn.Linear(1, 1)
    assert D.unwrap_model(m) is m


_WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    import helpers_toy as H
    from defectkit.engine import Trainer, distributed as D

    out = sys.argv[1]
    cfg = H.toy_config(
        data={"train": {"type": "_ToyDataset", "num_samples": 30},            # 15 per rank, padded
              "val": {"type": "_ToyDataset", "num_samples": 13, "seed": 1, "augment": False},
              "batch_size": 4},
        train={"epochs": 2})
    t = Trainer(cfg, work_dir=os.path.join(out, "work"))
    r = t.train()
    rank = D.get_rank()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": D.get_world_size(), "metrics": r.metrics, "iter": r.iter,
                   "history": [h["loss"] for h in r.history],
                   "ddp": type(t.train_model).__name__}, f)
    torch.save(t.model.state_dict(), os.path.join(out, f"weights{rank}.pt"))
    t.close()
""")


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def run_two_processes(worker_source: str, tmp_path) -> None:
    """Write ``worker_source`` to ``tmp_path/worker.py`` and run it under torchrun with 2
    CPU processes (gloo, one thread each, the tests folder importable), ``tmp_path`` as its
    argument; fails the test with the output tails when it exits non-zero."""
    script = tmp_path / "worker.py"
    script.write_text(worker_source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = _torchrun() + ["--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_two_process_ddp_on_cpu(tmp_path):
    run_two_processes(_WORKER, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and {r["ddp"] for r in ranks} == {"DistributedDataParallel"}
    # rank 0's gathered evaluation saw each of the 13 val images exactly once (shards 7 + 6)
    m0 = ranks[0]["metrics"]
    assert m0["count"] == 13 and m0["ids"] == list(range(13))
    assert ranks[1]["metrics"] == m0                         # metrics broadcast to every rank
    # 15 samples per rank, batch 4 -> 4 iterations per epoch; logged losses are rank means
    assert ranks[0]["iter"] == ranks[1]["iter"] == 8
    assert ranks[0]["history"] == ranks[1]["history"]
    w0, w1 = (torch.load(tmp_path / f"weights{r}.pt") for r in range(2))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)        # DDP kept replicas identical
    work = tmp_path / "work"
    assert (work / "latest.pth").is_file() and (work / "train.log").is_file()
    log = (work / "train.log").read_text()
    assert "world_size     : 2" in log
    assert log.count("training for 2 epochs") == 1            # only rank 0 writes files
