"""Train or evaluate a model described by a YAML config.

    python tools/train.py -c configs/lvvit/lvvit_tiny.yaml [-o key.sub=value ...]
    python tools/train.py -c configs/lvvit/lvvit_tiny.yaml --load W.pdparams --evaluate-only
    python -m paddle.distributed.launch --gpus=0,1,2,3 tools/train.py -c ...
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import passl_tl  # noqa: F401  (before Paddle: names a missing install in one line, quiets its import)
import paddle

from passl_tl import build_model, load_weights
from passl_tl.engine import Trainer, evaluate, seed_everything
from passl_tl.engine.data import build_dataset, build_loader, check_data_matches_model
from passl_tl.engine.eval_forward import resolve_eval_backend
from passl_tl.engine.run_config import apply_device, load_run_config
from passl_tl.engine.run_lock import RECORD, OutputDirLock, check_new_run, finished_checkpoint
from passl_tl.engine.trainer import amp_context_from, build_lr_scheduler
from passl_tl.utils.cli import add_config_arguments, run_tool
from passl_tl.utils.config import ConfigError, dump_config
from passl_tl.utils.dist import broadcast_text, end_without_report, init_distributed, is_main
from passl_tl.utils.errors import Preempted
from passl_tl.utils.logger import setup_logger
from passl_tl.utils.run_info import write_run_info

FINISHED_KEY = "passl_tl/output_dir/finished"  # rank 0 sends what it found (utils.dist.broadcast_text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--load", help="weights to start from: "
                        ".pdparams or an official .pth/.pth.tar/.pt/.bin/.safetensors")
    parser.add_argument("--use-ema", action="store_true",
                        help="with --load of an official checkpoint: take its state_dict_ema")
    parser.add_argument("--reset-head", action="store_true",
                        help="with --load: keep the model's own head where the file's has another shape "
                             "(fine-tuning on a dataset with other classes)")
    parser.add_argument("--resume", metavar="CKPT|auto",
                        help="training checkpoint (.pdckpt) to continue from; 'auto': the newest usable one in "
                             "output_dir (corrupt ones skipped), or from scratch if there is none. Needed to write "
                             "into an output_dir that holds a run; a finished run is left as it is")
    parser.add_argument("--evaluate-only", action="store_true", help="only evaluate on the validation set")
    parser.add_argument("--seed", type=int, help="overrides the config's seed")
    return parser.parse_args(argv)


def evaluate_only(cfg, model) -> dict:
    data = cfg["data"]
    if not data["val"]:
        raise ConfigError(f"--evaluate-only needs a 'data.val' dataset in {cfg.source}")
    val_set = build_dataset(data["val"], f"data.val of {cfg.source}", cfg["seed"])
    check_data_matches_model(model, None, val_set, None, cfg.source)
    loader = build_loader(val_set, data["val_batch_size"], data["num_workers"], False, cfg["seed"])
    metrics = evaluate(model, loader, amp_context_from(cfg["amp"]), cfg["eval_backend"])
    if is_main():
        print(f"top-1 {metrics['top1']:.3f}  top-5 {metrics['top5']:.3f}  images {metrics['count']}  "
              f"{metrics['img_per_s']:.1f} img/s", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if (args.reset_head or args.use_ema) and not args.load:
        raise ConfigError("--reset-head and --use-ema apply to --load WEIGHTS")
    for option, path in (("--load", args.load), ("--resume", None if args.resume == "auto" else args.resume)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{option} {path}: no such file")
    seed = [f"seed={args.seed}"] if args.seed is not None else []  # checked as the config's seed is
    cfg = load_run_config(args.config, [*args.override, *seed])
    Trainer.check_config(cfg, args.evaluate_only)
    amp_context = amp_context_from(cfg["amp"])  # validates the amp section before any heavy work
    apply_device(cfg)
    resolve_eval_backend(cfg["eval_backend"], amp_context is not None)
    init_distributed()
    logger = setup_logger(None)
    if args.evaluate_only:
        return evaluate_only(cfg, build_weights(cfg, args, logger))
    output_dir = cfg["output_dir"]
    if args.resume:  # rank 0 looks, every process follows
        epochs = build_lr_scheduler(cfg).total_epochs
        finished = finished_checkpoint(output_dir, args.resume, epochs) if is_main() else None
        if broadcast_text(FINISHED_KEY, finished or ""):
            if finished:
                logger.info(f"already finished: {finished} ends the last of {epochs} epochs and {output_dir} holds "
                            f"final.pdparams; nothing to do (to train longer, raise epochs; for a new run, pick "
                            f"another output_dir)")
            return {}
    with OutputDirLock(output_dir) if is_main() else contextlib.nullcontext() as lock:
        if lock is not None:  # a refusal on rank 0 stops the others (utils.dist.FailureReporter)
            check_new_run(output_dir, args.resume)
        logger = setup_logger(output_dir)  # log.txt is written only under the lock
        if lock is not None and lock.took_over:
            logger.warning(f"took over the lock of {output_dir}, left by a run that is gone ({lock.took_over})")
        return run_training(cfg, args, argv, set_up(cfg, args, logger, lock), logger)


def build_weights(cfg, args: argparse.Namespace, logger) -> paddle.nn.Layer:
    """The model, with ``--load`` weights if given."""
    seed_everything(cfg["seed"])
    model = build_model(cfg)
    if args.load:
        report = load_weights(model, args.load, skip_mismatched_head=args.reset_head, use_ema=args.use_ema)
        logger.info(f"loaded weights from {args.load}: {report}")
    elif args.evaluate_only:
        logger.warning("--evaluate-only without --load: evaluating freshly initialised weights")
    return model


def set_up(cfg, args: argparse.Namespace, logger, lock: OutputDirLock | None) -> Trainer:
    """The model (with ``--load``) and the trainer with its data: all that precedes training. Should it fail or be
    interrupted, an output_dir this run created loses its log, so that the lock removes it; a Ctrl-C ends with
    one line saying what to do."""
    try:
        return Trainer.from_config(cfg, build_weights(cfg, args, logger))
    except BaseException as e:
        if lock is not None and lock.created:
            setup_logger(None)  # closes log.txt
            os.remove(os.path.join(cfg["output_dir"], "log.txt"))
        if isinstance(e, KeyboardInterrupt):
            end_without_report()
            raise Preempted("stopped on SIGINT before training started, with no checkpoint written; run the same "
                            "command again") from None
        raise


def run_training(cfg, args: argparse.Namespace, argv: list[str] | None, trainer: Trainer, logger) -> dict:
    """Write the run's records (config, command, packages; :data:`RECORD` marks the directory as a run's) and train."""
    if is_main():
        command = [os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv)]
        dump_config(cfg, os.path.join(cfg["output_dir"], RECORD))
        with open(os.path.join(cfg["output_dir"], "command.txt"), "w", encoding="utf-8") as f:
            f.write(" ".join([sys.executable, *command]) + "\n")
        write_run_info(os.path.join(cfg["output_dir"], "run_info.json"), command)
    metrics = trainer.train(resume=args.resume)
    if metrics and is_main():
        logger.info(f"finished: top-1 {metrics['top1']:.3f} ({metrics['tracked']}), outputs in {cfg['output_dir']}")
    return metrics


if __name__ == "__main__":
    run_tool(main)
