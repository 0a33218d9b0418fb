"""Pack per-image token-label files into a few memory-mapped shards plus an index.

    python tools/pack_labels.py --labels data/label_top5_train_nfnet --images data/imagenet/train \\
        --out data/label_top5_train_nfnet_packed

Checks first that every image under --images (<wnid>/<image>) has exactly one label
(<labels>/<wnid>/<stem>.npy, or <wnid>/<file name>.npy for images of one folder sharing a stem),
that every label belongs to an image, and that all labels are readable and share one shape (the
most common one). Problems are listed on stderr and nothing is written (exit code 1) unless
--allow-missing, which packs the good labels only. The pack is float16, or float32 when any
label is (class ids above 2048). It is built in a temporary directory renamed to --out at the
end. Train with it: data.train.label_root: <out> and data.train.label_format: packed.
"""
from __future__ import annotations

import argparse
import sys

from passl_tl.datasets.image_folder import scan_image_folder
from passl_tl.token_labels.pack import PackPlan, plan_pack, write_pack
from passl_tl.utils.cli import run_tool
from passl_tl.utils.progress import Progress

DEFAULT_SHARD_SIZE = 100_000  # rows: about 650 MB per shard of [2, 5, 18, 18] float16 labels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", required=True, help="directory of <wnid>/<stem>.npy label files")
    parser.add_argument("--images", required=True, help="training image directory (<wnid>/<image>)")
    parser.add_argument("--out", required=True, help="pack directory to create")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"labels per shard file (default {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--allow-missing", action="store_true",
                        help="pack the good labels even when some image has none (or a bad one)")
    return parser.parse_args(argv)


def report_problems(plan: PackPlan) -> None:
    """Every problem of ``plan`` on stderr, one per line."""
    for image in plan.missing:
        print(f"missing label: image {image} has no label file", file=sys.stderr)
    for path in plan.extra:
        print(f"extra label: {path} belongs to no image", file=sys.stderr)
    for error in plan.invalid:
        print(f"invalid label: {error}", file=sys.stderr)
    print(f"{len(plan.missing)} images without a label, {len(plan.extra)} labels without an image, "
          f"{len(plan.invalid)} invalid labels", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Check and pack; returns the exit code (1 when there are problems and no --allow-missing)."""
    args = parse_args(argv)
    images = [path for path, _ in scan_image_folder(args.images)[0]]
    with Progress(len(images), "checked labels") as progress:
        plan = plan_pack(images, args.labels, progress.update)
    if plan.problems:
        report_problems(plan)
        if not args.allow_missing:
            print(f"nothing written: fix the labels or pass --allow-missing to pack the "
                  f"{len(plan.labels)} good ones", file=sys.stderr)
            return 1
    with Progress(len(plan.labels), "packed labels") as progress:
        index = write_pack(args.out, plan, args.shard_size, progress.update)
    print(f"{args.out}: {len(plan.labels)} labels of shape {list(index.shape)} {index.dtype} in "
          f"{len(index.shards)} shards for {len(images)} images")
    return 0


if __name__ == "__main__":
    run_tool(main)
