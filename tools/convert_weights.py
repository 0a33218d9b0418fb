"""Convert an official PyTorch checkpoint (LV-ViT, DeiT, T2T-ViT, RegNetY) into our .pdparams (no PyTorch needed).

    python tools/convert_weights.py --src lvvit_s-26M-224-83.3.pth.tar --dst lvvit_small.pdparams
    python tools/convert_weights.py --src model.safetensors --dst out.pdparams
    python tools/convert_weights.py --src ckpt.pth --dst out.pdparams --model lvvit_tiny -o depth=2
    python tools/convert_weights.py --src last.pth.tar --dst ema.pdparams --use-ema

The checkpoint is a torch.save file (.pth, .pth.tar, .pt, .bin) or a Hugging Face .safetensors file.
The preset is inferred from the checkpoint's shapes unless --model is given; img_size and
num_classes are taken from the checkpoint (pos_embed, head) unless overridden with -o. An
-o img_size other than the checkpoint's resizes pos_embed bicubically.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping

import numpy as np

import passl_tl  # noqa: F401  (before Paddle: names a missing install in one line, quiets its import)
import paddle.nn as nn
from passl_tl.engine.checkpoint import save_atomic
from passl_tl.models import create_model
from passl_tl.models.preset_inference import choose_preset, preset_arguments
from passl_tl.models.weights import (adapt_state, convert_official, linear_weight_names, official_key_map,
                                     read_official_state, set_state_strict)
from passl_tl.utils.cli import run_tool
from passl_tl.utils.config import parse_override
from passl_tl.utils.logger import get_logger
from passl_tl.utils.registry import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="official checkpoint: .pth, .pth.tar, .pt, .bin or .safetensors")
    parser.add_argument("--dst", required=True, help="output .pdparams file")
    parser.add_argument("--model", help="model preset, e.g. lvvit_small (default: inferred from the shapes)")
    parser.add_argument("-o", "--override", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="model arguments, e.g. -o depth=2 num_classes=10 img_size=384")
    parser.add_argument("--use-ema", action="store_true",
                        help="take the checkpoint's state_dict_ema (default: model, state_dict, state_dict_ema "
                             "in that order, or a plain state dict)")
    return parser.parse_args(argv)


def model_overrides(texts: list[str]) -> dict[str, Any]:
    """``-o key=value`` arguments as keyword overrides of a model preset (YAML values)."""
    overrides = {}
    for text in texts:
        keys, value = parse_override(text)
        if len(keys) != 1:
            raise ConfigError(f"override '{text}': model arguments have no sub-keys")
        overrides[keys[0]] = value
    return overrides


def mapping_lines(state: Mapping[str, np.ndarray], model: nn.Layer) -> list[str]:
    """One line per official key: our name (and whether it was transposed), or that it was dropped."""
    mapping, transposed = official_key_map(state, model), linear_weight_names(model)
    width = max(map(len, state))
    return [f"  {key:<{width}}  -> {mapping[key]}{' (transposed)' if mapping[key] in transposed else ''}"
            if key in mapping else f"  {key:<{width}}     dropped (no Paddle counterpart)" for key in state]


def main(argv: list[str] | None = None) -> str:
    """Convert ``--src`` into ``--dst``; returns the output path."""
    args = parse_args(argv)
    if not args.dst.endswith(".pdparams"):
        raise ConfigError(f"--dst {args.dst}: the output must be a .pdparams file")
    state, layout = read_official_state(args.src, use_ema=args.use_ema)
    name = args.model or choose_preset(state, model_overrides(args.override), args.src)
    overrides = preset_arguments(name, state, model_overrides(args.override))
    model = create_model(name, **overrides)
    converted = convert_official(state, model)
    notes, _ = adapt_state(model, converted, args.src)
    set_state_strict(model, converted, args.src)
    save_atomic(model.state_dict(), args.dst)

    arguments = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    print(f"{args.src}: {layout}, {len(state)} tensors")
    print(f"model: {name}({arguments})")
    print("\n".join(mapping_lines(state, model)))
    for note in notes:
        print(note)
    transposed = len(linear_weight_names(model) & set(converted))
    print(f"mapped {len(converted)} tensors ({transposed} transposed), dropped {len(state) - len(converted)}")
    print(f"wrote {args.dst}")
    return args.dst


if __name__ == "__main__":
    get_logger().propagate = False  # main() prints its changes itself; keeps warnings (logging's last resort)
    run_tool(main)
