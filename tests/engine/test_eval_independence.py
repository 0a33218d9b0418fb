"""Evaluation does not depend on the batch size or the process count: on 37 demo images (a multiple
of neither 2 nor 7) every image's logits are bit-identical, and top-1/top-5 equal, at validation
batch sizes 1, 7 and 64 and under a real 2-process ``paddle.distributed.launch``, on both eval
backends. Run as a script (by the launch test), it evaluates on its process's shard and saves the
logits with their dataset indices."""
import argparse
import json
import os

import numpy as np
import paddle
import pytest

from passl_tl import build_model
from passl_tl.engine import evaluate
from passl_tl.engine.data import build_dataset, build_loader
from passl_tl.engine.run_config import load_run_config
from passl_tl.utils.dist import init_distributed, rank
from passl_tl.utils.threads import cpu_threads, set_cpu_threads

from tests.conftest import DEMO_CONFIG, launch_two

VAL_IMAGES = 37
BACKENDS = ("dygraph", "onednn")
THREADS = 2  # oneDNN's sums depend on the thread count: every process uses the same


def demo_model_and_val_set(data_root: str, weights: str):
    """The demo LV-ViT with ``weights`` and the first 37 images of a 10-class demo validation set."""
    cfg = load_run_config(DEMO_CONFIG, [f"data.val.root={data_root}", "data.val.train_per_class=1",
                                        "data.val.val_per_class=4"])
    model = build_model(cfg)
    model.set_state_dict(paddle.load(weights))
    val_set = build_dataset(cfg["data"]["val"], "data.val", cfg["seed"])
    return model, paddle.io.Subset(val_set, list(range(VAL_IMAGES)))


def evaluate_with_logits(model, val_set, batch_size: int, backend: str):
    """``evaluate``'s metrics, and the dataset indices of this process's images with their logits."""
    loader = build_loader(val_set, batch_size, num_workers=0, train=False, seed=0)
    logits = []
    metrics = evaluate(model, loader, backend=backend, logits=logits)
    indices = np.array([i for batch in loader.batch_sampler for i in batch], dtype=np.int64)
    return metrics, indices, np.concatenate(logits)


@pytest.fixture(scope="module", autouse=True)
def same_threads():
    """The launched processes' thread count, restored afterwards for the tests that follow."""
    before = cpu_threads()
    set_cpu_threads(THREADS)
    yield
    set_cpu_threads(before)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Demo data, seeded random weights saved to a file, the model and the 37-image validation set."""
    root = tmp_path_factory.mktemp("eval_independence")
    data_root, weights = str(root / "demo"), str(root / "weights.pdparams")
    paddle.seed(7)
    cfg = load_run_config(DEMO_CONFIG)
    paddle.save(build_model(cfg).state_dict(), weights)
    model, val_set = demo_model_and_val_set(data_root, weights)
    labels = np.array([val_set[i][1] for i in range(VAL_IMAGES)])
    return data_root, weights, model, val_set, labels


@pytest.fixture(scope="module")
def reference(demo):
    """Per backend: metrics and logits (in image order) of one process at batch size 1."""
    _, _, model, val_set, _ = demo
    results = {}
    for backend in BACKENDS:
        metrics, indices, logits = evaluate_with_logits(model, val_set, 1, backend)
        np.testing.assert_array_equal(indices, np.arange(VAL_IMAGES))
        results[backend] = metrics, logits
    return results


def accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 in percent, computed here from the logits."""
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    return 100.0 * np.mean(top5[:, 0] == labels), 100.0 * np.mean((top5 == labels[:, None]).any(axis=1))


def check_same(metrics, logits, reference_metrics, reference_logits, labels):
    np.testing.assert_array_equal(logits, reference_logits)  # bit for bit
    for key in ("top1", "top5", "count"):
        assert metrics[key] == reference_metrics[key], key
    assert metrics["count"] == VAL_IMAGES
    assert (metrics["top1"], metrics["top5"]) == pytest.approx(accuracy(logits, labels), abs=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_and_metrics_equal_at_batch_sizes_1_7_64(demo, reference, backend):
    _, _, model, val_set, labels = demo
    reference_metrics, reference_logits = reference[backend]
    assert reference_logits.shape == (VAL_IMAGES, 10) and np.ptp(reference_logits, axis=1).min() > 1e-3
    for batch_size in (7, 64):  # 5 full batches and a last one of 2; one partial batch of 37
        metrics, indices, logits = evaluate_with_logits(model, val_set, batch_size, backend)
        np.testing.assert_array_equal(indices, np.arange(VAL_IMAGES))
        check_same(metrics, logits, reference_metrics, reference_logits, labels)


@pytest.mark.slow
def test_two_processes_equal_one_process(demo, reference, tmp_path):
    """A real 2-process launch (shards of 19 and 18 images, batch size 7): each image evaluated once,
    its logits and the all-reduced metrics equal to one process at batch size 1."""
    data_root, weights, _, _, labels = demo
    out = tmp_path / "out"
    out.mkdir()
    launch_two([os.path.abspath(__file__), "--data-root", data_root, "--weights", weights, "--out", str(out)],
               tmp_path / "log")
    for backend in BACKENDS:
        shards = [np.load(out / f"{backend}_rank{r}.npz") for r in (0, 1)]
        assert [len(s["indices"]) for s in shards] == [19, 18]
        indices = np.concatenate([s["indices"] for s in shards])
        np.testing.assert_array_equal(np.sort(indices), np.arange(VAL_IMAGES))  # each image exactly once
        logits = np.empty([VAL_IMAGES, 10], np.float32)
        logits[indices] = np.concatenate([s["logits"] for s in shards])
        for r in (0, 1):
            metrics = json.loads(str(shards[r]["metrics"]))
            check_same(metrics, logits, *reference[backend], labels)


def main(argv: list[str] | None = None) -> None:
    """One process of the launch test: evaluate this process's shard at batch size 7 on each backend."""
    parser = argparse.ArgumentParser()
    for option in ("--data-root", "--weights", "--out"):
        parser.add_argument(option, required=True)
    args = parser.parse_args(argv)
    init_distributed()
    set_cpu_threads(THREADS)
    model, val_set = demo_model_and_val_set(args.data_root, args.weights)
    for backend in BACKENDS:
        metrics, indices, logits = evaluate_with_logits(model, val_set, 7, backend)
        np.savez(os.path.join(args.out, f"{backend}_rank{rank()}.npz"), indices=indices, logits=logits,
                 metrics=json.dumps(metrics))


if __name__ == "__main__":
    main()
