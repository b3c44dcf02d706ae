"""Train (or reuse) and test several configs, then print the seed-style Markdown table.

    python tools/compare.py configs/defectnet/*_tiny_synth.yaml [--train] [--out table.md]

For each config, ``<work-root>/<config-stem>/test/metrics.json`` (what tools/test.py
writes) is reused when present. Otherwise the checkpoint ``<work-root>/<stem>/latest.pth``
is tested with tools/test.py, and when it is missing too (or with --train) the config is
first trained, in this process, with the rounds API (``defectkit.engine.rounds.run_rounds``,
one round per run, its sub-work-dir named ``<stem>`` or ``<stem>_seed<N>``). Models that load
their own weights (the two-model baseline, from its classifier and detector checkpoints) are
only tested. Testing runs tools/test.py as a subprocess, the command printed before it runs.
The columns are those each config's evaluator declares (``table_columns`` of its
``evaluation.type``; configs whose evaluators declare the same columns share a table), e.g.:

- detection (and classifiers next to it): ``Model | mAP | F1 | ATT(ms) | ATT_N | ATT_D``
  (F1 = image-level macro F1; ATT = model-call ms per image, over all / GT-normal /
  GT-defective images);
- segmentation: ``Model | mIoU | defect IoU | ms/img | params``
  (mmseg-style dataset IoUs, model-call ms per image, parameter count);
- anomaly: ``Model | image AUROC | pixel AUROC | AUPRO | ms/img``.

A metric a model does not report (mAP of a classifier) is ``n/a``. ``--metrics KEY ...``
adds columns for other keys of ``metrics.json`` (per-class IoU: ``IoU.scratch IoU.crack``).

    python tools/compare.py configs/znet/znet_tiny_ballscrew.yaml configs/znet/unet_tiny_ballscrew.yaml

Small models on small sets vary a lot from run to run; ``--seeds 0 1 2`` trains every config
once per seed (work dirs ``<stem>_seed<N>``), prints the per-run table and then one with
mean ± sample std per config.

``--cfg-options KEY=VALUE ...`` applies to every config (the training and tools/test.py).
A result is only reused when it was made with the same settings: compare writes
``config_hash`` (SHA-256 of the resolved config, seed included, without the keys in
HASH_EXCLUDES that do not change a result: work dir, device, data loader workers, logging,
checkpoint keeping, benchmark settings, test overlays) into every ``metrics.json`` it
writes, and compares a checkpoint through the config stored in it. When they differ:

- metrics made with other settings, checkpoint made with these (test-only settings:
  ``data.test``, ``evaluation``, ``benchmark`` do not count): re-tested (cheap);
- checkpoint trained with other settings: compare stops with one line naming the keys that
  differ, so that a trained checkpoint is never overwritten by surprise; ``--retrain``
  retrains exactly those configs (``--train`` retrains all), ``--work-root DIR`` keeps both;
- metrics.json without a hash (written before): judged by its checkpoint's stored config;
  reused with a note only when neither holds one.
"""
import argparse
import copy
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import add_cfg_options

from defectkit.progress import track

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# dotted keys of a resolved config that do not change a result: where and how fast it runs,
# what is logged or kept on disk; everything else (model, data, schedule, seed ...) counts
HASH_EXCLUDES = ("work_dir", "device", "data.num_workers", "train.log_interval", "train.tensorboard",
                 "train.progress", "train.checkpoint_interval", "train.max_keep_ckpts",
                 "train.find_unused_parameters", "benchmark", "evaluation.num_overlays")


def columns_of(cfg: dict) -> tuple:
    """The table columns declared by the evaluator of ``cfg`` (``evaluation.type``)."""
    import defectkit  # noqa: F401  (registers the evaluators)
    from defectkit.evaluation.base import table_columns
    from defectkit.registry import EVALUATORS

    ev_type = (cfg.get("evaluation") or {}).get("type")
    if ev_type is None or ev_type not in EVALUATORS:
        return table_columns(None)
    return table_columns(EVALUATORS.get(ev_type))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", metavar="CONFIG")
    p.add_argument("--train", action="store_true", help="(re)train and test every config")
    p.add_argument("--retrain", action="store_true",
                   help="retrain (and test) the configs whose stored checkpoint was trained with other "
                        "settings (default: stop and say which keys differ)")
    p.add_argument("--work-root", default="work_dirs", help="parent of the work dirs (default work_dirs)")
    p.add_argument("--device", help="the training device and tools/test.py's --device")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="train and test each config once per seed (work dirs <stem>_seed<SEED>) and "
                        "report mean ± std over the seeds, after the per-run table")
    p.add_argument("--out", help="also write the Markdown table to this file")
    p.add_argument("--metrics", nargs="+", default=[], metavar="KEY",
                   help="extra columns after the evaluator's own: keys of metrics.json's "
                        "\"metrics\", e.g. IoU.scratch IoU.crack (n/a where a run lacks one); "
                        "put it after the configs")
    add_cfg_options(p)
    return p.parse_args(argv)


def run(cmd) -> None:
    print("\n$ " + " ".join(str(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"compare: step failed (exit {proc.returncode}): {' '.join(map(str, cmd))}")
    print(f"[compare] done in {time.perf_counter() - t0:.1f} s", flush=True)


def resolved_config(config: str, cfg_options=None, seed: int | None = None) -> dict:
    """The config as tools/train.py resolves it (bases, ``--cfg-options``, ``--seed``);
    a bad option exits with a ``config error:`` line."""
    from defectkit.config import ConfigError, load_config

    try:
        cfg = load_config(config, list(cfg_options) if cfg_options else None, validate=False)
    except ConfigError as e:
        sys.exit(f"config error: {config}: {e}")
    if seed is not None:
        cfg["seed"] = seed
    return cfg


def _comparable(cfg: dict) -> dict:
    """``cfg`` without HASH_EXCLUDES, with the trainer's normalisations (``deterministic``
    false when unset; no ``seed`` when none is set, as the trainer then draws one)."""
    cfg = without(cfg, HASH_EXCLUDES)
    cfg["deterministic"] = bool(cfg.get("deterministic"))
    if cfg.get("seed") is None:
        cfg.pop("seed", None)
    return cfg


def config_hash(cfg: dict) -> str:
    """16 hex digits of the SHA-256 of the resolved config without HASH_EXCLUDES
    (canonical JSON: sorted keys), equal for equal settings."""
    text = json.dumps(_comparable(cfg), sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# what testing alone reads: a checkpoint made with other values of these is re-tested, not retrained
TEST_ONLY = ("data.test", "evaluation", "benchmark")


def training_part(cfg: dict) -> dict:
    """``cfg`` without TEST_ONLY: the settings a checkpoint's weights depend on."""
    return without(cfg, TEST_ONLY)


def without(cfg: dict, dotted_keys) -> dict:
    """A deep copy of ``cfg`` with the ``dotted_keys`` (e.g. ``data.test``) removed."""
    cfg = copy.deepcopy(cfg)
    for dotted in dotted_keys:
        *parents, last = dotted.split(".")
        node = cfg
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return cfg


def config_diff(a: dict, b: dict, limit: int = 3) -> str:
    """The first ``limit`` dotted keys whose values differ, ``key: A != B``."""
    out: list[str] = []
    unset = object()

    def show(v):
        return "unset" if v is unset else json.dumps(v, default=str)[:40]

    def walk(x, y, path):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y), key=str):
                walk(x.get(k, unset), y.get(k, unset), f"{path}.{k}" if path else str(k))
        elif x != y:
            out.append(f"{path}: {show(x)} != {show(y)}")

    walk(_comparable(a), _comparable(b), "")
    more = f" (+{len(out) - limit} more)" if len(out) > limit else ""
    return "; ".join(out[:limit]) + more


def checkpoint_config(ckpt: Path) -> dict | None:
    """The resolved config stored in a defectkit checkpoint (None when it has none)."""
    from defectkit.engine.checkpoint import CheckpointError, load_checkpoint

    try:
        obj = load_checkpoint(ckpt)
    except CheckpointError as e:
        sys.exit(f"compare: {e}")
    cfg = (obj.get("meta") or {}).get("config") if isinstance(obj, dict) else None
    return cfg if isinstance(cfg, dict) else None


def loads_own_weights(config: str | dict) -> bool:
    """The two-model baseline loads its parts' checkpoints: it is tested, never trained."""
    import defectkit  # noqa: F401  (registers the models)
    from defectkit.config import load_config
    from defectkit.engine.builders import loads_own_weights as model_loads_own_weights

    cfg = config if isinstance(config, dict) else load_config(config, validate=False)
    return model_loads_own_weights(cfg.get("model") or {})


def stamp(metrics_path: Path, digest: str) -> None:
    """Store ``config_hash`` (and what it leaves out) in the metrics.json tools/test.py wrote."""
    record = json.loads(metrics_path.read_text())
    record["config_hash"] = digest
    record["config_hash_excludes"] = list(HASH_EXCLUDES)
    tmp = metrics_path.with_name(metrics_path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, metrics_path)


def ensure_metrics(config: str, work_root: Path, train: bool, device: str | None = None,
                   seed: int | None = None, cfg_options=None, retrain: bool = False) -> dict:
    """metrics of ``config`` (with ``seed``: of its run ``<stem>_seed<seed>``): reused when
    made with the same settings (config hash), else tested, or trained then tested."""
    stem = Path(config).stem
    work_dir = work_root / (stem if seed is None else f"{stem}_seed{seed}")
    metrics_path = work_dir / "test" / "metrics.json"
    ckpt = work_dir / "latest.pth"
    cfg = resolved_config(config, cfg_options, seed)
    want = config_hash(cfg)
    own_weights = loads_own_weights(cfg)    # e.g. two-model: tested from its parts' checkpoints
    do_test = train or not metrics_path.is_file()
    if not do_test:
        have = json.loads(metrics_path.read_text()).get("config_hash")
        if have is None and not own_weights and ckpt.is_file():
            # written before compare stored hashes: judge it by its checkpoint's settings
            stored = checkpoint_config(ckpt)
            have = config_hash(stored) if stored is not None else None
        if have is None:
            print(f"[compare] reusing {metrics_path} (no config hash stored with it or its checkpoint: "
                  f"its settings cannot be checked; --train retrains)")
        elif have != want:
            print(f"[compare] {metrics_path} was made with other settings (config hash {have} != {want})")
            do_test = True
        else:
            print(f"[compare] reusing {metrics_path} (same config hash {want}; --train retrains)")
    do_train = do_test and not own_weights and (train or not ckpt.is_file())
    if do_test and not do_train and not own_weights:
        stored = checkpoint_config(ckpt)
        if stored is not None and config_hash(training_part(stored)) != config_hash(training_part(cfg)):
            diff = config_diff(training_part(stored), training_part(cfg))
            if not retrain:
                sys.exit(f"compare: {ckpt} was trained with other settings than {Path(config).name}"
                         f"{' + --cfg-options' if cfg_options else ''} ({diff}); "
                         f"pass --retrain to retrain it (overwrites {work_dir}), or --work-root DIR to keep both")
            print(f"[compare] {ckpt} was trained with other settings ({diff}); retraining")
            do_train = True
    opts = ["--cfg-options", *cfg_options] if cfg_options else []
    dev = ["--device", device] if device else []
    if do_train:
        train_runs(cfg, work_dir, device)
    if do_test:
        run([PY, ROOT / "tools/test.py", config, *([] if own_weights else [ckpt]),
             "--out-dir", work_dir / "test", *dev, *opts])
        stamp(metrics_path, want)
    record = json.loads(metrics_path.read_text())
    metrics = dict(record["metrics"])
    if "params" in record:                     # tools/test.py stores the parameter count
        metrics.setdefault("params", record["params"])
    return metrics


def train_runs(cfg: dict, work_dir: Path, device: str | None) -> None:
    """Train ``cfg`` (resolved, seed set) into ``work_dir`` with the rounds API: one round
    whose sub-work-dir is ``work_dir`` (a new run: earlier checkpoints there are replaced)."""
    from defectkit.engine.rounds import run_rounds

    print(f"\n[compare] training {work_dir.name} in {work_dir}", flush=True)
    t0 = time.perf_counter()
    run_rounds(cfg, [{}], work_dir.parent, names=[work_dir.name], device=device)
    print(f"[compare] trained in {time.perf_counter() - t0:.1f} s", flush=True)


def aggregate(runs: list[dict]) -> dict:
    """Per metric over the seeds' runs: ``{key: (mean, sample std, n)}`` for numeric values."""
    out = {}
    for key in runs[0]:
        vals = [r.get(key) for r in runs]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) for v in vals):
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            out[key] = (mean, std, len(vals))
    return out


def fmt(v, digits: int | None) -> str:
    if isinstance(v, tuple):                   # (mean, std, n) over seeds
        mean, std, n = v
        return fmt(mean, digits) if n == 1 else f"{fmt(mean, digits)} ± {fmt(std, digits)}"
    if v is None or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if digits is None:
        return f"{v / 1e6:.2f}M"
    return f"{v:.{digits}f}"


def table(rows: list[tuple[str, dict]], columns) -> str:
    """One Markdown table of ``rows`` (name, metrics) with ``columns`` (header, key, digits)."""
    head = ["Model"] + [c for c, _, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows:
        lines.append("| " + " | ".join([name] + [fmt(m.get(k), d) for _, k, d in columns]) + " |")
    return "\n".join(lines)


def tables(rows: list[tuple[str, dict, tuple]]) -> str:
    """One table per set of columns (``rows``: name, metrics, the columns its config's
    evaluator declares), in the order they first appear."""
    groups: dict[tuple, list] = {}
    for name, m, cols in rows:
        groups.setdefault(tuple(cols), []).append((name, m))
    return "\n\n".join(table(g, list(cols)) for cols, g in groups.items())



def main(argv=None):
    args = parse_args(argv)
    work_root = Path(args.work_root)
    if not work_root.is_absolute():
        work_root = ROOT / work_root
    missing = [c for c in args.configs if not Path(c).is_file() and not (ROOT / c).is_file()]
    if missing:
        sys.exit(f"compare: config not found: {', '.join(missing)}")
    configs = [Path(c).resolve() if Path(c).is_file() else ROOT / c for c in args.configs]
    opts = dict(cfg_options=args.cfg_options, retrain=args.retrain)
    extra = tuple((k, k, 3) for k in args.metrics)
    columns = {c: columns_of(resolved_config(str(c), args.cfg_options)) + extra for c in configs}
    if not args.seeds:
        rows = [(c.stem, ensure_metrics(str(c), work_root, args.train, args.device, **opts), columns[c])
                for c in track(configs, desc="compare", unit="config")]
        out = tables(rows)
        results = [m for _, m, _ in rows]
    else:
        # a model that loads its parts' weights (two-model) has no seed of its own
        jobs = [(c, s) for c in configs for s in ([None] if loads_own_weights(str(c)) else args.seeds)]
        done = {(c, s): ensure_metrics(str(c), work_root, args.train, args.device, s, **opts)
                for c, s in track(jobs, desc="compare", unit="run")}
        results = list(done.values())
        runs, means = [], []
        for c in configs:
            per = [(s, m) for (cc, s), m in done.items() if cc == c]
            runs += [(c.stem if s is None else f"{c.stem} (seed {s})", m, columns[c]) for s, m in per]
            means.append((f"{c.stem} (n={len(per)})", aggregate([m for _, m in per]), columns[c]))
        out = (tables(runs) + f"\n\nMean ± sample std over seeds {' '.join(map(str, args.seeds))}:\n\n"
               + tables(means))
    unknown = [k for k in args.metrics if not any(k in m for m in results)]
    if unknown:
        print(f"compare: --metrics {' '.join(unknown)}: in no run's metrics.json (shown as n/a)",
              file=sys.stderr)
    print("\n" + out)
    if args.out:
        Path(args.out).write_text(out + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
