"""`make demo`: synthetic data -> train -> test -> benchmark for every small model, then one table.

    python tools/demo.py            # reuses data and finished runs when present
    python tools/demo.py --fresh    # regenerate data and retrain everything
    python tools/demo.py --only Defect-Gen   # only that family's rows (and the configs they train first)
    python tools/demo.py --only detector     # the one-model row and the classifier row it starts from

Each step runs the same command a user would type (printed before it runs), so the
demo doubles as a walk-through of the tools. The runs train one per core, one thread each,
in FIRST_FREE_SLOT's priority order (their logs go to work_dirs/<stem>/demo.log); a run starts
once the runs it loads are trained. Families add a row to RUNS as they land.
A row whose model loads its parts' weights itself (the Defect-Gen sampler) is tested without
a checkpoint after the configs in TRAIN_FIRST[row] are trained (not tested, not shown).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# the synthetic datasets the runs need: out dir -> make_synth arguments
DATASETS = {
    "data/synth_fabric": ["--preset", "fabric", "--num-images", "400", "--size", "256x256", "--seed", "0"],
    "data/synth_ballscrew_tiny": ["--preset", "ballscrew", "--num-images", "300", "--size", "256x128", "--seed", "0"],
    "data/demo_padim": ["--preset", "fabric", "--num-images", "200", "--size", "128x128", "--seed", "0"],
    # the detector rows' clear-defect set (2 classes; see configs/_base_/demo_det.yaml)
    "data/demo_det": ["--preset", "demo", "--num-images", "400", "--size", "256x256", "--seed", "0"],
    # Defect-Gen's tiny set with defects visible at 64 px (configs/defectgen/_gen_synth_data.yaml)
    "data/gen_synth": ["--preset", "gen", "--num-images", "200", "--size", "64x64", "--seed", "0"],
    # Severity's dark sensor frames (512x288; configs/severity/severity_shallownet_tiny_sensor.yaml)
    "data/sev_sensor_tiny": ["--preset", "sensor", "--num-images", "240", "--seed", "0"],
}

# one row per run: (family, config, the metrics shown in the table, what the row shows).
# "shows" is formatted with the row's metrics (and, for the detectors, the interleaved
# ATT comparison: ratio = the model's ATT / the one-model's, gated = share of test images
# the gate kept out of the detection heads).
_CLS = [("accuracy", "acc"), ("f1_macro", "macro-F1"), ("roc_auc", "AUROC")]
_DET = [("mAP", "mAP"), ("AP50", "AP50"), ("f1_macro", "image F1"), ("att_ms", "ATT ms"),
        ("att_normal_ms", "ATT_N"), ("att_defective_ms", "ATT_D")]
_SEG = [("mIoU", "mIoU"), ("defect_IoU", "defect IoU"), ("znet_defect_IoU", "znet_repo IoU")]
ONE_MODEL = "configs/defectnet/one_model_faster_demo_synth.yaml"
DEFECTGEN = "configs/defectgen/defectgen_two_stage_demo_synth.yaml"
# configs trained (not tested or shown) before the row that loads their checkpoints
TRAIN_FIRST = {DEFECTGEN: ["configs/defectgen/adm_large_demo_synth.yaml",
                           "configs/defectgen/sindiffusion_small_demo_synth.yaml",
                           "configs/defectgen/seg_unet_judge_demo_synth.yaml"]}
DEFECTNET = "configs/defectnet/defectnet_const_faster_demo_synth.yaml"
SEVERITY = "configs/severity/severity_demo_sensor.yaml"
CLASSIFIER = "configs/classifier/smallcnn_tiny_synth.yaml"
RUNS = [
    ("classifier", CLASSIFIER, _CLS,
     "tells normal from defective fabric images (AUROC {roc_auc:.2f}; 0.5 = chance)"),
    # one-model vs DefectNet: the same small Faster R-CNN and schedule on the same clear-defect
    # set (preset demo: holes and stains), backbone from the classifier above; the ATT columns of both come from one interleaved
    # run (benchmarks/detector_att_interleaved.py)
    ("detector", ONE_MODEL, _DET,
     "boxes and names holes and stains after 6 short epochs (AP50 {AP50:.2f}; faint stains "
     "are the hard class); its stray boxes on normal images cost image F1 ({f1_macro:.2f})"),
    ("DefectNet", DEFECTNET, _DET,
     "same detector + gate: {gated:.0%} of test images skip the heads, ATT {ratio:.2f}x the "
     "one-model's (interleaved); image F1 {f1_macro:.2f}, AP50 {AP50:.2f}"),
    ("Severity", SEVERITY,
     [("mAP", "mAP"), ("AP50", "AP50"), ("qwk_gt", "QWK"), ("verdict_accuracy", "verdict acc")],
     "after 4 short epochs the shallownet detector starts to find column lines, blemishes and spots "
     "(AP50 {AP50:.2f}) while its per-type heads already grade them: QWK {qwk_gt:.2f} on the "
     "ground-truth boxes (0 = chance, 1 = perfect); OK/NG verdict accuracy {verdict_accuracy:.2f}, "
     "escape {escape_rate:.2f}, overkill {overkill_rate:.2f}"),
    ("PaDiM", "configs/padim/padim_tiny_synth.yaml",
     [("image_auroc", "img AUROC"), ("pixel_auroc", "pix AUROC"), ("aupro", "AUPRO")],
     "flags anomalies after seeing normal images only (image AUROC {image_auroc:.2f})"),
    ("ZNet", "configs/znet/znet_tiny_ballscrew.yaml", _SEG,
     "segments pitting pixels (defect IoU {defect_IoU:.2f})"),
    ("UNet", "configs/znet/unet_demo_ballscrew.yaml", _SEG,
     "the segmentation baseline next to ZNet (defect IoU {defect_IoU:.2f})"),
    ("Defect-Gen", DEFECTGEN,
     [("alignment_defect_iou_pooled", "align IoU"), ("msssim_diversity", "MS-SSIM"), ("copy_share", "copies")],
     "two tiny denoisers trained 200 / 150 iterations generate image + mask pairs, the large model "
     "for t >= 200 and the small one (trained on t < 200 only) below (grid: "
     "work_dirs/defectgen_two_stage_demo_synth/test/generated_grid.png); a segmenter trained on real data "
     "matches their masks with pooled IoU {alignment_defect_iou_pooled:.2f}; {copy_share:.0%} are copies "
     "of the 7 training images"),
]
ATT_PAIR = (ONE_MODEL, DEFECTNET)   # timed interleaved in one process; the first is the reference
# rows whose model starts from another row's checkpoint (configs/_base_/demo_det.yaml's
# `pretrained`): selected with it (--only detector also runs the classifier row) and
# retrained when it is
STARTS_FROM = {ONE_MODEL: CLASSIFIER, DEFECTNET: CLASSIFIER}
# The runs train (and test) in a pool with one slot per core, one thread each: on 2 cores
# two single-thread runs finish in about the time one two-thread run takes (docs/training.md);
# benchmarks stay serial. A free slot takes the first run of this list whose inputs
# (STARTS_FROM, TRAIN_FIRST) are trained: the classifier first, since the two detector rows
# start from its backbone, then those rows, then the longest runs first, so that the short
# ones fill the end. Train+test seconds of each run in a fresh-clone demo on 2 cores
# (2026-12-01): Severity 241, classifier 208, ZNet 173, detectors 122 / 129, ADM 82, UNet 74,
# judge segmenter 53, SinDiffusion 40, Defect-Gen sampling 22, PaDiM 20 (eleven runs 587 s;
# eight at once, then the sampling and the detector pair, took 618 s on an earlier day).
FIRST_FREE_SLOT = [CLASSIFIER, ONE_MODEL, DEFECTNET, SEVERITY, "configs/znet/znet_tiny_ballscrew.yaml",
                   TRAIN_FIRST[DEFECTGEN][0], "configs/znet/unet_demo_ballscrew.yaml",
                   TRAIN_FIRST[DEFECTGEN][2], TRAIN_FIRST[DEFECTGEN][1], DEFECTGEN,
                   "configs/padim/padim_tiny_synth.yaml"]


def select_rows(runs: list, only: list[str] | None) -> list:
    """The rows of ``runs`` whose family is in ``only`` (case-insensitive; all when None), with
    the rows they start from (STARTS_FROM); ``SystemExit`` naming the known families when one
    matches no row."""
    if not only:
        return list(runs)
    known = list(dict.fromkeys(family for family, *_ in runs))
    wanted = {name.lower() for name in only}
    unknown = sorted(wanted - {f.lower() for f in known})
    if unknown:
        sys.exit(f"demo: --only {' '.join(unknown)}: no such family (the rows are: {', '.join(known)})")
    chosen = {row[1] for row in runs if row[0].lower() in wanted}
    chosen |= {STARTS_FROM[c] for c in chosen if c in STARTS_FROM}
    return [row for row in runs if row[1] in chosen]


def uses_data(runs: list, out: str) -> bool:
    """Whether a row of ``runs`` (or a config it trains first) reads the dataset folder ``out``
    (its path appears in the resolved config)."""
    from defectkit.config import load_config

    configs = [c for _, config, _, _ in runs for c in (*TRAIN_FIRST.get(config, []), config)]
    return any(out in json.dumps(load_config(ROOT / c), default=str) for c in configs)


def run(cmd: list[str]) -> None:
    print("\n$ " + " ".join(str(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"demo: step failed (exit {proc.returncode}): {' '.join(map(str, cmd))}")
    print(f"[demo] done in {time.perf_counter() - t0:.1f} s", flush=True)


def make_data(out: str, synth_args: list[str], fresh: bool) -> None:
    info = ROOT / out / "dataset.json"
    if info.is_file() and not fresh:
        print(f"[demo] reusing {out} (delete it or pass --fresh to regenerate)")
        return
    # in this process: a tool's start costs ~5 s of torch imports on 2 cores, six datasets 30 s
    import make_synth

    print("\n$ " + " ".join([PY, "tools/make_synth.py", "--out", out, *synth_args]), flush=True)
    t0 = time.perf_counter()
    if make_synth.main(["--out", str(ROOT / out), *synth_args]) != 0:
        sys.exit(f"demo: step failed: tools/make_synth.py --out {out} {' '.join(synth_args)}")
    print(f"[demo] done in {time.perf_counter() - t0:.1f} s", flush=True)


def finished(work_dir: Path, trains: bool = True, tests: bool = True) -> bool:
    """A previous run of this config reached its end: its checkpoint (when it ``trains``) and
    its test metrics (when it ``tests``) exist, with the demo's timing record."""
    return ((not trains or (work_dir / "latest.pth").is_file())
            and (not tests or (work_dir / "test" / "metrics.json").is_file())
            and (work_dir / "demo_time.json").is_file())


def loads_own_weights(config: str) -> bool:
    """The row's model loads its parts' checkpoints itself: tested without a checkpoint."""
    from compare import loads_own_weights as own

    return own(str(ROOT / config))


def record_time(work_dir: Path, seconds: float, stamp: str) -> None:
    (work_dir / "demo_time.json").write_text(json.dumps({"train_test_s": seconds, "config_hash": stamp}))


def inputs(config: str) -> set[str]:
    """The configs whose checkpoints ``config``'s run loads (STARTS_FROM, TRAIN_FIRST)."""
    return ({STARTS_FROM[config]} if config in STARTS_FROM else set()) | set(TRAIN_FIRST.get(config, []))


def next_job(waiting: list, trained: set[str], planned: set[str]):
    """The job of ``waiting`` a free slot takes: the first in FIRST_FREE_SLOT order (unlisted
    configs last, in their order) whose planned inputs are all in ``trained``; None when
    every waiting job still waits for an input."""
    def rank(job) -> int:
        return FIRST_FREE_SLOT.index(job[0]) if job[0] in FIRST_FREE_SLOT else len(FIRST_FREE_SLOT)

    ready = [job for job in waiting if inputs(job[0]) & planned <= trained]
    return min(ready, key=rank) if ready else None


def run_job(job, env: dict, log: Path):
    """Run the commands of ``job`` into ``log``; None when all succeed, else what failed
    (an exit status, or an error starting a command or writing the log)."""
    config, work_dir, stamp, cmds = job
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(log, "w") as f:
            for cmd in cmds:
                f.write("$ " + " ".join(str(c) for c in cmd) + "\n")
                f.flush()
                rc = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, stdout=f,
                                    stderr=subprocess.STDOUT).returncode
                if rc != 0:
                    return f"exit {rc}: {' '.join(map(str, cmd))}"
        record_time(work_dir, time.perf_counter() - t0, stamp)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def run_pool(todo: list, slots: int) -> None:
    """Train and test the jobs of ``todo``, ``slots`` at a time with one thread each (all
    ``slots`` threads for a job that starts with nothing else running or ready), each into
    its work_dir/demo.log; a job starts when the runs it loads are trained (next_job). Prints
    each job's last lines as it ends. After a failure no new job starts; ``SystemExit`` naming
    the failed commands and their logs once the running ones end, or when the waiting jobs
    wait for inputs that no job makes (a cycle in STARTS_FROM / TRAIN_FIRST)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    planned = {job[0] for job in todo}
    waiting, trained, running, failures = list(todo), set(), {}, []
    print(f"\n[demo] {len(todo)} runs, up to {slots} at a time with one thread each; "
          f"each logs to work_dirs/<config stem>/demo.log", flush=True)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(slots) as pool:
        while running or (waiting and not failures):
            while waiting and not failures and len(running) < slots:
                job = next_job(waiting, trained, planned)
                if job is None:
                    break
                waiting.remove(job)
                alone = not running and next_job(waiting, trained, planned) is None
                env = {**os.environ, "OMP_NUM_THREADS": str(slots if alone else 1)}
                log = job[1] / "demo.log"
                print(f"[demo] {time.perf_counter() - t0:5.0f} s  start {Path(job[0]).stem}"
                      + (f" ({slots} threads: nothing else can run yet)" if alone and slots > 1 else ""),
                      flush=True)
                running[pool.submit(run_job, job, env, log)] = (job, log)
            if not running:
                sys.exit("demo: runs wait for inputs that no run makes: "
                         + ", ".join(f"{Path(j[0]).stem} (needs {', '.join(sorted(inputs(j[0])))})"
                                     for j in waiting))
            for future in wait(running, return_when=FIRST_COMPLETED)[0]:
                job, log = running.pop(future)
                failure = future.result()
                tail = log.read_text(errors="replace").splitlines()[-12 if failure is None else -30:]
                print(f"\n--- {log.relative_to(ROOT)} (last lines)\n" + "\n".join(tail))
                print(f"[demo] {time.perf_counter() - t0:5.0f} s  "
                      f"{'FAILED' if failure else 'done'} {Path(job[0]).stem}", flush=True)
                if failure is None:
                    trained.add(job[0])
                else:
                    failures.append(f"{failure}; full log: {log}")
    if failures:
        skipped = f"; not started: {', '.join(Path(j[0]).stem for j in waiting)}" if waiting else ""
        sys.exit("demo: step failed (" + "; ".join(failures) + ")" + skipped)
    print(f"[demo] all runs done in {time.perf_counter() - t0:.1f} s", flush=True)


def current_hash(config: str) -> str:
    """The resolved config's hash, as tools/compare.py stamps its results (a run made with
    other settings is not reused)."""
    from compare import config_hash
    from defectkit.config import load_config

    return config_hash(load_config(ROOT / config))


def trained_with(checkpoint: Path, config: str) -> bool:
    """Whether ``checkpoint`` stores the training settings of ``config`` (what the weights
    depend on: tools/compare.py's ``training_part``)."""
    from compare import checkpoint_config, config_hash, training_part
    from defectkit.config import load_config

    stored = checkpoint_config(checkpoint)
    return stored is not None and config_hash(training_part(stored)) == config_hash(
        training_part(load_config(ROOT / config)))


def move_stale(work_dir: Path) -> None:
    """Move a run made with other settings to ``<stem>.stale`` (replacing an older one)."""
    stale = work_dir.with_name(work_dir.name + ".stale")
    shutil.rmtree(stale, ignore_errors=True)
    work_dir.rename(stale)
    print(f"[demo] {work_dir.relative_to(ROOT)} was made with other settings: redoing it "
          f"(the old run is now {stale.relative_to(ROOT)})")


def describe(says: str, metrics: dict) -> str:
    """The row's "shows" sentence with its numbers; without them (a metric missing) the
    words before the first parenthesis."""
    values = {k: (float("nan") if v is None else v) for k, v in metrics.items()}
    try:
        return says.format(**values)
    except (KeyError, ValueError, TypeError):
        return says.split(" (")[0]


def plan(config: str, fresh: bool, train: bool = True, test: bool = True):
    """The job ``(config, work_dir, stamp, commands)`` that (re)makes ``config``'s run, or None
    when a finished run made with the same settings is reused (one made with other settings
    is moved to ``<stem>.stale``)."""
    stem = Path(config).stem
    work_dir = ROOT / "work_dirs" / stem
    timing = work_dir / "demo_time.json"
    stamp = current_hash(config)
    done = finished(work_dir, trains=train, tests=test)
    if done and not fresh and json.loads(timing.read_text()).get("config_hash") != stamp:
        move_stale(work_dir)
        done = False
    elif not fresh and train and (work_dir / "latest.pth").is_file() \
            and not trained_with(work_dir / "latest.pth", config):
        move_stale(work_dir)     # weights of other settings: --resume would continue (or keep) them
        done = False
    if done and not fresh:
        print(f"[demo] reusing the finished run in {work_dir.relative_to(ROOT)} (--fresh redoes it)")
        return None
    cmds = []
    if train:
        cmds.append([PY, "tools/train.py", config, "--work-dir", work_dir] + ([] if fresh else ["--resume"]))
    if test:
        cmds.append([PY, "tools/test.py", config, *([work_dir / "latest.pth"] if train else []),
                     "--work-dir", work_dir])
    return config, work_dir, stamp, cmds


def plan_jobs(runs: list, fresh: bool) -> list:
    """The jobs ``(config, work_dir, stamp, commands)`` that (re)make the rows of ``runs``, in
    table order: each row's TRAIN_FIRST parts before it. A row is redone (from scratch) when a
    part it samples from, or the row it starts from (STARTS_FROM), is (re)made."""
    todo = []
    planned: set[str] = set()
    for family, config, shown, says in runs:
        retrained = STARTS_FROM.get(config) in planned
        for first in TRAIN_FIRST.get(config, []):
            if first in planned:
                retrained = True
                continue
            job = plan(first, fresh, test=False)
            if job is not None:
                todo.append(job)
                planned.add(first)
                retrained = True
        job = plan(config, fresh or retrained, train=not loads_own_weights(config))
        if job is not None:
            todo.append(job)
            planned.add(config)
    return todo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fresh", action="store_true", help="regenerate data and retrain")
    p.add_argument("--only", nargs="+", metavar="FAMILY",
                   help="run only the rows of these families (case-insensitive, e.g. Defect-Gen PaDiM), "
                        "with the configs they train first and the rows they start from (detector: "
                        "the classifier); the interleaved detector ATT runs only when "
                        "both detector rows are selected")
    args = p.parse_args(argv)
    runs = select_rows(RUNS, args.only)
    t_start = time.perf_counter()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    for out, synth_args in DATASETS.items():
        if args.only and not uses_data(runs, out):
            continue
        make_data(out, synth_args, args.fresh)

    todo = plan_jobs(runs, args.fresh)
    if len(todo) == 1:      # one run: in the foreground, with its progress bar and every thread
        config, work_dir, stamp, cmds = todo[0]
        t0 = time.perf_counter()
        for cmd in cmds:
            run(cmd)
        record_time(work_dir, time.perf_counter() - t0, stamp)
    elif todo:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        run_pool(todo, slots=max(1, min(len(todo), cores or 1)))

    rows = []
    for family, config, shown, says in runs:
        stem = Path(config).stem
        work_dir = ROOT / "work_dirs" / stem
        train_s = json.loads((work_dir / "demo_time.json").read_text())["train_test_s"]
        ckpt = [] if loads_own_weights(config) else [work_dir / "latest.pth"]
        run([PY, "tools/benchmark.py", config, *ckpt, "--out", work_dir / "benchmark.json"])
        metrics = json.loads((work_dir / "test" / "metrics.json").read_text())["metrics"]
        bench = json.loads((work_dir / "benchmark.json").read_text())
        rows.append((family, stem, shown, says, metrics, bench, train_s))

    # ATT of the compared detectors from ONE process, calls interleaved image by image, so that
    # a busy CPU slows both alike (their sequential tools/test.py ATTs can differ 2x under load)
    att_json = ROOT / "work_dirs" / "demo_detector_att.json"
    if all(any(config == c for _, config, _, _ in runs) for c in ATT_PAIR):
        run([PY, "benchmarks/detector_att_interleaved.py",
             *[a for c in ATT_PAIR for a in (c, ROOT / "work_dirs" / Path(c).stem / "latest.pth")],
             "--out", att_json])
        for name, att in json.loads(att_json.read_text())["models"].items():
            for _, stem, _, _, metrics, _, _ in rows:
                if stem == name:
                    metrics.update({k: att[k] for k in ("att_ms", "att_normal_ms", "att_defective_ms", "ratio")})
                    metrics["gated"] = 1.0 - att["pass_rate"] if att.get("pass_rate") is not None else None

    print("\n## defectkit demo results (CPU, synthetic data)\n")
    print("Detectors: small Faster R-CNN, backbone from the classifier row; their ATT columns were "
          "timed interleaved in one process (work_dirs/demo_detector_att.json).")
    last_header = None
    for family, stem, shown, says, metrics, bench, train_s in rows:
        header = ["family", "config"] + [label for _, label in shown] + ["ms/img (p50)", "params (M)",
                                                                         "train+test (s)", "shows"]
        if header != last_header:   # one table per set of columns
            print(("\n" if last_header else "") + "| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
            last_header = header
        vals = [metrics.get(key) for key, _ in shown]
        cells = [family, stem] + [f"{v:.3f}" if isinstance(v, (int, float)) else "n/a" for v in vals] + [
            f"{bench['ms_per_image']['p50']:.1f}", f"{bench['params'] / 1e6:.2f}", f"{train_s:.0f}",
            describe(says, metrics)]
        print("| " + " | ".join(cells) + " |")
    print("\ntrain+test: wall seconds of the row's run, made with one thread while other runs used "
          "the other cores (the detector rows start once the classifier is trained); the Defect-Gen "
          "row's time is its sampling test (its parts' training is in "
          + ", ".join(f"work_dirs/{Path(c).stem}" for c in TRAIN_FIRST[DEFECTGEN]) + ")")
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; outputs in work_dirs/")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
