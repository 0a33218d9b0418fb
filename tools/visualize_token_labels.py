"""Draw an image beside its token labels: per cell the top class (a colour per class, legend with
names) and its confidence; with --crop also a sampled training crop/flip and its token targets.

    python tools/visualize_token_labels.py data/demo/train/n00000003/n00000003_0005.JPEG \\
        data/demo/label_top5_train/n00000003/n00000003_0005.npy -c configs/lvvit/lvvit_demo.yaml \\
        --crop --seed 1 --out token_labels.png

LABEL is a [2, k, H, W] .npy file (or an official .pt/.pth file). With -c the training view is the config's:
its crop size and area range (data.train's RandomResizedCropWithCoords), the token grid its target builder takes
from its model, and its class_names; options given explicitly win. --class-names takes a names file (<wnid> <name>,
<id> <name> or <name> lines) or "imagenet" for the bundled ImageNet-1k names.
"""
from __future__ import annotations

import argparse
from typing import Any

import passl_tl  # noqa: F401  (before Paddle: names a missing install in one line, quiets its import)
import paddle
from passl_tl import build_model
from passl_tl.deploy.class_names import imagenet_class_names, read_class_names
from passl_tl.engine.run_config import load_run_config
from passl_tl.token_labels.visualize import Figure, visualize_token_labels
from passl_tl.utils.cli import add_config_arguments, run_tool
from passl_tl.utils.registry import BATCH_TRANSFORMS, ConfigError

DEFAULTS = {"size": 224, "label_size": 14, "crop_scale": (0.08, 1.0), "class_names": None}  # without -c


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="image file")
    parser.add_argument("label", help="its token-label file")
    parser.add_argument("--out", required=True, help="PNG to write")
    add_config_arguments(parser, required=False, config_help="training config whose crop, token grid and class "
                                                             "names to show (defaults of the options below)")
    parser.add_argument("--class-names", help='names file, or "imagenet" (default: the config\'s class_names, '
                                              'else class ids only)')
    parser.add_argument("--crop", action="store_true", help="also show a sampled training crop/flip")
    parser.add_argument("--seed", type=int, default=0, help="draws the crop and flip (default 0)")
    parser.add_argument("--size", type=int, help=f"training crop size in pixels (default: the config's, else "
                                                 f"{DEFAULTS['size']})")
    parser.add_argument("--label-size", type=int, help="token grid of the targets (default: the config's, else "
                                                       f"{DEFAULTS['label_size']})")
    parser.add_argument("--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="crop area range as fractions of the image (default: the config's, else "
                             f"{' '.join(map(str, DEFAULTS['crop_scale']))})")
    return parser.parse_args(argv)


def config_settings(path: str, overrides: list[str]) -> dict[str, Any]:
    """The training view of a run of ``path``: the size and area range of data.train's RandomResizedCropWithCoords,
    the token grid its target builder (TokenLabelTargets, bound to the model as in training) takes, its class
    names; None where the config has none."""
    cfg = load_run_config(path, overrides)
    transforms = cfg["data"]["train"].get("transforms") or []
    crop = next((t for t in transforms if t.get("name") == "RandomResizedCropWithCoords"), {})
    target = cfg["batch"]["target"]
    if not target or target["name"] != "TokenLabelTargets":  # a config without token labels: the model's grid
        target = {"name": "TokenLabelTargets"}
    with paddle.LazyGuard():  # the architecture only: no weights allocated
        model = build_model(cfg)
    stage = BATCH_TRANSFORMS.build(target, f"batch.target of {cfg.source}")
    stage.bind(model, None)
    return {"size": crop.get("size"), "label_size": stage.label_size, "crop_scale": crop.get("scale"),
            "class_names": cfg["class_names"]}


def main(argv: list[str] | None = None) -> Figure:
    args = parse_args(argv)
    if args.override and not args.config:
        raise ConfigError("-o overrides a config: give it with -c CONFIG")
    found = config_settings(args.config, args.override) if args.config else {}
    given = {"size": args.size, "label_size": args.label_size, "crop_scale": args.crop_scale}
    settings = {key: next((v for v in (given.get(key), found.get(key)) if v is not None), default)
                for key, default in DEFAULTS.items()}
    names = settings["class_names"]
    if args.class_names:
        names = imagenet_class_names() if args.class_names == "imagenet" else read_class_names(args.class_names)
    figure = visualize_token_labels(args.image, args.label, names, args.crop, args.seed, settings["size"],
                                    settings["label_size"], settings["crop_scale"])
    figure.image.save(args.out)
    print(f"wrote {args.out} ({figure.image.width}x{figure.image.height})")
    return figure


if __name__ == "__main__":
    run_tool(main)
