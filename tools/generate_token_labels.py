"""Generate token labels for an image folder with a teacher (the official NFNet-F6 procedure).

    python tools/generate_token_labels.py -c CONFIG --teacher-weights W --data DIR --out DIR \\
        [--img-size S] [--crop-pct 1.0] [--topk 5] [--batch-size 32] [-o model.img_size=S ...]
    python -m paddle.distributed.launch --gpus=0,1,2,3 tools/generate_token_labels.py ...

The teacher is the config's ``model:`` (any registered model; replace it with e.g.
``-o "model={name: regnety_160}"``), loaded from ``--teacher-weights`` (.pdparams or an official
.pth). Its classifier is applied at every position of its last feature map and the top-k logits
and class ids per position are saved as ``<out>/<wnid>/<stem>.npy`` (float16 [2, k, H, W]; float32
for a teacher of more than 2049 classes, whose ids float16 would round) for every image of
``--data`` (``<DIR>/<wnid>/<image>``); images of one folder that share a stem (``a.b.JPEG``,
``a.b.png``) get ``<wnid>/<file name>.npy`` each. Images are resized by ``--crop-pct`` and
centre-cropped to ``--img-size`` with the config's eval interpolation and normalisation. Runs
resume: images with a valid label file are skipped. The teacher's top-1 (logits averaged over
positions) is printed unless ``--transfer`` says the folder's classes are not the teacher's.
"""
from __future__ import annotations

import argparse

import passl_tl  # noqa: F401  (before Paddle: names a missing install in one line, quiets its import)

from passl_tl import build_model, load_weights
from passl_tl.datasets.imagenet_token_label import ImageNetTokenLabel
from passl_tl.engine.data import reader_errors_raised
from passl_tl.engine.run_config import apply_device, load_run_config
from passl_tl.token_labels.generation import LabelingResult, eval_transform_specs, generate_token_labels
from passl_tl.utils.cli import add_config_arguments, run_tool
from passl_tl.utils.dist import init_distributed, is_main
from passl_tl.utils.logger import setup_logger


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, config_help="YAML config: the teacher (model:) and its eval transforms")
    parser.add_argument("--teacher-weights", required=True, help="teacher weights: "
                        ".pdparams or an official .pth/.pth.tar/.pt/.bin/.safetensors")
    parser.add_argument("--data", required=True, help="image folder <DIR>/<wnid>/<image> to label")
    parser.add_argument("--out", required=True, help="label root: <OUT>/<wnid>/<stem>.npy")
    parser.add_argument("--img-size", type=int, help="teacher input size (default: the config's eval size)")
    parser.add_argument("--crop-pct", type=float, default=1.0, help="centre-crop fraction (default 1.0)")
    parser.add_argument("--topk", type=int, default=5, help="logits kept per position (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass and process")
    parser.add_argument("--num-workers", type=int, default=2, help="data loading workers per process")
    parser.add_argument("--class-list", help="wnids in the teacher's class order (default: sorted folders)")
    parser.add_argument("--transfer", action="store_true",
                        help="the folder's classes are not the teacher's: do not report its top-1")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.num_workers < 0 or (args.img_size is not None and args.img_size < 1):
        parser.error("--batch-size and --img-size must be >= 1, --num-workers >= 0")
    return args


def teacher_accuracy(result: LabelingResult, data_classes: int, teacher_classes: int, transfer: bool) -> str:
    """The teacher's top-1 line (on the images labelled in this run), or why there is none."""
    if transfer:
        return "teacher top-1 not reported (--transfer)"
    if data_classes != teacher_classes:
        return (f"teacher top-1 not reported: the folder has {data_classes} classes, the teacher "
                f"{teacher_classes} (--transfer silences this)")
    if not result.written:
        return "teacher top-1 not reported: no image labelled in this run"
    return (f"teacher top-1 {100.0 * result.correct / result.written:.3f} on the {result.written} images "
            f"labelled (logits averaged over positions)")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = load_run_config(args.config, args.override)
    apply_device(cfg)  # the device, its CPU threads (the config's threads key)
    init_distributed()
    logger = setup_logger()
    transforms = eval_transform_specs(cfg, args.img_size, args.crop_pct)
    dataset = ImageNetTokenLabel(args.data, transforms=transforms, class_list=args.class_list)
    model = build_model(cfg)
    logger.info(f"teacher {cfg['model']['name']}: {load_weights(model, args.teacher_weights)}")
    with reader_errors_raised():  # a bad image: its error, not the loader's "Blocking queue is killed"
        result = generate_token_labels(model, dataset, args.out, args.topk, args.batch_size, args.num_workers)
    if is_main():
        print(f"{result.total} images: {result.written} labelled, {result.skipped} already labelled; "
              f"labels in {args.out}")
        print(teacher_accuracy(result, dataset.num_classes, model.num_classes, args.transfer), flush=True)
    return result._asdict()


if __name__ == "__main__":
    run_tool(main)
