"""Train (or fit) a model from a config.

    python tools/train.py configs/classifier/resnet18_tiny_synth.yaml
    python tools/train.py CONFIG --cfg-options train.epochs=24 optimizer.lr=0.01
    python tools/train.py CONFIG --resume               # from work_dir/last_checkpoint
    python tools/train.py CONFIG --resume work_dirs/x/epoch_4.pth
    torchrun --nproc_per_node 2 tools/train.py CONFIG   # DistributedDataParallel

The work dir (default work_dirs/<config-stem>/) receives config.yaml (resolved),
train.log, scalars.jsonl, epoch_N.pth, latest.pth, best_<metric>.pth.
"""
import argparse

from _common import add_cfg_options, load


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config file")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/<config-stem>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="resume training: no value = the newest checkpoint in the work dir")
    p.add_argument("--load-from", help="initialise weights from a checkpoint (no optimizer/epoch)")
    p.add_argument("--seed", type=int, help="random seed (default: the config's `seed`)")
    p.add_argument("--deterministic", action="store_true", help="use deterministic algorithms")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (train.amp=true)")
    add_cfg_options(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.amp:
        args.cfg_options.append("train.amp=true")
    cfg = load(args)
    from defectkit.engine import default_work_dir, train

    work_dir = args.work_dir or cfg.get("work_dir") or default_work_dir(args.config)
    train(cfg, work_dir=work_dir, resume=args.resume, load_from=args.load_from, seed=args.seed,
          deterministic=args.deterministic or None, device=args.device)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
