"""Data loaders: a seeded, resumable, sharded batch sampler, loader construction, and iteration that cannot hang
(a loading error is raised where the loader is read; an unfinished iteration ends its workers at once)."""
from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import math
import os
import signal
import threading
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import paddle
from paddle.io.dataloader import dataloader_iter as paddle_loader_iter

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
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"a batch size must be an integer >= 1, got {batch_size!r}")  # 0 would divide by 0
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        key = "data.batch_size" if train else "data.val_batch_size"
        raise ConfigError(f"{key} must be an integer >= 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
        raise ConfigError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
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

    SIGTERM and SIGINT are ignored: sent to the whole process group (Slurm's ``scancel``, Ctrl-C), they are the
    training process's to handle (it stops at a step boundary with a checkpoint); a dying worker would end it.
    """
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, signal.SIG_IGN)
    if set_parent_death_signal(signal.SIGKILL) and os.getppid() != parent_pid:  # died before that
        os._exit(1)


READER_THREAD = "(_thread_loop)"  # how Paddle's DataLoader names the thread that reads its workers' batches
SHUTDOWN_TIMEOUT_S = 5.0  # per worker, when a loader is shut down early; a worker still alive then is killed


def _kill_queue_when_reader_raises(thread_loop):
    """Paddle's reader thread (``_thread_loop``) wrapped: whatever it raises, it first kills the loader's queue, so
    that the main thread, which waits in C++ for the next batch, fails ("Blocking queue is killed") instead of
    waiting forever.

    Paddle 3.3's single-process reader (``num_workers: 0``) calls the dataset and the sampler outside any
    ``try`` but ``StopIteration``: a dataset error (a corrupt image, a bad label file) ended the thread and left the
    queue open, and the main thread blocked for good. The multi-process reader kills the queue itself before
    re-raising a worker's error; the wrapper changes nothing there (killing twice is harmless)."""
    @functools.wraps(thread_loop)  # keeps the name: threads stay named "Thread-N (_thread_loop)"
    def _thread_loop(self, *args, **kwargs):
        try:
            return thread_loop(self, *args, **kwargs)
        except BaseException:
            self._exit_thread_unexpectedly()
            raise
    _thread_loop.kills_queue_on_error = True
    return _thread_loop


def _patch_paddle_readers() -> None:
    for cls in (paddle_loader_iter._DataLoaderIterSingleProcess, paddle_loader_iter._DataLoaderIterMultiProcess):
        if not getattr(cls._thread_loop, "kills_queue_on_error", False):
            cls._thread_loop = _kill_queue_when_reader_raises(cls._thread_loop)


_patch_paddle_readers()


def shut_down(iterator: Any, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
    """End a Paddle DataLoader iterator now, while the interpreter can still run threads: its reader thread stops
    and its workers exit (those still alive after ``timeout`` seconds are killed). Anything else: nothing to do.

    An iterator left unfinished (an error, a ``break``) is otherwise shut down by its ``__del__`` at
    interpreter exit, and that can block for good: it sends each worker ``None`` through the worker's index
    queue, and a queue never used before (a loader with fewer batches than workers) must first start its
    feeder thread, which cannot start any more once the interpreter is finalizing; it also joins the workers
    without a timeout."""
    if not isinstance(iterator, paddle_loader_iter._DataLoaderIterBase) or getattr(iterator, "_shutdown", True):
        return
    if isinstance(iterator, paddle_loader_iter._DataLoaderIterMultiProcess):
        workers = list(getattr(iterator, "_workers", []))
        iterator._try_shutdown_all(timeout)
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(timeout)
    else:
        iterator._try_shutdown_all()
    _release_reader(iterator, timeout)


def _release_reader(iterator: Any, timeout: float) -> None:
    """Free a shut-down iterator's C++ reader, and with it its queue and thread pool, here and now.

    An iterator that ended in an error sits in a reference cycle with the error's traceback, and the garbage
    collector may first run in a DataLoader worker forked later: freeing the reader there destroys the worker's
    copy of condition variables that count waiters (the pool's threads) which exist only in this process, and
    ``pthread_cond_destroy`` waits for them forever: the worker never loads a batch and the run hangs."""
    thread = getattr(iterator, "_thread", None)  # the reading thread (told to stop) may still push to the queue
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)
        if thread.is_alive():
            return
    reader = getattr(iterator, "_reader", None)
    if reader is not None:
        reader.shutdown()  # what Paddle does at the end of a complete pass
        iterator._reader = None
    iterator._blocking_queue = None


def _shut_down_live_iterators(pid: int = os.getpid()) -> None:
    """At exit (before the interpreter finalizes): shut down every DataLoader iterator left unfinished, also
    those of loaders this package did not build (``shut_down`` says why)."""
    if os.getpid() != pid:  # a forked child that runs the atexit handlers it inherited
        return
    for obj in gc.get_objects():
        if isinstance(obj, paddle_loader_iter._DataLoaderIterBase):
            try:
                shut_down(obj)
            except Exception:  # half-built (its constructor raised) or already torn down: leave it to Paddle
                pass


atexit.register(_shut_down_live_iterators)  # after Paddle's own atexit handlers: runs before them


@contextlib.contextmanager
def reader_errors_raised() -> Iterator[None]:
    """Within: an error raised in a DataLoader's reader thread (a worker's, whose message holds the worker's
    traceback, e.g. the image it could not decode; or, with ``num_workers: 0``, the dataset's own) is raised as
    itself where the main thread reads the loader. Paddle re-raises it in the reader thread, and the main thread
    only learns "Blocking queue is killed" (a ``SystemError``). The error raised here is not also reported as an
    unhandled thread exception (a second traceback); one the main thread never met is, on leaving."""
    reader_errors: list[threading.ExceptHookArgs] = []
    previous_hook = threading.excepthook

    def keep(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name.endswith(READER_THREAD):
            reader_errors.append(args)
        else:
            previous_hook(args)

    threading.excepthook = keep
    try:
        yield
    except SystemError as e:
        for thread in threading.enumerate():  # the queue is killed before the reader reaches its excepthook
            if thread.name.endswith(READER_THREAD):
                thread.join(timeout=5.0)
        if reader_errors:
            raise reader_errors.pop().exc_value from e
        raise
    finally:
        threading.excepthook = previous_hook
        for args in reader_errors:
            previous_hook(args)


def batches(loader: Iterable) -> Iterator:
    """Iterate ``loader``: a DataLoader reader's error is raised here as itself (``reader_errors_raised``), and a
    DataLoader iteration that ends early (an error, or this generator closed: use ``contextlib.closing`` where the
    loop's body may raise) is shut down at once, its workers ended, not at interpreter exit (``shut_down``)."""
    iterator = None
    if getattr(loader, "num_workers", 0) > 0:
        gc.collect()  # here, not in the workers about to be forked: see _release_reader
    try:
        with reader_errors_raised():  # before iter(): its workers start loading at once
            iterator = iter(loader)
            yield from iterator
    finally:
        shut_down(iterator)  # nothing to do after a complete pass: Paddle has shut it down


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
