"""Data loaders: a seeded, resumable, sharded batch sampler and loader construction."""
from __future__ import annotations

import functools
import math
import os
import signal
import threading
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import paddle

from .. import datasets  # noqa: F401  (registers the datasets and transforms)
from ..utils.dist import rank, set_parent_death_signal, world_size
from ..utils.logger import get_logger
from ..utils.registry import DATASETS, ConfigError, accepted_arguments


class ShardedBatchSampler(paddle.io.BatchSampler):
    """Splits (optionally shuffled) indices over processes and batches them.

    Training (``pad=True``) pads the index list to a multiple of the process count and
    shuffles with ``RandomState(seed + epoch)``, so every process sees a disjoint shard
    of the same permutation. Evaluation (``pad=False``) takes ``indices[rank::world]``: each
    sample is seen by exactly one process. ``set_start_iter(k)`` skips the first ``k``
    batches of the next pass (resuming mid-epoch).

    ``repeats > 1`` is DeiT's repeated augmentation (its ``RASampler``): each index of the
    permutation is repeated that many times before sharding, so the augmented copies of an
    image land on different processes, and every process keeps ``num_samples // world``
    indices per epoch. As officially, it applies only with several processes. Batches then hold
    ``(index, copy)`` pairs (``copy`` in ``[0, repeats)``) instead of indices, so that the dataset
    augments each copy with its own stream, as the official copies are augmented independently.
    """

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int = 0,
                 pad: bool = True, repeats: int = 1):
        if not isinstance(repeats, int) or repeats < 1:
            raise ConfigError(f"data.repeated_augmentation must be an integer >= 1, got {repeats!r}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.pad = pad
        self.repeats = repeats
        self.epoch = 0
        self.start_iter = 0
        self.num_replicas, self.rank = world_size(), rank()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start_iter(self, start_iter: int) -> None:
        self.start_iter = start_iter

    @property
    def repeated(self) -> bool:
        """Whether repeated augmentation acts (it needs several processes)."""
        return self.repeats > 1 and self.num_replicas > 1

    def _shard(self) -> np.ndarray:
        """This process's ``[n, 2]`` rows of (index, copy); the copy is 0 without repeated augmentation."""
        indices = np.arange(self.num_samples)
        if self.shuffle:
            indices = np.random.RandomState(self.seed + self.epoch).permutation(self.num_samples)
        copies = np.zeros_like(indices)
        if self.repeated:
            indices, copies = np.repeat(indices, self.repeats), np.tile(np.arange(self.repeats), len(indices))
        items = np.stack([indices, copies], axis=1)
        if self.pad:
            total = math.ceil(len(items) / self.num_replicas) * self.num_replicas
            items = np.concatenate([items, items[: total - len(items)]])
        shard = items[self.rank::self.num_replicas]
        return shard[: self.num_samples // self.num_replicas] if self.repeated else shard

    def __iter__(self) -> Iterator[list[int] | list[tuple[int, int]]]:
        shard = self._shard()
        start, self.start_iter = self.start_iter, 0
        for b in range(start, len(self)):
            batch = shard[b * self.batch_size:(b + 1) * self.batch_size]
            yield [(index, copy) for index, copy in batch.tolist()] if self.repeated else batch[:, 0].tolist()

    def __len__(self) -> int:
        n = len(self._shard())
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


def build_dataset(cfg: Mapping[str, Any], where: str, seed: int):
    """Build a dataset; the run seed is passed on to datasets that take one."""
    accepted, _ = accepted_arguments(DATASETS.get(cfg["name"], where))
    return DATASETS.build(cfg, where, **({"seed": seed} if "seed" in accepted else {}))


def build_loader(dataset: paddle.io.Dataset, batch_size: int, num_workers: int, train: bool, seed: int,
                 repeats: int = 1) -> paddle.io.DataLoader:
    sampler = ShardedBatchSampler(len(dataset), batch_size, shuffle=train, drop_last=train, seed=seed, pad=train,
                                  repeats=repeats)
    if repeats > 1 and not sampler.repeated:
        get_logger().info(f"repeated augmentation x{repeats} acts with several processes: this single "
                          f"process samples each image once per epoch")
    if train and len(sampler) == 0:
        raise ValueError(f"the training set has {len(dataset)} images, fewer than one batch of "
                         f"{batch_size} per process x {world_size()} processes")
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                use_shared_memory=num_workers > 0,
                                worker_init_fn=functools.partial(die_with_parent, os.getpid()))


def die_with_parent(parent_pid: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker gets SIGKILL when the process that started it dies (Linux;
    strictly, when the thread that iterates the loader ends: here the main thread).

    Paddle's worker waits for indices without a timeout (``indices_queue.get(MP_STATUS_CHECK_INTERVAL)`` passes
    the interval as ``block``), so its parent check never runs: the workers of a process that was killed,
    aborted or left by ``os._exit`` would wait forever, holding its files and pipes.
    """
    if set_parent_death_signal(signal.SIGKILL) and os.getppid() != parent_pid:  # died before that
        os._exit(1)


READER_THREAD = "(_thread_loop)"  # how Paddle's DataLoader names the thread that reads its workers' batches


def batches(loader: Iterable) -> Iterator:
    """Iterate ``loader``; an error raised in a DataLoader worker is raised here as itself (its message
    holds the worker's traceback, e.g. the image it could not decode). Paddle re-raises it in the
    loader's reading thread and the main thread only learns "Blocking queue is killed"."""
    reader_errors: list[BaseException] = []
    previous_hook = threading.excepthook

    def keep(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name.endswith(READER_THREAD):
            reader_errors.append(args.exc_value)
        previous_hook(args)

    threading.excepthook = keep
    try:
        yield from loader
    except SystemError as e:
        for thread in threading.enumerate():  # the queue is killed before the reader reaches its excepthook
            if thread.name.endswith(READER_THREAD):
                thread.join(timeout=5.0)
        if reader_errors:
            raise reader_errors[-1] from e
        raise
    finally:
        threading.excepthook = previous_hook


def check_data_matches_model(model: paddle.nn.Layer, train_set: Any, val_set: Any, target: Any, source: str) -> None:
    """Fail before any heavy work when model, datasets and targets disagree.

    Checks the class count of every dataset, that train and val index classes identically, that
    validation yields class ids (no ``label_root``), and that the token-label target (``target``, the
    bound batch stage, which takes the model's token grid) is no finer than the label maps unless
    it sets ``upsample_labels``.
    """
    num_classes = model.num_classes
    for split, ds in (("train", train_set), ("val", val_set)):
        if ds is not None and getattr(ds, "num_classes", num_classes) != num_classes:
            raise ConfigError(f"data.{split} ({getattr(ds, 'root', '')}) has {ds.num_classes} classes but the "
                              f"model has num_classes={num_classes} in {source}")
    if train_set is not None and val_set is not None and hasattr(train_set, "classes") \
            and getattr(val_set, "classes", train_set.classes) != train_set.classes:
        raise ConfigError(f"data.train and data.val index different classes in {source} (give both the "
                          f"same class_list)")
    if val_set is not None and getattr(val_set, "label_root", None):
        raise ConfigError(f"data.val must yield class ids: remove its label_root in {source}")
    size = getattr(target, "label_size", None)
    label_map = tuple(getattr(train_set, "label_shape", None) or ())[2:]
    if size and label_map and size > min(label_map) and not target.upsample_labels:
        raise ConfigError(f"the model's {size}x{size} token grid (the token-label size) is finer than the "
                          f"{label_map[0]}x{label_map[1]} label maps of data.train ({getattr(train_set, 'label_root', '')}) "
                          f"in {source}; set batch.target.upsample_labels: true to sample the maps finer (official "
                          f"fine-tuning)")
