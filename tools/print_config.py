"""Print the fully resolved config (bases merged, overrides applied, validated).

    python tools/print_config.py configs/classifier/resnet18_tiny_synth.yaml --cfg-options train.epochs=2
"""
import argparse

from _common import add_cfg_options, load


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    add_cfg_options(p)
    args = p.parse_args(argv)
    from defectkit.config import to_yaml

    print(to_yaml(load(args)), end="")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
