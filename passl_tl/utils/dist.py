"""Process-group helpers that also work in a plain single-process run."""
from __future__ import annotations

import os

import paddle
import paddle.distributed as dist


def world_size() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def rank() -> int:
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def is_main() -> bool:
    return rank() == 0


def init_distributed() -> None:
    """Join the process group when launched by ``paddle.distributed.launch`` with >1 process."""
    if world_size() > 1 and not dist.is_initialized():
        dist.init_parallel_env()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few Python numbers over all processes (float64 so counts stay exact)."""
    if world_size() == 1:
        return list(values)
    t = paddle.to_tensor(values, dtype="float64")
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_buffers(layer: paddle.nn.Layer) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every process, as torch DDP does."""
    if world_size() == 1:
        return
    for buffer in layer.buffers():
        dist.broadcast(buffer, src=0)
