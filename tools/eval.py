"""Evaluate weights on the config's validation set (PaddleClas's tools/eval.py; the same as tools/train.py
--evaluate-only, which stays).

    python tools/eval.py -c configs/lvvit/lvvit_tiny.yaml --load W.pdparams [-o key.sub=value ...]
    python -m paddle.distributed.launch --gpus=0,1,2,3 tools/eval.py -c ... --load W.pdparams

--load takes our .pdparams or an official checkpoint (.pth/.pth.tar/.pt/.bin/.safetensors). Prints
top-1, top-5, the number of images and images/s.
"""
from __future__ import annotations

import argparse

import train

from passl_tl.utils.cli import add_config_arguments, run_tool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--load", required=True, help="weights: .pdparams or an official "
                        ".pth/.pth.tar/.pt/.bin/.safetensors")
    parser.add_argument("--use-ema", action="store_true", help="with an official checkpoint: take its state_dict_ema")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """The metrics of ``train.py --evaluate-only`` with these arguments."""
    args = parse_args(argv)
    overrides = ["-o", *args.override] if args.override else []
    use_ema = ["--use-ema"] if args.use_ema else []
    return train.main(["-c", args.config, *overrides, "--load", args.load, *use_ema, "--evaluate-only"])


if __name__ == "__main__":
    run_tool(main)
