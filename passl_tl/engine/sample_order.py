"""What decides which samples every training step sees. A checkpoint records it and a resume must match it:
with another batch size (40 images, batch 8 -> 7: 5 iterations per epoch either way) the resumed epoch would
train some samples twice and others never."""
from __future__ import annotations

import hashlib
import os
from typing import Any

from ..utils.logger import get_logger

# recorded key -> how a user names it
WHAT = {"batch_size": "data.batch_size (per process)", "world_size": "the process count",
        "seed": "seed", "accumulate_steps": "optim_wrapper.accumulate_steps",
        "repeated_augmentation": "data.repeated_augmentation", "dataset_size": "the training set's size",
        "file_list_sha256": "the training file list (paths under data.train.root and their classes)",
        "iters_per_epoch": "iterations per epoch"}


def file_list_sha256(dataset: Any) -> str | None:
    """SHA-256 of a dataset's sample list (paths relative to its root, and classes), or None without one."""
    samples, root = getattr(dataset, "samples", None), getattr(dataset, "root", None)
    if samples is None:
        return None
    digest = hashlib.sha256()
    for path, target in samples:
        digest.update(f"{os.path.relpath(path, root) if root else path}\t{target}\n".encode())
    return digest.hexdigest()


def sample_order(loader: Any, seed: int, world_size: int, accumulate_steps: int) -> dict[str, Any]:
    """The record of a training loader (a DataLoader over :class:`ShardedBatchSampler`, or FixedBatches)."""
    sampler, dataset = loader.batch_sampler, loader.dataset
    return {"batch_size": sampler.batch_size, "world_size": world_size, "seed": seed,
            "accumulate_steps": accumulate_steps, "repeated_augmentation": getattr(sampler, "repeats", 1),
            "dataset_size": len(dataset) if dataset is not None else None,
            "file_list_sha256": file_list_sha256(dataset), "iters_per_epoch": len(sampler)}


def check_same_sample_order(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """Raise naming everything that changed since checkpoint ``path`` was written. A checkpoint written before
    the record existed (only ``iters_per_epoch`` and ``accumulate_steps`` known) is checked on those, with a warning."""
    if set(saved) != set(current):
        get_logger().warning(f"{path} records only {', '.join(sorted(saved))} of what decides the sample order; "
                             f"the rest (batch size, data, seed) cannot be checked")
    changed = [f"{WHAT[key]} {saved[key]} -> {current[key]}" for key in WHAT
               if key in saved and saved[key] != current[key]]
    if changed:
        raise ValueError(f"cannot resume from {path}: the sample order would differ from the run that wrote it "
                         f"({'; '.join(changed)}), so some samples would be trained twice and others never. "
                         f"Resume with the settings it was written with, or start in another output_dir")
