"""Token labels from a teacher (the official ``generate_label.py`` procedure, the "machine annotator").

The teacher's classifier is applied at every position of its last feature map
(``Classifier.dense_logits``); the top-k logits and class ids per position are saved as one
``[2, k, H, W]`` file per image, ``<out>/<key>.npy`` (``files.label_keys``: ``<wnid>/<stem>``),
the layout ``ImageNetTokenLabel`` reads: float16, or float32 for a teacher of more than 2049
classes, whose ids float16 would round (``files.label_dtype``). Files are written atomically, so
a run can be interrupted and resumed: images whose file is already valid are skipped.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np
import paddle
from paddle import Tensor

from ..deploy.preprocess import config_eval_transforms
from ..engine.data import batches
from ..utils.config import Config
from ..utils.dist import all_reduce_sum, rank, world_size
from ..utils.logger import get_logger
from ..utils.progress import ProgressLog
from ..utils.registry import ConfigError
from .files import is_complete_label, label_dtype, label_paths, save_npy_atomic
from .packing import MIN_LABEL_WIDTH


class LabelingResult(NamedTuple):
    """Counts over all processes; ``correct`` is the teacher's top-1 hits on the ``written`` images."""

    total: int
    written: int
    skipped: int
    correct: int


def eval_transform_specs(cfg: Config, img_size: int | None, crop_pct: float) -> list[dict[str, Any]]:
    """The config's eval transforms (``data.val.transforms``: its interpolation and normalisation)
    with its ``ResizeCropPct`` set to ``img_size`` (default: the config's) and ``crop_pct``."""
    specs = [dict(spec) for spec in config_eval_transforms(cfg)]
    resizes = [spec for spec in specs if spec.get("name") == "ResizeCropPct"]
    if len(resizes) != 1:
        raise ConfigError(f"{cfg.where('data.val.transforms')} must hold one ResizeCropPct (the eval resize and "
                          f"centre crop that label generation sets to --img-size and --crop-pct)")
    resizes[0].update(size=img_size or resizes[0]["size"], crop_pct=crop_pct)
    return specs


def top_k_maps(dense: Tensor, k: int, dtype: np.dtype) -> np.ndarray:
    """``[B, K, H, W]`` logits -> ``[B, 2, k, H, W]`` of ``dtype``: per position the k largest logits
    (descending) and their class ids."""
    values, ids = paddle.topk(dense, k, axis=1)
    return np.stack([values.numpy(), ids.numpy()], axis=1).astype(dtype)


class _Indexed(paddle.io.Dataset):
    """The samples ``indices`` of ``dataset`` as ``(image, class id, index)``."""

    def __init__(self, dataset: Any, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.int64, np.int64]:
        image, target = self.dataset[self.indices[i]]
        return image, target, np.int64(self.indices[i])


def label_layout(model: paddle.nn.Layer, image: np.ndarray, k: int) -> tuple[tuple[int, ...], np.dtype]:
    """The ``[2, k, H, W]`` label shape ``model`` gives for images like ``image`` ([3, S, S]) and
    the dtype that holds its class ids exactly."""
    try:
        _, num_classes, height, width = model.dense_logits(paddle.to_tensor(image[None])).shape
    except ValueError as e:
        raise ConfigError(f"the teacher does not take {image.shape[1]}x{image.shape[2]} images ({e}): build it "
                          f"for that size (e.g. -o model.img_size={image.shape[1]}) or pick --img-size") from e
    if not 1 <= k <= num_classes:
        raise ConfigError(f"--topk must be in [1, {num_classes}] for a teacher of {num_classes} classes, got {k}")
    return (2, k, height, width), label_dtype(num_classes)


@paddle.no_grad()
def generate_token_labels(model: paddle.nn.Layer, dataset: Any, out_root: str, k: int = 5,
                          batch_size: int = 32, num_workers: int = 0) -> LabelingResult:
    """Label every image of ``dataset`` (``samples`` [(path, class id)], items ``(image, class id)``)
    into ``out_root`` with the teacher ``model``.

    Each process takes ``indices[rank::world]`` and skips the images whose file is already valid; it logs its
    progress (done/total, rate, time left) every ``utils.progress.LOG_INTERVAL_S`` seconds.
    """
    model.eval()
    shape, dtype = label_layout(model, dataset[0][0], k)
    paths = label_paths(out_root, [path for path, _ in dataset.samples])
    mine = range(rank(), len(dataset), world_size())
    pending = [i for i in mine if not is_complete_label(paths[i], shape, dtype)]
    get_logger().info(f"label maps {list(shape)} {dtype}: {len(pending)} of this process's {len(mine)} images "
                      f"to label")
    if shape[3] < MIN_LABEL_WIDTH:
        get_logger().warning(f"label maps {shape[2]}x{shape[3]} are too narrow for training (ImageNetTokenLabel "
                             f"needs width >= {MIN_LABEL_WIDTH}): label at a larger --img-size")
    loader = paddle.io.DataLoader(_Indexed(dataset, pending), batch_size=batch_size, shuffle=False,
                                  num_workers=num_workers, use_shared_memory=num_workers > 0)
    correct = 0
    progress = ProgressLog(len(pending), "labelled images", get_logger().info)
    for images, targets, indices in batches(loader):
        dense = model.dense_logits(images)
        for index, label in zip(indices.numpy().tolist(), top_k_maps(dense, k, dtype)):
            save_npy_atomic(label, paths[index])
        correct += int((dense.mean(axis=[2, 3]).argmax(axis=1) == targets).astype("int64").sum())
        progress.update(len(indices))
    written, skipped, correct = all_reduce_sum([len(pending), len(mine) - len(pending), correct])
    return LabelingResult(len(dataset), int(written), int(skipped), int(correct))
