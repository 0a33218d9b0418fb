"""Draw an image beside its token labels: per cell the top class (a colour per class, legend with
names) and its confidence; with --crop also a sampled training crop/flip and its token targets.

    python tools/visualize_token_labels.py data/demo/train/n00000003/n00000003_0005.JPEG \\
        data/demo/label_top5_train/n00000003/n00000003_0005.npy --class-names data/demo/classes.txt \\
        --crop --seed 1 --out token_labels.png

LABEL is a [2, k, H, W] .npy file (or an official .pt/.pth file). --class-names takes a names
file (<wnid> <name>, <id> <name> or <name> lines) or "imagenet" for the bundled ImageNet-1k names.
"""
from __future__ import annotations

import argparse

from passl_tl.deploy.class_names import imagenet_class_names, read_class_names
from passl_tl.token_labels.visualize import Figure, visualize_token_labels
from passl_tl.utils.cli import run_tool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="image file")
    parser.add_argument("label", help="its token-label file")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--class-names", help='names file, or "imagenet" (default: class ids only)')
    parser.add_argument("--crop", action="store_true", help="also show a sampled training crop/flip")
    parser.add_argument("--seed", type=int, default=0, help="draws the crop and flip (default 0)")
    parser.add_argument("--size", type=int, default=224, help="training crop size in pixels (default 224)")
    parser.add_argument("--label-size", type=int, default=14, help="token grid of the targets (default 14)")
    parser.add_argument("--crop-scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"),
                        help="crop area range as fractions of the image (default 0.08 1.0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Figure:
    args = parse_args(argv)
    names = None
    if args.class_names:
        names = imagenet_class_names() if args.class_names == "imagenet" else read_class_names(args.class_names)
    figure = visualize_token_labels(args.image, args.label, names, args.crop, args.seed, args.size,
                                    args.label_size, args.crop_scale)
    figure.image.save(args.out)
    print(f"wrote {args.out} ({figure.image.width}x{figure.image.height})")
    return figure


if __name__ == "__main__":
    run_tool(main)
