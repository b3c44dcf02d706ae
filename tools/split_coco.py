"""Random train/test split of a COCO json over image ids, exactly as DefectNet's
``coco_split.py``: ``random.seed(666); random.shuffle(ids); train = ids[:int(0.8 * N)]``
(not stratified).

    python tools/split_coco.py data/fabric/annotations/instances_all.json --out-dir data/fabric/annotations

Writes ``instance_train.json`` and ``instance_test.json`` (the original names; every other
top-level key such as ``info`` and ``categories`` is copied) and prints the image counts,
normal / defective per split. An image is normal iff it has no annotation of a defect
category; ``--normal-category 0`` marks DefectNet's "背景" category as not a defect.
"""
import argparse
import json
import random
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("in_json", help="COCO json with every image")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--ratio", type=float, default=0.8, help="train fraction (default 0.8)")
    p.add_argument("--seed", type=int, default=666, help="random.seed (default 666, as the original)")
    p.add_argument("--normal-category", type=int, default=None,
                   help="category id that marks normal images (DefectNet: 0)")
    p.add_argument("--prefix", default="instance", help="output names <prefix>_{train,test}.json")
    return p.parse_args(argv)


def split_ids(ids, ratio=0.8, seed=666):
    """(train_ids, test_ids): the original's shuffle with Python's ``random`` module."""
    ids = list(ids)
    random.seed(seed)
    random.shuffle(ids)
    n_train = int(ratio * len(ids))
    return ids[:n_train], ids[n_train:]


def defective_ids(data: dict, normal_category=None) -> set:
    return {a["image_id"] for a in data.get("annotations", [])
            if normal_category is None or int(a["category_id"]) != int(normal_category)}


def subset(data: dict, ids) -> dict:
    keep = set(ids)
    out = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    out["images"] = [im for im in data["images"] if im["id"] in keep]
    out["annotations"] = [a for a in data.get("annotations", []) if a["image_id"] in keep]
    return out


def main(argv=None):
    args = parse_args(argv)
    if not 0.0 < args.ratio < 1.0:
        sys.exit(f"--ratio must be in (0, 1), got {args.ratio}")
    with open(args.in_json, encoding="utf-8") as f:
        data = json.load(f)
    ids = [im["id"] for im in data["images"]]
    train, test = split_ids(ids, args.ratio, args.seed)
    defect = defective_ids(data, args.normal_category)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, part in (("train", train), ("test", test)):
        path = out_dir / f"{args.prefix}_{name}.json"
        sub = subset(data, part)
        path.write_text(json.dumps(sub, ensure_ascii=False))
        n_d = sum(1 for i in part if i in defect)
        counts[name] = {"images": len(part), "normal": len(part) - n_d, "defective": n_d,
                        "annotations": len(sub["annotations"]), "path": str(path)}
    n_d = len(set(ids) & defect)
    print(f"{args.in_json}: {len(ids)} images ({len(ids) - n_d} normal / {n_d} defective), "
          f"seed {args.seed}, ratio {args.ratio}")
    for name, c in counts.items():
        print(f"  {name:5s} {c['images']:6d} images ({c['normal']} normal / {c['defective']} defective), "
              f"{c['annotations']} annotations -> {c['path']}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
