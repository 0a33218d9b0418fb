"""A training loader of given batches: the real training loop, fed batches that were recorded or made."""
from __future__ import annotations

from typing import Iterator, Sequence

import paddle

Batch = tuple[paddle.Tensor, paddle.Tensor]


class FixedBatches:
    """Yields ``batches`` (``(images, labels)`` pairs) in order, every epoch.

    For replaying recorded batches through ``Trainer.train`` (the trajectory-parity test) and for
    timing the training step on one batch (``tools/benchmark.py model``). The trainer drives a loader
    through its batch sampler (epoch, resume point); this loader is its own sampler.
    """

    dataset = None  # no per-sample dataset behind it (no epoch stream, no fault report)

    def __init__(self, batches: Sequence[Batch]):
        if not batches:
            raise ValueError("FixedBatches needs at least one (images, labels) batch")
        sizes = sorted({int(images.shape[0]) for images, _ in batches})
        if len(sizes) != 1:
            raise ValueError(f"FixedBatches needs batches of one size, got sizes {sizes}")
        self.batches = list(batches)
        self.batch_size = sizes[0]
        self.start_iter = 0

    @property
    def batch_sampler(self) -> "FixedBatches":
        return self

    def __len__(self) -> int:
        return len(self.batches)

    def set_epoch(self, epoch: int) -> None:
        """Every epoch yields the same batches."""

    def set_start_iter(self, start_iter: int) -> None:
        """Skip the first ``start_iter`` batches of the next pass (resuming mid-epoch)."""
        self.start_iter = start_iter

    def __iter__(self) -> Iterator[Batch]:
        start, self.start_iter = self.start_iter, 0
        yield from self.batches[start:]
