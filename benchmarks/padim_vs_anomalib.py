"""defectkit PaDiM vs anomalib's PadimModel: same weights in -> same scores out, speed, memory.

    python benchmarks/padim_vs_anomalib.py --data /tmp/padim_bench_texture/mvtec \
        --anomalib-python /tmp/anomalib-venv/bin/python --work /tmp/padim_cmp [--num-train 200]

Protocol (R18, d = 100, resize 256 / no crop, anomalib's):
1. A random-init torchvision ResNet-18 state dict is saved to WORK/r18_random.pth (no
   pretrained weights can be downloaded here) and 100 of the 448 layer1..3 channels are
   drawn (seed 42) into WORK/channel_indices.json; both models load both.
2. Each implementation runs in its own fresh process (``--worker defectkit|anomalib``; the
   anomalib one only needs torch + anomalib, not defectkit): fit on the first
   ``--num-train`` images of train/good (batch 32, images decoded batch by batch), then
   score the test split at batch 32 and time batch 1 and batch 32 calls. Peak memory is the
   process's peak RSS (ru_maxrss) minus the RSS just before fitting (model built, no data).
3. Spearman rank correlation of the image scores (and of all map pixels), and the ratios.
4. Speed again with both models in one process (the anomalib venv with this repo on
   sys.path), calls alternating, so that the load of a shared machine hits both alike
   (``--worker timing``); compare these ratios rather than the separate runs' times.

defectkit fits on all training images here (``calibration.val_ratio: 0``) so both Gaussians
see the same data. ``--worker defectkit --num-train 50`` / ``400`` give the flatness check.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".bmp"))


def load_batch(paths, size: int = 256):
    import numpy as np
    import torch
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


# ------------------------------------------------------------------ the two models
class DefectkitRunner:
    def __init__(self, weights: str, indices: str):
        from defectkit.models.anomaly.padim import PaDiM

        self.model = PaDiM(backbone="resnet18", pretrained=weights, channel_indices=indices, image_size=256,
                           crop_size=None, calibration={"val_ratio": 0.0}).eval()

    def fit(self, batches):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # "no validation image": no thresholds needed here
            self.model.fit({"image": b} for b in batches)

    def score(self, images):
        import torch

        with torch.inference_mode():
            raw = self.model.raw_maps(images)
        return raw.amax(dim=(1, 2, 3)), raw[:, 0]


class AnomalibRunner:
    def __init__(self, weights: str, indices: str):
        import torch
        from anomalib.models.image.padim.torch_model import PadimModel

        self.model = PadimModel(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False,
                                n_features=100)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        res = self.model.feature_extractor.feature_extractor.load_state_dict(state, strict=False)
        if any(not k.startswith(("fc.", "layer4.")) for k in res.unexpected_keys) or res.missing_keys:
            raise RuntimeError(f"weights do not fit timm's resnet18: {res}")
        self.model.idx = torch.tensor(json.loads(Path(indices).read_text()), dtype=torch.long)
        self.mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(STD).view(1, 3, 1, 1)

    def fit(self, batches):
        self.model.train()
        self.model.feature_extractor.eval()
        for b in batches:
            self.model((b - self.mean) / self.std)
        self.model.fit()
        self.model.eval()

    def score(self, images):
        import torch

        with torch.inference_mode():
            out = self.model((images - self.mean) / self.std)
        return out.pred_score.flatten(), out.anomaly_map[:, 0]


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    train = list_images(data / "train" / "good")[: args.num_train]
    test = list_images(data / "test")
    runner = (DefectkitRunner if args.worker == "defectkit" else AnomalibRunner)(args.weights, args.indices)
    base = rss_mb()
    t0 = time.perf_counter()
    runner.fit(load_batch(train[i:i + 32]) for i in range(0, len(train), 32))
    fit_s = time.perf_counter() - t0
    fit_peak = peak_rss_mb()
    scores, maps = [], []
    for i in range(0, len(test), 32):
        s, m = runner.score(load_batch(test[i:i + 32]))
        scores += s.tolist()
        maps.append(m[:, ::4, ::4].reshape(len(s), -1))          # every 16th pixel for the correlation
    timing = {}
    for bs in (1, 32):
        imgs = load_batch((test * 32)[:bs])
        runner.score(imgs)                                          # warm-up
        reps = args.reps if bs == 32 else 4 * args.reps
        calls = []
        for _ in range(reps):      # min over calls: the least disturbed one on a shared machine
            t0 = time.perf_counter()
            runner.score(imgs)
            calls.append(time.perf_counter() - t0)
        timing[f"ms_per_image_b{bs}"] = 1000 * min(calls) / bs
        timing[f"ms_per_image_b{bs}_median"] = 1000 * sorted(calls)[len(calls) // 2] / bs
    return {"impl": args.worker, "num_train": len(train), "num_test": len(test), "fit_s": fit_s,
            "rss_before_fit_mb": base, "fit_peak_rss_mb": fit_peak, "fit_peak_increase_mb": fit_peak - base,
            **timing, "scores": scores, "map_sample": torch.cat(maps).flatten().tolist(),
            "paths": [str(p) for p in test], "torch": torch.__version__, "threads": torch.get_num_threads()}


def interleaved_timing(args) -> dict:
    """Both models in ONE process (the anomalib venv, repo on sys.path), fitted on the same
    few images, timed call by call in alternation, so a busy shared machine slows both alike."""
    import torch

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    train = list_images(data / "train" / "good")[:32]
    test = list_images(data / "test")
    runners = {name: cls(args.weights, args.indices) for name, cls in
               (("defectkit", DefectkitRunner), ("anomalib", AnomalibRunner))}
    for r in runners.values():
        r.fit(load_batch(train[i:i + 16]) for i in range(0, len(train), 16))
    out = {}
    for bs in (1, 32):
        imgs = load_batch((test * 32)[:bs])
        calls = {name: [] for name in runners}
        for r in runners.values():
            r.score(imgs)                                           # warm-up
        for _ in range(args.reps if bs == 32 else 4 * args.reps):
            for name, r in runners.items():
                t0 = time.perf_counter()
                r.score(imgs)
                calls[name].append(time.perf_counter() - t0)
        for name, c in calls.items():
            out[f"{name}_ms_per_image_b{bs}_min"] = 1000 * min(c) / bs
            out[f"{name}_ms_per_image_b{bs}_median"] = 1000 * sorted(c)[len(c) // 2] / bs
    return out


def prepare(work: Path, seed: int = 42) -> tuple[str, str]:
    import torch
    import torchvision

    work.mkdir(parents=True, exist_ok=True)
    weights, indices = work / "r18_random.pth", work / "channel_indices.json"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    g = torch.Generator().manual_seed(seed)
    indices.write_text(json.dumps(torch.randperm(64 + 128 + 256, generator=g)[:100].tolist()))
    return str(weights), str(indices)


def run_worker(python: str, impl: str, args, weights: str, indices: str, num_train: int, out: Path) -> dict:
    cmd = [python, __file__, "--worker", impl, "--data", args.data, "--weights", weights, "--indices", indices,
           "--num-train", str(num_train), "--threads", str(args.threads), "--reps", str(args.reps),
           "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="an MVTec-layout category folder (train/good, test/...)")
    p.add_argument("--work", default="/tmp/padim_cmp")
    p.add_argument("--anomalib-python", help="python of a venv with anomalib (omit: defectkit only)")
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--flat", type=int, nargs=2, metavar=("N1", "N2"), help="also fit defectkit on N1 and N2 images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--worker", choices=["defectkit", "anomalib", "timing"], help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--indices", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        if args.worker in ("defectkit", "timing"):
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        Path(args.out).write_text(json.dumps(interleaved_timing(args) if args.worker == "timing" else worker(args)))
        return 0

    from scipy.stats import spearmanr

    work = Path(args.work)
    weights, indices = prepare(work)
    res = {"defectkit": run_worker(sys.executable, "defectkit", args, weights, indices, args.num_train,
                                   work / "defectkit.json")}
    if args.anomalib_python:
        res["anomalib"] = run_worker(args.anomalib_python, "anomalib", args, weights, indices, args.num_train,
                                     work / "anomalib.json")
    keys = ("fit_s", "fit_peak_rss_mb", "fit_peak_increase_mb", "ms_per_image_b1", "ms_per_image_b32")
    print(f"\n{'':12s}" + "".join(f"{k:>22s}" for k in keys))
    for name, r in res.items():
        print(f"{name:12s}" + "".join(f"{r[k]:22.1f}" for k in keys))
    summary = {k: {kk: v[kk] for kk in keys + ("num_train", "num_test", "torch", "threads")} for k, v in res.items()}
    if "anomalib" in res:
        a, d = res["anomalib"], res["defectkit"]
        rho = spearmanr(a["scores"], d["scores"]).statistic
        rho_px = spearmanr(a["map_sample"], d["map_sample"]).statistic
        ratios = {"image_score_spearman": rho, "pixel_spearman": rho_px,
                  "throughput_ratio_b32": a["ms_per_image_b32"] / d["ms_per_image_b32"],
                  "throughput_ratio_b1": a["ms_per_image_b1"] / d["ms_per_image_b1"],
                  "fit_peak_increase_ratio": d["fit_peak_increase_mb"] / a["fit_peak_increase_mb"],
                  "fit_peak_rss_ratio": d["fit_peak_rss_mb"] / a["fit_peak_rss_mb"]}
        t = run_worker(args.anomalib_python, "timing", args, weights, indices, 32, work / "timing.json")
        summary["interleaved_timing"] = t
        for bs in (1, 32):
            for stat in ("min", "median"):
                ratios[f"interleaved_throughput_ratio_b{bs}_{stat}"] = (
                    t[f"anomalib_ms_per_image_b{bs}_{stat}"] / t[f"defectkit_ms_per_image_b{bs}_{stat}"])
        summary["comparison"] = ratios
        print("\n" + "\n".join(f"{k}: {v:.5f}" for k, v in t.items()))
        print("\n" + "\n".join(f"{k}: {v:.5f}" for k, v in ratios.items()))
    if args.flat:
        flat = [run_worker(sys.executable, "defectkit", args, weights, indices, n, work / f"defectkit_{n}.json")
                for n in args.flat]
        summary["flatness"] = {str(r["num_train"]): {k: r[k] for k in ("fit_peak_rss_mb", "fit_peak_increase_mb",
                                                                      "fit_s")} for r in flat}
        a, b = flat
        print(f"\nfit peak RSS {a['num_train']} images {a['fit_peak_rss_mb']:.0f} MB, {b['num_train']} images "
              f"{b['fit_peak_rss_mb']:.0f} MB ({100 * (b['fit_peak_rss_mb'] / a['fit_peak_rss_mb'] - 1):+.1f}%); "
              f"increase {a['fit_peak_increase_mb']:.0f} vs {b['fit_peak_increase_mb']:.0f} MB")
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {work / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
