"""Per-image inference latency of a model, measured apart from data loading.

    python tools/benchmark.py configs/classifier/resnet18_tiny_synth.yaml work_dirs/resnet18_tiny_synth/latest.pth

Protocol: batches of the test split (batch 1 by default) are decoded and pre-processed
first and kept in memory; --warmup model calls are discarded, then --iters calls are timed
(CUDA-synchronised, time.perf_counter). Reports mean / p50 / p90 ms per image, images/s,
the time split by GT-normal / GT-defective images, peak memory (CUDA max allocated, or the
process's peak RSS on CPU), parameter count, device and versions, and the evaluator's
timing metrics (a detector: gate pass rate, alpha, beta, ideal time); writes JSON
(default <work-dir>/benchmark.json, --work-dir as in tools/train.py). On a shared CPU compare variants as
ratios measured in the same run, not as absolute times.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

from _common import add_cfg_options, add_no_ema, add_work_dir, load, work_dir

from defectkit.progress import track


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint", nargs="?", help="weights (default: the config's initial weights)")
    p.add_argument("--task", default="inference", choices=["inference", "fit"],
                   help="what to time; fit: statistical models (PaDiM): fit time, fit peak memory, "
                        "size of the fitted weights on disk, then inference at --fit-batch-sizes")
    p.add_argument("--fit-batch-sizes", type=int, nargs="+", default=[1, 32], metavar="B",
                   help="--task fit: inference batch sizes timed after fitting (default: 1 32)")
    p.add_argument("--warmup", type=int, help="discarded calls (default: benchmark.warmup)")
    p.add_argument("--iters", type=int, help="timed calls (default: benchmark.iters)")
    p.add_argument("--batch-size", type=int, help="images per call (default: benchmark.batch_size)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    add_work_dir(p, "benchmark.json (--task fit: benchmark_fit.json)")
    p.add_argument("--out", help="JSON file (default: WORK_DIR/benchmark.json)")
    add_no_ema(p)
    add_cfg_options(p)
    return p.parse_args(argv)


def percentile(values, q):
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def evaluator_for(cfg: dict, meta: dict, dataset):
    """The config's evaluator (it knows the family's timing metrics), or a
    ``BaseEvaluator`` (no extra metrics) when the config has no ``evaluation``."""
    from defectkit.engine import build_evaluator
    from defectkit.evaluation import BaseEvaluator

    if not cfg.get("evaluation"):
        return BaseEvaluator()
    return build_evaluator(cfg["evaluation"], meta.get("classes") or dataset.classes, dataset=dataset)


def main(argv=None):
    args = parse_args(argv)
    cfg = load(args)
    if args.task == "fit":
        return fit_benchmark(cfg, args)
    import torch

    from defectkit.data.collate import to_device
    from defectkit.engine import build_dataset, build_eval_loader, init_model, resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    bcfg = cfg.get("benchmark") or {}
    warmup = args.warmup if args.warmup is not None else bcfg.get("warmup", 10)
    iters = args.iters if args.iters is not None else bcfg.get("iters", 50)
    bs = args.batch_size or bcfg.get("batch_size", 1)
    data_cfg = (cfg.get("data") or {}).get(args.split)
    if not data_cfg:
        sys.exit(f"config error: data.{args.split} is not set in {args.config}")

    device = resolve_device(args.device or cfg.get("device"))
    dataset = build_dataset(data_cfg)
    model, meta = init_model(cfg, args.checkpoint, device, use_ema=not args.no_ema)
    params = sum(p.numel() for p in model.parameters())

    # 1. data, timed on its own and kept in memory (the split is cycled when it is short)
    if len(dataset) == 0:
        sys.exit(f"benchmark: data.{args.split} of {args.config} is empty")
    loader = build_eval_loader(dataset, batch_size=bs, num_workers=0, distributed=False)
    batches, data_times, it = [], [], iter(loader)
    for _ in track(range(warmup + iters), desc="benchmark: loading data", unit="batch"):
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
                break
            except StopIteration:
                it = iter(loader)
        data_times.append(time.perf_counter() - t0)
        batches.append(to_device(batch, device))

    # 2. model calls
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    per_image, normal, defective, preds, times = [], [], [], [], []
    with torch.no_grad():
        for i, batch in enumerate(track(batches, desc="benchmark: model calls", unit="call")):
            sync()
            t0 = time.perf_counter()
            results = model.predict(batch)
            sync()
            if i < warmup:
                continue
            n = int(batch["image"].shape[0])
            preds.extend(results)
            dt = (time.perf_counter() - t0) / n
            per_image.append(dt)
            for d in batch.get("is_defective", torch.full((n,), -1)).tolist():
                (defective if d == 1 else normal if d == 0 else []).append(dt)
                times.append((dt, d if d in (0, 1) else None))

    ms = [t * 1000 for t in per_image]
    mean_ms = sum(ms) / len(ms)
    result = {
        "config": str(args.config), "checkpoint": args.checkpoint, "task": args.task,
        "model": cfg["model"].get("type"), "batch_size": bs, "warmup": warmup, "iters": iters,
        "ms_per_image": {"mean": mean_ms, "p50": percentile(ms, 50), "p90": percentile(ms, 90),
                         "min": min(ms), "max": max(ms)},
        "images_per_s": 1000.0 / mean_ms,
        "att_normal_ms": 1000 * sum(normal) / len(normal) if normal else None,
        "att_defective_ms": 1000 * sum(defective) / len(defective) if defective else None,
        "num_normal": len(normal), "num_defective": len(defective),
        "data_ms_per_batch": 1000 * sum(data_times) / len(data_times),
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "params": params,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "python": platform.python_version(),
    }
    timing_line = evaluator_for(cfg, meta, dataset).add_timing(result, times, preds)
    out = Path(args.out or work_dir(args, cfg) / "benchmark.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    m = result["ms_per_image"]
    print(f"{result['model']} on {result['device']}, batch {bs}, {iters} timed calls after {warmup} warm-up")
    print(f"  ms/image  mean {m['mean']:.2f}  p50 {m['p50']:.2f}  p90 {m['p90']:.2f}   "
          f"({result['images_per_s']:.1f} images/s)")
    if normal and defective:
        print(f"  GT-normal {result['att_normal_ms']:.2f} ms   GT-defective {result['att_defective_ms']:.2f} ms")
    if timing_line:
        print(f"  {timing_line}")
    print(f"  data {result['data_ms_per_batch']:.2f} ms/batch (not included)   params {params / 1e6:.2f} M   "
          f"peak memory {result['peak_memory_mb']:.0f} MB ({result['peak_memory_kind']})")
    print(f"wrote {out}")
    return 0


def fit_benchmark(cfg, args) -> int:
    """Fit a model that declares ``learning = "fit"`` (``fit(loader)``) on data.train, then
    time ``predict`` at a few batch sizes on the test split. Peak memory: process peak RSS
    (CUDA: max allocated) minus the RSS just before fitting (model built). ``statistics_mb``:
    the model's buffers in its state dict (what fitting stores: PaDiM's mean, precision
    factor, channel indices / projection; also any normalisation buffers)."""
    import os
    import tempfile

    import torch

    from defectkit.engine import (build_dataset, build_eval_loader, build_model, build_train_loader,
                                  resolve_device)
    from defectkit.engine.builders import DeviceLoader
    from defectkit.engine.sampler import TrainSampler
    from defectkit.models.base import learning_of

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device or cfg.get("device"))
    train_set = build_dataset(cfg["data"]["train"])
    model = build_model(cfg["model"], getattr(train_set, "classes", None)).to(device)
    if learning_of(model) != "fit":
        sys.exit(f"--task fit: {type(model).__name__} is not a fitted model (learning = {learning_of(model)!r})")
    bs = cfg["data"].get("batch_size", 2)
    loader = build_train_loader(train_set, bs, TrainSampler(len(train_set), shuffle=False), 0,
                                num_workers=cfg["data"].get("num_workers", 0))
    rss0 = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    model.fit(DeviceLoader(loader, device))
    fit_s = time.perf_counter() - t0
    peak = peak_memory_mb(device)
    with tempfile.NamedTemporaryFile(suffix=".pth", delete=False) as f:
        torch.save(model.state_dict(), f.name)
        disk = os.path.getsize(f.name)
    os.unlink(f.name)
    params = {name for name, _ in model.named_parameters()}
    stats_bytes = sum(t.numel() * t.element_size() for name, t in model.state_dict().items()
                      if isinstance(t, torch.Tensor) and name not in params)
    result = {"config": str(args.config), "task": "fit", "model": cfg["model"].get("type"),
              "num_train": len(train_set), "fit_s": fit_s, "fit_ms_per_image": 1000 * fit_s / max(len(train_set), 1),
              "fit_peak_memory_mb": peak, "rss_before_fit_mb": rss0,
              "fit_peak_increase_mb": peak - rss0 if device.type != "cuda" else peak,
              "state_dict_mb_on_disk": disk / 2**20,
              "statistics_mb": None if stats_bytes is None else stats_bytes / 2**20, "inference": {}}
    data_cfg = (cfg.get("data") or {}).get(args.split)
    if data_cfg:
        dataset = build_dataset(data_cfg)
        model.eval()
        for b in args.fit_batch_sizes:
            batch = next(iter(build_eval_loader(dataset, batch_size=min(b, len(dataset)), distributed=False)))
            batch = to_device_batch(batch, device)
            n = int(batch["image"].shape[0])
            times = []
            with torch.no_grad():
                calls = (args.warmup or 1) + (args.iters or 5)
                for i in track(range(calls), desc=f"benchmark: batch {n}", unit="call"):
                    t1 = time.perf_counter()
                    model.predict(batch)
                    if i >= (args.warmup or 1):
                        times.append((time.perf_counter() - t1) / n)
            result["inference"][f"batch_{n}"] = {"ms_per_image_mean": 1000 * sum(times) / len(times),
                                                 "ms_per_image_min": 1000 * min(times)}
    out = Path(args.out or work_dir(args, cfg) / "benchmark_fit.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{result['model']}: fit {len(train_set)} images in {fit_s:.1f} s ({result['fit_ms_per_image']:.1f} ms/image), "
          f"peak memory {peak:.0f} MB (+{result['fit_peak_increase_mb']:.0f} MB during fit), "
          f"weights on disk {result['state_dict_mb_on_disk']:.1f} MB"
          + ("" if stats_bytes is None else f" (statistics {result['statistics_mb']:.1f} MB)"))
    for k, v in result["inference"].items():
        print(f"  inference {k}: {v['ms_per_image_mean']:.2f} ms/image (min {v['ms_per_image_min']:.2f})")
    print(f"wrote {out}")
    return 0


def to_device_batch(batch, device):
    from defectkit.data.collate import to_device

    return to_device(batch, device)


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
