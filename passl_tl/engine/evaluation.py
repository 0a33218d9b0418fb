"""Top-1/top-5 evaluation that counts every validation image exactly once across processes."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable

import numpy as np
import paddle

from ..utils.dist import all_reduce_sum, is_main, world_size
from ..utils.inference import TracedForwards
from ..utils.logger import get_logger
from ..utils.progress import ProgressLog
from .data import batches
from .eval_forward import eval_forward


@paddle.no_grad()
def evaluate(model: paddle.nn.Layer, loader: Iterable, amp_context: Callable | None = None,
             backend: str = "dygraph", logits: list[np.ndarray] | None = None,
             what: str = "evaluated images", traced: TracedForwards | None = None) -> dict[str, float]:
    """Accuracy of ``model`` (eval mode) over ``loader``; the loader shards without padding.
    ``backend``: see ``eval_forward`` (``img_per_s`` includes compiling the program for oneDNN).
    ``traced``: keeps the model's traced program for the next evaluations on oneDNN (see ``OneDNNForward``).
    ``logits``: a list that receives each batch's logits (float32, this process's images in the
    loader's order), for checking them image by image. An evaluation that runs long (an ImageNet one on a CPU:
    half an hour) logs its progress on rank 0 as ``what: done/total ...`` (:class:`ProgressLog`; images done
    estimated from rank 0's share)."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = count = 0.0
    start = time.time()
    dataset = getattr(loader, "dataset", None)
    try:
        forward = eval_forward(model, backend, amp_context, traced)
        progress = ProgressLog(len(dataset), what, get_logger().info) if dataset is not None and is_main() else None
        with contextlib.closing(batches(loader)) as stream:  # a failing forward ends the loader's workers now
            for images, labels in stream:
                batch_logits = forward(images).astype("float32")
                if logits is not None:
                    logits.append(batch_logits.numpy())
                labels = labels.reshape([-1, 1]).astype("int64")
                top = paddle.topk(batch_logits, k=min(5, batch_logits.shape[-1]), axis=-1)[1]
                hits = (top == labels).astype("float32")
                correct1 += float(hits[:, 0].sum())
                correct5 += float(hits.sum())
                count += labels.shape[0]
                if progress is not None:
                    progress.update(labels.shape[0] * world_size())
    finally:
        if was_training:
            model.train()
    elapsed = time.time() - start
    correct1, correct5, count, elapsed = all_reduce_sum([correct1, correct5, count, elapsed])
    if count == 0:
        raise ValueError("the validation set is empty")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "count": int(count),
            "img_per_s": count / max(elapsed / world_size(), 1e-9)}
