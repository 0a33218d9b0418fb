"""Convert the official per-image PyTorch token-label files to .npy files (no PyTorch needed).

    python tools/convert_labels.py --src label_top5_train_nfnet --dst data/label_top5_train_nfnet --workers 16

Reads <src>/<wnid>/<stem>.pt (or .pth), each a torch.save'd [2, k, H, W] tensor (top-k logits,
class ids), and writes <dst>/<wnid>/<stem>.npy as float16 (float32 when float16 would round the
class ids of a float32 source: ids above 2048), each file atomically. Every label must have one
shape: --shape, else that of the first readable source file. Rerunning resumes: outputs that
already hold a label of that shape are skipped. Failures are listed on stderr and in
<dst>/convert_failures.txt; the exit code is 1 when any file failed.
"""
from __future__ import annotations

import argparse
import collections
import functools
import multiprocessing
import os
import sys
from typing import Iterable, Iterator, Sequence

from passl_tl.token_labels.files import (NPY_SUFFIX, TORCH_SUFFIXES, convert_label_file, find_label_files,
                                         read_torch_label)
from passl_tl.utils.cli import run_tool
from passl_tl.utils.progress import Progress

FAILURES_NAME = "convert_failures.txt"
SHOWN_FAILURES = 20


def label_shape(text: str) -> tuple[int, ...]:
    """``"2,5,18,18"`` -> ``(2, 5, 18, 18)``."""
    return tuple(int(n) for n in text.split(","))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="directory of <wnid>/<stem>.pt (or .pth) label files")
    parser.add_argument("--dst", required=True, help="output directory of <wnid>/<stem>.npy files")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all CPUs)")
    parser.add_argument("--shape", type=label_shape, metavar="2,K,H,W",
                        help="shape every label must have (default: that of the first readable file)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    return args


def reference_shape(sources: Iterable[str]) -> tuple[int, ...]:
    """The shape of the first readable label file."""
    for path in sources:
        try:
            return read_torch_label(path).shape
        except ValueError:
            continue
    raise ValueError("none of the source files is a readable [2, k, H, W] label map")


def convert_one(task: tuple[str, str], shape: Sequence[int]) -> tuple[str, str, str]:
    """``(source, "converted" | "skipped" | "failed", error)`` of one ``(source, output)`` pair."""
    src, dst = task
    try:
        return src, "converted" if convert_label_file(src, dst, shape) else "skipped", ""
    except (ValueError, OSError) as e:
        return src, "failed", str(e)


def run(tasks: list[tuple[str, str]], shape: Sequence[int], workers: int) -> Iterator[tuple[str, str, str]]:
    """Results of :func:`convert_one` for every task, in completion order."""
    convert = functools.partial(convert_one, shape=shape)
    if workers == 1:
        yield from map(convert, tasks)
        return
    pool = multiprocessing.Pool(workers)
    try:
        yield from pool.imap_unordered(convert, tasks, chunksize=max(1, min(64, len(tasks) // (8 * workers))))
    except BaseException:
        pool.terminate()
        raise
    pool.close()  # let the workers exit on their own: a terminated worker prints paddle's signal report
    pool.join()


def report_failures(failures: list[str], dst: str) -> None:
    """List the errors (each names its file) on stderr (the first few) and in
    ``<dst>/convert_failures.txt`` (all); no failures remove an older list."""
    path = os.path.join(dst, FAILURES_NAME)
    if not failures:
        if os.path.exists(path):
            os.remove(path)
        return
    os.makedirs(dst, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in failures)
    for line in failures[:SHOWN_FAILURES]:
        print(f"failed: {line}", file=sys.stderr)
    more = f" ({len(failures) - SHOWN_FAILURES} more)" if len(failures) > SHOWN_FAILURES else ""
    print(f"all failures{more}: {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Convert ``--src`` into ``--dst``; returns the exit code (1 when a file failed)."""
    args = parse_args(argv)
    sources = find_label_files(args.src, TORCH_SUFFIXES)
    if not sources:
        raise FileNotFoundError(f"no <wnid>/<stem>.pt or .pth label files under {args.src}")
    shape = args.shape or reference_shape(sources.values())
    tasks = [(src, os.path.join(args.dst, key + NPY_SUFFIX)) for key, src in sources.items()]
    counts: collections.Counter[str] = collections.Counter()
    failures = []
    with Progress(len(tasks), "label files") as progress:
        for src, status, error in run(tasks, shape, args.workers):
            counts[status] += 1
            if error:
                failures.append((src, error))
            progress.update()
    report_failures([error for _, error in sorted(failures)], args.dst)
    print(f"{args.dst}: converted {counts['converted']}, skipped {counts['skipped']} (done before), "
          f"failed {counts['failed']} of {len(tasks)} label files of shape {list(shape)}")
    return 1 if failures else 0


if __name__ == "__main__":
    run_tool(main)
