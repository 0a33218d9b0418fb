"""Benchmarks, by subcommand.

    python tools/benchmark.py data [-c CONFIG] [-o KEY=VALUE ...] [--workers N] [--json OUT] [--quick]
    python tools/benchmark.py model [--model lvvit_tiny] [--batch-size 16] [--img-size 224] [--threads 2]
                                    [--precision fp32|bf16|fp16] [--eval-backend auto|dygraph|onednn]
                                    [--warmup 2] [--repeats 10] [--json OUT] [--quick]
                                    [--deploy-backends paddle onnxruntime]
                                    [--official-repo DIR --official-python PYTHON --pairs 3]

data: images/s of the training loader (the config's training transforms on synthetic demo images)
without token labels, with per-file labels and with packed labels, at 0 and N workers; label
reads/s per file and packed; ms per batch of the token-target builder against the official dense
formulation (outputs asserted equal). Medians and min-max over --repeats after --warmup. Prints
Markdown tables and the checks against the targets; --json also writes every number. --quick: tiny
sizes, a smoke test of the tool (the checks are not judged).

model: images/s of the full training step, run by the trainer itself (Trainer.train over a loader
repeating one synthetic batch: token targets, MixToken box, forward, loss, backward, AdamW step) and
of the eval forward (no_grad; --eval-backend as the config key eval_backend), each in a fresh
process with the thread count set before Paddle loads; median and min-max over --repeats after
--warmup, peak resident memory of each process, the threads and AMP precision actually in effect.
The targets are ratios to the official code on the same machine (--official-repo below). --quick: tiny
sizes, a smoke test of the tool.

model --official-repo DIR: the same phases next to the official PyTorch code of a zihangJiang/TokenLabeling
checkout, run by --official-python (torch, torchvision, timm), in --pairs interleaved pairs of fresh processes
whose order alternates, the load average recorded at each start; a table of both sides and the ratio, and the
checks (ours / official images/s >= 0.6 training, >= 1.0 eval; our training peak memory at most the official's).

model --deploy-backends paddle onnxruntime: also export the same model (tools/export_model.py's export, with
ONNX for onnxruntime) and time its predictor on each runtime, as tools/predict.py runs it: Paddle Inference
with oneDNN, ONNX Runtime's CPU provider; fp32, batches of --batch-size, --threads threads, each in a fresh
process; a table with each runtime's images/s and logit difference from the dygraph model, and the faster.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from passl_tl.benchmarks import model as benchmark_model
from passl_tl.benchmarks.data import DataSettings, report, run_data_benchmark
from passl_tl.engine.data import reader_errors_raised
from passl_tl.engine.run_config import load_run_config
from passl_tl.engine.eval_forward import EVAL_BACKENDS
from passl_tl.utils.cli import add_config_arguments, run_tool

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "lvvit", "lvvit_tiny.yaml")
SIZE_OPTIONS = ("images", "image_size", "batch_size", "workers", "repeats", "warmup", "target_batch",
                "classes_per_image", "data_dir")
QUICK = dict(images=16, image_size=64, batch_size=4, workers=1, repeats=1, warmup=0, target_batch=4,
             classes_per_image=[8])
MODEL_OPTIONS = ("model", "batch_size", "img_size", "threads", "precision", "eval_backend", "warmup", "repeats",
                 "num_classes", "classes_per_image", "deploy_backends", "official_repo", "official_python", "pairs")
QUICK_HELP = "tiny sizes: a smoke test of the tool, not a measurement (the checks are not judged)"
MODEL_QUICK = dict(batch_size=2, img_size=64, warmup=1, repeats=2, num_classes=10, classes_per_image=8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", help="also write the results as JSON to this file")
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", parents=[common], help="loader, label reads and target builder")
    add_config_arguments(data, required=False,
                         config_help=f"config whose data.train.transforms to use (default {DEFAULT_CONFIG})")
    defaults = DataSettings(transforms=[])
    data.add_argument("--images", type=int, help=f"demo training images (default {defaults.images})")
    data.add_argument("--image-size", type=int, help=f"demo image side in pixels (default {defaults.image_size})")
    data.add_argument("--batch-size", type=int, help=f"loader batch size (default {defaults.batch_size})")
    data.add_argument("--workers", type=int, help=f"loader workers besides 0 (default {defaults.workers})")
    data.add_argument("--repeats", type=int, help=f"timed repeats (default {defaults.repeats})")
    data.add_argument("--warmup", type=int, help=f"untimed repeats first (default {defaults.warmup})")
    data.add_argument("--target-batch", type=int, help=f"target-builder batch (default {defaults.target_batch})")
    data.add_argument("--classes-per-image", type=int, nargs="+",
                      help="distinct classes a synthetic label map draws from, one timing each "
                           f"(default {' '.join(map(str, defaults.classes_per_image))})")
    data.add_argument("--data-dir", help="keep and reuse the demo data here (default: a temporary directory)")
    data.add_argument("--quick", action="store_true", help=QUICK_HELP)
    model = commands.add_parser("model", parents=[common], help="training step and eval forward of a preset")
    add_config_arguments(model, required=False, config_help="training recipe (optimizer, targets, hooks, amp; "
                                                            f"default {benchmark_model.DEFAULT_CONFIG})")
    mdefaults = benchmark_model.ModelSettings()
    model.add_argument("--model", help=f"model preset (default {mdefaults.model})")
    model.add_argument("--batch-size", type=int, help=f"images per step (default {mdefaults.batch_size})")
    model.add_argument("--img-size", type=int, help=f"image side in pixels (default {mdefaults.img_size})")
    model.add_argument("--threads", type=int, help=f"CPU math threads (default {mdefaults.threads})")
    model.add_argument("--precision", choices=list(benchmark_model.PRECISIONS),
                       help=f"fp32, or AMP O1 in bf16/fp16 (default {mdefaults.precision})")
    model.add_argument("--eval-backend", choices=list(EVAL_BACKENDS),
                       help=f"eval forward: dygraph, oneDNN via Paddle Inference, or auto (default "
                            f"{mdefaults.eval_backend})")
    model.add_argument("--deploy-backends", nargs="+", choices=list(benchmark_model.DEPLOY_BACKENDS),
                       help="also time the exported model (fp32, batched) on these runtimes: paddle (Paddle "
                            "Inference, oneDNN), onnxruntime (ONNX Runtime; needs pip install -e \".[onnx]\")")
    model.add_argument("--official-repo", metavar="DIR",
                       help="a zihangJiang/TokenLabeling checkout: time the official PyTorch step and eval forward "
                            "side by side (interleaved pairs) and judge the ratios against the targets")
    model.add_argument("--official-python", metavar="PYTHON",
                       help="an interpreter with torch, torchvision and timm for --official-repo (default: this one)")
    model.add_argument("--pairs", type=int, help=f"(ours, official) pairs per phase (default {mdefaults.pairs})")
    model.add_argument("--warmup", type=int, help=f"untimed steps first (default {mdefaults.warmup})")
    model.add_argument("--repeats", type=int, help=f"timed steps (default {mdefaults.repeats})")
    model.add_argument("--num-classes", type=int, help=f"classes (default {mdefaults.num_classes})")
    model.add_argument("--classes-per-image", type=int,
                       help=f"distinct classes a synthetic label map mentions (default {mdefaults.classes_per_image})")
    model.add_argument("--in-process", action="store_true",
                       help="both phases in this process (the peak RSS is then the larger of the two)")
    model.add_argument("--quick", action="store_true", help=QUICK_HELP)
    return parser.parse_args(argv)


def data_settings(args: argparse.Namespace) -> DataSettings:
    """Explicit options over the --quick sizes over the defaults; transforms from the config."""
    config = args.config or DEFAULT_CONFIG
    cfg = load_run_config(config, args.override)
    options = {k: v for k, v in vars(args).items() if k in SIZE_OPTIONS and v is not None}
    return DataSettings(transforms=cfg["data"]["train"]["transforms"], config=config,
                        **{**(QUICK if args.quick else {}), **options})


def data_command(args: argparse.Namespace) -> dict:
    with reader_errors_raised():  # a bad file in --data-dir: its error, not the loader's "Blocking queue is killed"
        results = run_data_benchmark(data_settings(args))
    print(report(results, judged=not args.quick))
    return results


def model_settings(args: argparse.Namespace) -> benchmark_model.ModelSettings:
    """Explicit options over the --quick sizes over the defaults."""
    options = {k: v for k, v in vars(args).items() if k in MODEL_OPTIONS and v is not None}
    return benchmark_model.ModelSettings(config=args.config or benchmark_model.DEFAULT_CONFIG,
                                         overrides=list(args.override or []), subprocess=not args.in_process,
                                         **{**(MODEL_QUICK if args.quick else {}), **options})


def model_command(args: argparse.Namespace) -> dict:
    results = benchmark_model.run_model_benchmark(model_settings(args))
    print(benchmark_model.report(results))
    return results


COMMANDS = {"data": data_command, "model": model_command}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results = COMMANDS[args.command](args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
        print(f"\nresults in {args.json}", file=sys.stderr)
    return results


if __name__ == "__main__":
    run_tool(main)
