"""Convert an official LV-ViT PyTorch checkpoint into our .pdparams (PyTorch is not needed).

    python tools/convert_weights.py --src lvvit_s-26M-224-83.3.pth.tar --dst lvvit_small.pdparams
    python tools/convert_weights.py --src ckpt.pth --dst out.pdparams --model lvvit_tiny -o depth=2
    python tools/convert_weights.py --src last.pth.tar --dst ema.pdparams --use-ema

The preset is inferred from the checkpoint's shapes unless --model is given; img_size, patch_size
and num_classes are taken from the checkpoint (pos_embed, patch projection, head) unless overridden
with -o. An -o img_size other than the checkpoint's resizes pos_embed bicubically.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Mapping

import numpy as np
import paddle
import paddle.nn as nn

from passl_tl.engine.checkpoint import save_atomic
from passl_tl.models import create_model
from passl_tl.models.weights import (POS_EMBED, adapt_state, convert_official, linear_weight_names,
                                     official_key_map, select_state_dict, set_state_strict)
from passl_tl.utils.cli import run_tool
from passl_tl.utils.config import parse_override
from passl_tl.utils.logger import get_logger
from passl_tl.utils.registry import MODELS, ConfigError
from passl_tl.utils.torch_checkpoint import load_torch_file

PRESET_PREFIX = "lvvit_"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="official checkpoint: .pth, .pth.tar or .pt")
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


def checkpoint_settings(state: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The preset arguments an official state dict determines: patch_size (from the patch projection),
    img_size (from a square pos_embed grid) and num_classes (from the head), where present."""
    settings: dict[str, Any] = {}
    if "patch_embed.proj.weight" in state:
        settings["patch_size"] = 2 * state["patch_embed.proj.weight"].shape[-1]
    if "pos_embed" in state and "patch_size" in settings:
        side = math.isqrt(state["pos_embed"].shape[1] - 1)
        if side * side == state["pos_embed"].shape[1] - 1:
            settings["img_size"] = side * settings["patch_size"]
    if "head.weight" in state:
        settings["num_classes"] = state["head.weight"].shape[0]
    return settings


def matching_presets(state: Mapping[str, np.ndarray], overrides: Mapping[str, Any]) -> list[str]:
    """The LV-ViT presets that, with ``overrides``, have exactly the checkpoint's names and shapes
    (except the token count of pos_embed, which loading resizes to the model's grid).

    Presets are built without allocating weights: first without blocks (cheap, rejects most), then whole.
    """
    return [name for name in MODELS.names() if name.startswith(PRESET_PREFIX)
            and _same_shapes(name, {**overrides, "depth": 0}, state, with_blocks=False)
            and _same_shapes(name, overrides, state, with_blocks=True)]


def _same_shapes(name: str, overrides: Mapping[str, Any], state: Mapping[str, np.ndarray], with_blocks: bool) -> bool:
    with paddle.LazyGuard():
        model = create_model(name, **overrides)
    have = {k: _architecture_shape(k, v) for k, v in convert_official(state, model).items()
            if with_blocks or not k.startswith("backbone.blocks.")}
    return have == {k: _architecture_shape(k, v) for k, v in model.state_dict().items()}


def _architecture_shape(key: str, value: Any) -> list[Any]:
    shape = list(value.shape)
    return shape[:1] + ["tokens"] + shape[2:] if key == POS_EMBED and len(shape) == 3 else shape


def describe(state: Mapping[str, np.ndarray]) -> str:
    """The architecture an official state dict shows, for error messages."""
    def dim(key: str, axis: int) -> Any:
        return state[key].shape[axis] if key in state else "?"

    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    return (f"embed_dim {dim('cls_token', -1)}, depth {depth}, stem_channels {dim('patch_embed.conv1.weight', 0)}, "
            f"pos_embed tokens {dim('pos_embed', 1)}, num_classes {dim('head.weight', 0)}")


def choose_preset(state: Mapping[str, np.ndarray], overrides: Mapping[str, Any], src: str) -> str:
    """The single preset matching the checkpoint, else an error asking for ``--model``."""
    found = matching_presets(state, overrides)
    if len(found) != 1:
        what = f"matches several presets ({', '.join(found)})" if found else "matches no LV-ViT preset"
        raise ConfigError(f"{src} ({describe(state)}) {what}; choose one with --model NAME "
                          f"(and -o for other arguments, e.g. -o depth=2)")
    return found[0]


def mapping_lines(state: Mapping[str, np.ndarray], model: nn.Layer) -> list[str]:
    """One line per official key: our name (and whether it was transposed), or that it was dropped."""
    mapping, transposed = official_key_map(state), linear_weight_names(model)
    width = max(map(len, state))
    return [f"  {key:<{width}}  -> {mapping[key]}{' (transposed)' if mapping[key] in transposed else ''}"
            if key in mapping else f"  {key:<{width}}     dropped (no Paddle counterpart)" for key in state]


def main(argv: list[str] | None = None) -> str:
    """Convert ``--src`` into ``--dst``; returns the output path."""
    args = parse_args(argv)
    if not args.dst.endswith(".pdparams"):
        raise ConfigError(f"--dst {args.dst}: the output must be a .pdparams file")
    state, layout = select_state_dict(load_torch_file(args.src), args.src, use_ema=args.use_ema)
    overrides = {**checkpoint_settings(state), **model_overrides(args.override)}
    name = args.model or choose_preset(state, overrides, args.src)
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
