"""Classify images (PaddleClas's tools/infer.py): tools/predict.py under the name PaddleClas users type.

    python tools/infer.py IMAGE_OR_DIR -c configs/lvvit/lvvit_small.yaml --load W.pdparams
    python tools/infer.py IMAGE_OR_DIR --inference-model DIR [--topk 5] [--class-names FILE] [--json]

The arguments and output are those of tools/predict.py (python tools/predict.py -h).
"""
from predict import main

from passl_tl.utils.cli import run_tool

if __name__ == "__main__":
    run_tool(main)
