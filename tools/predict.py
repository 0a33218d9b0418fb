"""Classify images with a trained model (config + weights) or an exported inference model, on the CPU.

    python tools/predict.py IMAGE_OR_DIR -c configs/lvvit/lvvit_small.yaml --load W.pdparams
    python tools/predict.py IMAGE_OR_DIR --inference-model DIR [--backend auto|paddle|onnxruntime] [--topk 5]
                            [--class-names FILE] [--batch-size 8] [--json]

Prints one line per image: its top-k class ids, names and softmax probabilities (--json: one JSON
object per line). A directory is searched recursively for images (sorted paths). An image that
cannot be read is reported on stderr and skipped; the exit code is then 1 (2 for a bad
config, model or arguments). Class names: --class-names, else those stored with the exported
model, else ImageNet-1k names for 1000 classes, else the class ids alone. An exported model runs on
ONNX Runtime when DIR has model.onnx (export_model.py --onnx) and onnxruntime is installed (the faster
CPU path), else on Paddle Inference with oneDNN; --backend chooses one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

import passl_tl  # noqa: F401  (before Paddle: names a missing install in one line, quiets its import)
import paddle

from passl_tl.datasets.image_folder import IMG_EXTENSIONS, read_rgb
from passl_tl.deploy import BACKENDS, DygraphPredictor, load_exported, resolve_class_names, top_k
from passl_tl.utils.cli import add_config_arguments, run_tool
from passl_tl.utils.threads import set_cpu_threads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", help="an image file or a directory of images")
    add_config_arguments(parser, required=False,
                         config_help="YAML config (with --load): predict with the dygraph model")
    parser.add_argument("--load", help="weights for -c: .pdparams or an official .pth/.pth.tar/.pt/.bin/.safetensors")
    parser.add_argument("--inference-model", metavar="DIR", help="directory written by tools/export_model.py")
    parser.add_argument("--backend", choices=["auto", *BACKENDS],
                        help="runtime of --inference-model: auto (default: onnxruntime if DIR has model.onnx and "
                             "onnxruntime is installed, else paddle), paddle (Paddle Inference) or onnxruntime")
    parser.add_argument("--topk", type=int, default=5, help="classes to print per image (default 5)")
    parser.add_argument("--class-names", help="lines '<id or wnid> <name>' or '<name>', in class order")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--threads", type=int, default=0, help="CPU math threads (default 0: all available CPUs)")
    args = parser.parse_args(argv)
    if (args.inference_model is None) == (args.config is None):
        parser.error("give either -c CONFIG --load WEIGHTS or --inference-model DIR")
    if args.config is not None and args.load is None:
        parser.error("-c CONFIG needs --load WEIGHTS")
    if args.override and args.config is None:
        parser.error("-o applies to -c CONFIG only")
    if args.backend and args.inference_model is None:
        parser.error("--backend applies to --inference-model DIR only")
    if args.topk < 1 or args.batch_size < 1 or args.threads < 0:
        parser.error("--topk and --batch-size must be >= 1, --threads >= 0")
    return args


def find_images(path: str) -> list[str]:
    """``[path]`` for a file; for a directory every image under it (``IMG_EXTENSIONS``, hidden
    directories such as ``.ipynb_checkpoints`` skipped), sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} does not exist")
    images = []
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        images += [os.path.join(root, name) for name in names if name.lower().endswith(IMG_EXTENSIONS)]
    images.sort()
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {path}")
    return images


def format_prediction(path: str, ids: np.ndarray, probs: np.ndarray, names: list[str] | None,
                      as_json: bool) -> str:
    if as_json:
        return json.dumps({"image": path, "topk": [
            {"id": int(i), "name": names[i] if names else None, "prob": float(p)} for i, p in zip(ids, probs)]},
            ensure_ascii=False)
    return f"{path}: " + " | ".join(f"{i} {names[i]} {p:.4f}" if names else f"{i} {p:.4f}"
                                    for i, p in zip(ids, probs))


def main(argv: list[str] | None = None) -> int:
    """Print the predictions; returns 1 if some image could not be read, else 0."""
    args = parse_args(argv)
    paddle.set_device("cpu")
    threads = set_cpu_threads(args.threads)
    paths = find_images(args.images)
    if args.inference_model:
        predictor = load_exported(args.inference_model, args.backend or "auto", threads)
    else:
        predictor = DygraphPredictor(args.config, args.load, args.override)
    names = resolve_class_names(predictor.num_classes, args.class_names, predictor.class_names)
    failed = 0
    for start in range(0, len(paths), args.batch_size):
        batch, readable = [], []
        for path in paths[start:start + args.batch_size]:
            try:
                batch.append(predictor.preprocess(read_rgb(path)))
                readable.append(path)
            except (OSError, ValueError) as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
                failed += 1
        if not batch:
            continue
        ids, probs = top_k(predictor(np.stack(batch)), min(args.topk, predictor.num_classes))
        for path, row_ids, row_probs in zip(readable, ids, probs):
            print(format_prediction(path, row_ids, row_probs, names, args.json), flush=True)
    if failed:
        print(f"{failed} of {len(paths)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    run_tool(main)
