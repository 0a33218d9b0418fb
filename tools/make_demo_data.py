"""Write the synthetic demo dataset (ImageNet layout + top-5 token labels).

    python tools/make_demo_data.py --out data/demo
"""
from __future__ import annotations

import argparse

from passl_tl.datasets.demo import make_demo_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/demo", help="output directory")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=60)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = make_demo_dataset(args.out, num_classes=args.num_classes, train_per_class=args.train_per_class,
                            val_per_class=args.val_per_class, image_size=args.image_size, seed=args.seed)
    print(f"demo data in {out}: {args.num_classes} classes, {args.train_per_class} train + "
          f"{args.val_per_class} val images per class, {args.image_size}x{args.image_size} pixels")


if __name__ == "__main__":
    main()
