"""Downstream utility of generated data (the Defect-Gen paper's experiment) as one command:
train a segmenter on real data only and on real + generated data at several synthetic:real
ratios, over several seeds, and report defect IoU and mIoU (mean ± std) per ratio.

    python tools/synth_utility.py configs/znet/unet_tiny_ballscrew.yaml --generated work_dirs/gen \\
        --ratios 0 0.2 0.5 1 2 3 --seeds 0 1 2

SEG_CONFIG is any segmentation config with ``data.train`` and ``data.test`` (the real data).
Ratio 0 trains it as it is (real only); ratio r > 0 replaces ``data.train`` with

    {type: MixedDataset, ratio: r, seed: SEED,
     datasets: [<the real data.train>,
                {type: MaskFolderDataset, img_dir: DIR/images, mask_dir: DIR/masks_converted_dir,
                 classes: <DIR/generation.json classes>, pipeline: <the real data.train pipeline>}]}

so ``round(r * n_real)`` generated pairs join the n_real real ones (defectkit/data/mixed.py).
Every run also sets the config's ``seed`` to SEED. With an epoch-based schedule
(``train.epochs``) a larger mixed set trains more iterations, as in the paper's setting of
a fixed number of epochs; ``--cfg-options train.max_iters=N`` gives every run the same
number of iterations instead. The runs train one after the other in this
process with the rounds API (``defectkit.engine.rounds.run_rounds``, one named round per
run), each in its own work dir ``WORK_DIR/ratio<r>_seed<s>``, and each is then tested on the real
``data.test`` with the evaluator of the config. Metrics: the segmentation evaluator's
``defect_IoU`` (mean IoU over the defect classes) and ``mIoU`` (background included).

A finished run is reused when it was made with the same settings: each run dir holds
``utility_run.json`` with the SHA-256 config hash of its resolved config (tools/compare.py's
``config_hash``) and the hash of the generated set's ``generation.json``; a run whose
checkpoint exists but whose test did not finish resumes (a finished training trains no
more). A run dir made with other settings stops the tool with one line naming what differs;
``--retrain`` deletes and retrains such runs.

Writes to WORK_DIR (default ``work_dirs/<config-stem>_utility``): ``utility.json`` (every run
and the per-ratio summary), ``utility.csv`` (one row per ratio) and ``utility.png`` (defect
IoU and mIoU vs ratio, mean ± sample std over the seeds as error bars).
"""
import argparse
import copy
import csv
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

from _common import add_cfg_options, load

METRICS = ("defect_IoU", "mIoU")       # keys of SegmentationEvaluator's metrics
RUN_FILE = "utility_run.json"
GEN_FILE = "generated_sha.txt"     # which generated set a run's checkpoint was trained with


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="SEG_CONFIG")
    p.add_argument("--generated", required=True, metavar="DIR", help="a folder written by tools/generate.py")
    p.add_argument("--ratios", type=float, nargs="+", default=[0, 0.2, 0.5, 1, 2, 3], metavar="R",
                   help="synthetic:real ratios (0 = real only; default 0 0.2 0.5 1 2 3)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                   help="one training per seed and ratio (default 0 1 2)")
    p.add_argument("--work-dir", help="where the runs and the results go (default work_dirs/<config-stem>_utility)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the config's, else cuda when available)")
    p.add_argument("--retrain", action="store_true",
                   help="retrain runs whose work dir was made with other settings (default: stop and say so)")
    add_cfg_options(p)
    return p.parse_args(argv)


def ratio_name(r: float) -> str:
    return f"{r:g}"


def run_name(ratio: float, seed: int) -> str:
    """The run's sub-work-dir name (a named round of run_rounds)."""
    return f"ratio{ratio_name(ratio)}_seed{seed}"


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_overrides(cfg: dict, generated: Path, classes: list[str], ratio: float, seed: int) -> dict:
    """The dotted-key overrides of one run (``run_rounds`` grammar)."""
    from defectkit.data.formats.generated import dataset_config

    out: dict = {"seed": seed}
    if ratio > 0:
        real = copy.deepcopy(cfg["data"]["train"])
        gen = dataset_config(generated, classes, pipeline=copy.deepcopy(real.get("pipeline")))
        out["data.train"] = {"type": "MixedDataset", "datasets": [real, gen], "ratio": ratio, "seed": seed}
    return out


def resolved(cfg: dict, overrides: dict) -> dict:
    """The config one run trains with (what run_rounds builds from ``cfg`` and ``overrides``)."""
    from defectkit.config import apply_options

    out = copy.deepcopy(cfg)
    out.pop("work_dir", None)
    apply_options(out, copy.deepcopy(overrides))
    return out


def test_run(cfg: dict, checkpoint: Path, device) -> dict:
    """Metrics of ``checkpoint`` on the real ``data.test`` (as tools/test.py computes them)."""
    from defectkit.engine import build_dataset, build_eval_loader, build_evaluator, init_model, run_inference
    from defectkit.engine.builders import check_classes

    dataset = build_dataset(cfg["data"]["test"])
    model, meta = init_model(cfg, str(checkpoint), device)
    classes = check_classes(meta.get("classes"), dataset.classes, "data.test")
    evaluator = build_evaluator(cfg["evaluation"], classes, dataset=dataset)
    loader = build_eval_loader(dataset, batch_size=1, num_workers=cfg["data"].get("num_workers", 0),
                               distributed=False)
    out = run_inference(model, loader, evaluator, device, keep_results=False, desc="test data.test")
    return {k: v for k, v in (out.metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def stored_checkpoint(rdir: Path) -> Path | None:
    latest = rdir / "latest.pth"
    return latest if latest.is_file() else None


def check_reusable(rdir: Path, want: str, gen_sha: str | None, cfg: dict, retrain: bool) -> tuple[dict | None, bool]:
    """``(finished record or None, resume)`` for the run dir ``rdir`` of a run with resolved
    config ``cfg`` (hash ``want``) on the generated set ``gen_sha`` (None: real only):

    - its ``utility_run.json`` made with the same settings: reused as it is;
    - its checkpoint trained with the same settings (the generated set included): resumed
      (nothing left to train when it finished) and tested again;
    - no checkpoint yet (interrupted early): started afresh;
    - made with other settings: deleted with ``retrain``, else the tool stops naming the keys."""
    from compare import checkpoint_config, config_diff, config_hash, training_part

    record_path = rdir / RUN_FILE
    if record_path.is_file():
        rec = json.loads(record_path.read_text())
        if rec.get("config_hash") == want and rec.get("generated_sha") == gen_sha and rec.get("metrics"):
            return rec, False
    ckpt = stored_checkpoint(rdir)
    if ckpt is None:
        if rdir.exists():
            shutil.rmtree(rdir)            # interrupted before its first checkpoint: nothing to keep
        return None, False
    stored = checkpoint_config(ckpt)
    marker = rdir / GEN_FILE
    same_gen = marker.is_file() and marker.read_text().strip() == str(gen_sha)
    same_cfg = stored is not None and config_hash(training_part(stored)) == config_hash(training_part(cfg))
    if same_cfg and same_gen:
        return None, True
    why = []
    if not same_gen:
        why.append("the generated set differs (its generation.json changed)")
    if not same_cfg:
        why.append(config_diff(training_part(stored), training_part(cfg)) if stored is not None
                   else "it stores no config")
    why = "; ".join(why)
    if not retrain:
        sys.exit(f"synth_utility: {ckpt} was trained with other settings ({why}); pass --retrain to "
                 f"retrain it (deletes {rdir}), or --work-dir DIR to keep both")
    print(f"[synth_utility] {rdir} was made with other settings ({why}); retraining", flush=True)
    shutil.rmtree(rdir)
    return None, False


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, s


def summarise(runs: list[dict], ratios: list[float]) -> list[dict]:
    rows = []
    for r in ratios:
        per = [x for x in runs if x["ratio"] == r]
        row = {"ratio": r, "runs": len(per), "seeds": [x["seed"] for x in per],
               "train_samples": per[0]["train_samples"] if per else None,
               "generated_samples": per[0]["generated_samples"] if per else None}
        for k in METRICS:
            row[f"{k}_mean"], row[f"{k}_std"] = mean_std([x["metrics"].get(k) for x in per])
        rows.append(row)
    base = next((row for row in rows if row["ratio"] == 0), None)
    for row in rows:
        for k in METRICS:
            row[f"{k}_gain"] = (row[f"{k}_mean"] - base[f"{k}_mean"]) if base is not None else None
    return rows


def pct(m: float, s: float | None = None) -> str:
    if m is None or not math.isfinite(m):
        return "n/a"
    return f"{100 * m:.2f}" + ("" if s is None else f" ± {100 * s:.2f}")


def table(rows: list[dict]) -> str:
    head = ["ratio", "runs", "train samples", "defect IoU (%)", "Δ vs real", "mIoU (%)", "Δ vs real"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        gain = lambda k: "n/a" if row[f"{k}_gain"] is None else f"{100 * row[f'{k}_gain']:+.2f}"  # noqa: E731
        lines.append("| " + " | ".join([
            ratio_name(row["ratio"]), str(row["runs"]), str(row["train_samples"]),
            pct(row["defect_IoU_mean"], row["defect_IoU_std"]), gain("defect_IoU"),
            pct(row["mIoU_mean"], row["mIoU_std"]), gain("mIoU")]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [row["ratio"] for row in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for k, label, marker in (("defect_IoU", "defect IoU", "o"), ("mIoU", "mIoU", "s")):
        ax.errorbar(xs, [100 * row[f"{k}_mean"] for row in rows], yerr=[100 * row[f"{k}_std"] for row in rows],
                    marker=marker, capsize=4, label=label)
    base = next((row for row in rows if row["ratio"] == 0), None)
    if base is not None and math.isfinite(base["defect_IoU_mean"]):
        ax.axhline(100 * base["defect_IoU_mean"], color="grey", linestyle="--", linewidth=0.8,
                   label="defect IoU, real only")
    ax.set_xlabel("synthetic : real ratio")
    ax.set_ylabel("IoU on the real test split (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    ratios = list(dict.fromkeys(args.ratios))
    seeds = list(dict.fromkeys(args.seeds))
    bad = [r for r in ratios if not math.isfinite(r) or r < 0]
    if bad:
        sys.exit(f"synth_utility: --ratios: each ratio must be a number >= 0, got {bad[0]:g}")
    cfg = load(args)
    from defectkit.data.formats.common import DataFormatError
    from defectkit.data.formats.generated import read_generation
    from defectkit.engine import Trainer, build_dataset, resolve_device
    from defectkit.engine.rounds import run_rounds

    for key in ("train", "test"):
        if not (cfg.get("data") or {}).get(key):
            sys.exit(f"config error: data.{key} is not set in {args.config} (the real data)")
    if "evaluation" not in cfg:
        sys.exit(f"config error: no `evaluation` section in {args.config}")
    generated = Path(args.generated)
    gen_info = read_generation(generated)
    classes = list(gen_info["classes"])
    real_classes = list(build_dataset(cfg["data"]["train"]).classes)
    if real_classes != classes:
        raise DataFormatError(f"{generated / 'generation.json'}: classes {classes} differ from the real "
                              f"data.train classes {real_classes} of {args.config} (same names, same order)")
    gen_sha = file_sha(generated / "generation.json")
    work_dir = Path(args.work_dir or f"work_dirs/{Path(args.config).stem}_utility")
    work_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device or cfg.get("device"))
    from compare import config_hash

    class CountingTrainer(Trainer):
        """Records the training set size (and the MixedDataset's real/generated split)."""
        def train(self):
            sizes["train_samples"] = len(self.train_set)
            counts = getattr(self.train_set, "counts", None)
            sizes["generated_samples"] = int(counts()["generated"]) if callable(counts) else 0
            return super().train()

    jobs = [(r, s) for r in ratios for s in seeds]
    print(f"synth_utility: {len(jobs)} runs ({len(ratios)} ratios x {len(seeds)} seeds) of {args.config} with "
          f"{gen_info.get('count', '?')} generated pairs from {generated}; work dir {work_dir}", flush=True)
    runs = []
    t_all = time.perf_counter()
    for n, (ratio, seed) in enumerate(jobs, 1):
        overrides = run_overrides(cfg, generated, classes, ratio, seed)
        run_cfg = resolved(cfg, overrides)
        want = config_hash(run_cfg)
        rdir = work_dir / run_name(ratio, seed)
        rec, resume = check_reusable(rdir, want, gen_sha if ratio > 0 else None, run_cfg, args.retrain)
        head = f"[synth_utility] run {n}/{len(jobs)}: ratio {ratio_name(ratio)}, seed {seed}"
        if rec is not None:
            print(f"{head}: reusing {rdir / RUN_FILE} (same config hash {want})", flush=True)
            runs.append(rec)
            continue
        print(f"{head}: {'resuming' if resume else 'training'} in {rdir}", flush=True)
        rdir.mkdir(parents=True, exist_ok=True)
        (rdir / GEN_FILE).write_text(f"{gen_sha if ratio > 0 else None}\n")
        sizes: dict = {}
        t0 = time.perf_counter()
        result = run_rounds(cfg, [overrides], work_dir=work_dir, names=[rdir.name], init_from_previous=False,
                            resume=resume, device=str(device), trainer_cls=CountingTrainer)[0]
        ckpt = result.last_checkpoint or stored_checkpoint(rdir)
        if ckpt is None:
            sys.exit(f"synth_utility: run {rdir} saved no checkpoint (set train.checkpoint_interval)")
        metrics = test_run(run_cfg, Path(ckpt), device)
        missing = [k for k in METRICS if k not in metrics]
        if missing:
            sys.exit(f"synth_utility: the evaluator of {args.config} reports no {', '.join(missing)} "
                     f"(a segmentation config with SegmentationEvaluator is needed)")
        rec = {"ratio": ratio, "seed": seed, "config_hash": want, "generated_sha": gen_sha if ratio > 0 else None,
               "checkpoint": str(ckpt), "train_samples": sizes.get("train_samples"),
               "generated_samples": sizes.get("generated_samples"), "seconds": round(time.perf_counter() - t0, 1),
               "metrics": metrics}
        (rdir / RUN_FILE).write_text(json.dumps(rec, indent=2))
        print(f"{head}: defect IoU {pct(metrics['defect_IoU'])}%, mIoU {pct(metrics['mIoU'])}% "
              f"({rec['train_samples']} training samples, {rec['seconds']:.0f} s)", flush=True)
        runs.append(rec)

    rows = summarise(runs, ratios)
    text = table(rows)
    print(f"\nSegmentation on the real test split, mean ± sample std over seeds {' '.join(map(str, seeds))}:\n\n{text}")
    result = {"config": str(args.config), "generated": str(generated), "generated_sha": gen_sha,
              "generated_count": gen_info.get("count"), "classes": classes, "ratios": ratios, "seeds": seeds,
              "metrics": list(METRICS), "summary": rows, "runs": runs,
              "seconds": round(time.perf_counter() - t_all, 1)}
    (work_dir / "utility.json").write_text(json.dumps(result, indent=2, default=str))
    with open(work_dir / "utility.csv", "w", newline="") as f:
        fields = ["ratio", "runs", "train_samples", "generated_samples"] + \
                 [f"{k}_{s}" for k in METRICS for s in ("mean", "std", "gain")]
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) and k != "ratio" else v) for k, v in row.items()})
    plot(rows, work_dir / "utility.png", f"{Path(args.config).stem} + {generated.name} (n={len(seeds)} seeds)")
    print(f"wrote {work_dir / 'utility.json'}, {work_dir / 'utility.csv'}, {work_dir / 'utility.png'}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
