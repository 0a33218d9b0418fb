"""Export a trained model to a Paddle inference model (and ONNX) for deployment.

    python tools/export_model.py -c configs/lvvit/lvvit_small.yaml --load W.pdparams --out output/lvvit_small_infer
    python tools/export_model.py -c CONFIG --load official.pth.tar [-o key=value ...] [--class-names FILE] --out DIR
    python tools/export_model.py -c CONFIG --load W.pdparams --out DIR --onnx

Writes DIR/inference.json (program; inference.pdmodel without PIR), DIR/inference.pdiparams and
DIR/inference_meta.json (input shape, the config's data.val.transforms, class names). The model
takes [N, 3, H, W] float32 images preprocessed by those transforms and returns eval logits.
--onnx: also DIR/model.onnx (ONNX opset 17, dynamic batch), converted from that program by paddle2onnx
and checked against the model with ONNX Runtime (needs pip install -e ".[onnx]").
"""
from __future__ import annotations

import argparse

import passl_tl  # noqa: F401  (before Paddle: names a missing install in one line, quiets its import)
import paddle

from passl_tl.deploy import DygraphPredictor, export_model, read_metadata, resolve_class_names
from passl_tl.deploy.onnx_model import OPSET as ONNX_OPSET
from passl_tl.utils.cli import add_config_arguments, run_tool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, config_help="YAML config of the model and its data.val.transforms")
    parser.add_argument("--load", required=True, help="weights: "
                        ".pdparams or an official .pth/.pth.tar/.pt/.bin/.safetensors")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--class-names", help="class names to store: lines '<id or wnid> <name>' or '<name>' "
                                              "(default: ImageNet-1k names for 1000 classes, else none)")
    parser.add_argument("--onnx", action="store_true", help=f"also write model.onnx there (paddle2onnx, opset "
                                                            f"{ONNX_OPSET}, dynamic batch), checked with ONNX Runtime")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[str]:
    """Export and print the written files; returns their paths."""
    args = parse_args(argv)
    paddle.set_device("cpu")
    dygraph = DygraphPredictor(args.config, args.load, args.override)
    names = resolve_class_names(dygraph.num_classes, args.class_names, dygraph.class_names)
    written = export_model(dygraph.model, args.out, dygraph.preprocess, names,
                           source={"config": args.config, "weights": args.load}, onnx=args.onnx)
    height, width = dygraph.preprocess.output_size()
    origin = args.class_names or ("the config's" if dygraph.class_names else "ImageNet-1k" if names
                                  else "none stored, predictions show ids")
    print(f"exported {args.config} with weights {args.load}: input [N, 3, {height}, {width}] float32, "
          f"{dygraph.num_classes} classes (class names: {origin})")
    if args.onnx:
        onnx = read_metadata(args.out)["onnx"]
        print(f"ONNX opset {onnx['opset']}: ONNX Runtime's logits are the model's to {onnx['check_max_abs_diff']:.2g} "
              "(max abs difference, random images)")
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    run_tool(main)
