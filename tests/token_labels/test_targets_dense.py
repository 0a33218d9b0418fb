"""make_token_targets (compact classes) against the official dense formulation it replaces."""
import numpy as np
import paddle
import pytest

from passl_tl.benchmarks.data import TARGETS_ATOL, synthetic_token_labels
from passl_tl.token_labels.packing import crop_and_truth, pack_label_sample
from passl_tl.token_labels.targets import dense_label_map, dense_token_targets, make_token_targets, pool_crop

from tests.conftest import load_npz

EXACT_ATOL = 1e-5  # make_token_targets against the exact (float64) targets; the dense float32 one is 5e-5 off


def mixed_batch(num_classes: int, map_hw: tuple[int, int]) -> np.ndarray:
    """Samples mentioning few and many classes side by side (the compact map pads the former)."""
    return np.concatenate([synthetic_token_labels(3, num_classes, 5, map_hw=map_hw, seed=1),
                           synthetic_token_labels(3, num_classes, num_classes, map_hw=map_hw, seed=2)])


def assert_same(labels, num_classes, **options) -> None:
    fast = make_token_targets(labels, num_classes, **options).numpy()
    dense = dense_token_targets(labels, num_classes, **options).numpy()
    assert fast.shape == dense.shape
    np.testing.assert_allclose(fast, dense, rtol=0, atol=TARGETS_ATOL)


@pytest.mark.parametrize("box_order", ["correct", "official"])
@pytest.mark.parametrize("label_size", [1, 3, 14])
@pytest.mark.parametrize("map_hw", [(18, 18), (12, 20)])
def test_matches_dense_formulation(box_order, label_size, map_hw):
    assert_same(mixed_batch(60, map_hw), 60, label_size=label_size, box_order=box_order)


def test_matches_dense_formulation_with_imagenet_sizes():
    labels = synthetic_token_labels(8, 1000, 200)
    assert_same(paddle.to_tensor(labels), 1000, label_size=14, smoothing=0.1)
    assert_same(labels, 1000, label_size=14, smoothing=0.0, box_order="official")


def test_sample_mentioning_every_class():
    """k = num_classes: no class is left for the background slot to stand for."""
    labels = synthetic_token_labels(4, 5, 5, map_hw=(6, 6), seed=3)
    labels[:, 0] -= 30.0  # all pooled logits far below the background's 0
    for smoothing in (0.0, 0.1):
        assert_same(labels, 5, label_size=4, smoothing=smoothing)


def test_crops_reaching_beyond_the_map():
    labels = mixed_batch(30, (10, 14))
    labels[:, 2, 0, 0, :4] = [[-0.3, 0.2, 0.5, 0.9], [0.6, -0.1, 0.9, 1.4], [0.0, 0.0, 1.0, 1.0],
                              [1.05, 1.1, 0.2, 0.3], [0.2, 0.3, 0.01, 0.02], [-1.0, -1.0, 3.0, 3.0]]
    for box_order in ("correct", "official"):
        assert_same(labels, 30, label_size=5, box_order=box_order)


def test_class_repeated_within_a_cell():
    labels = synthetic_token_labels(4, 30, 10, seed=5)
    labels[:, 1, 1] = labels[:, 1, 0]  # top-2 id = top-1 id everywhere: one of the two logits is kept
    assert_same(labels, 30, label_size=6)


def test_ground_truth_outside_the_label_map():
    """The ground truth needs its own slot even when no cell mentions it."""
    label = np.stack([np.full((2, 8, 8), 3.0), np.stack([np.zeros((8, 8)), np.ones((8, 8))])])
    labels = pack_label_sample(label, (0.1, 0.2, 0.5, 0.6), gt=7)[None]
    out = make_token_targets(labels, 9, label_size=2, smoothing=0.1).numpy()
    assert out[0, :, 0].argmax() == 7
    assert_same(labels, 9, label_size=2)


def test_close_to_exact_targets():
    """Against the targets computed in float64 from the official roi_align outputs."""
    labels = paddle.to_tensor(synthetic_token_labels(8, 1000, 200))
    crop, gt = crop_and_truth(labels)
    dense = dense_label_map(labels, 1000)
    pooled = np.concatenate([pool_crop(dense, crop, s).numpy().reshape(8, 1000, -1) for s in (1, 14)], axis=2)
    probs = np.exp(pooled - pooled.max(axis=1, keepdims=True).astype(np.float64))
    probs /= probs.sum(axis=1, keepdims=True)
    exact = probs * (0.9 + 1e-4) + 1e-4
    out = make_token_targets(labels, 1000, label_size=14, smoothing=0.1).numpy()
    np.testing.assert_allclose(out[:, :, 1:], exact, rtol=0, atol=EXACT_ATOL)
    np.testing.assert_array_equal(out[:, :, 0].argmax(axis=1), gt.numpy())


def test_reference_is_the_official_formulation():
    """The reference of these tests and of tools/benchmark.py reproduces the official targets."""
    ref = load_npz("labels_dense_target.npz")
    out = dense_token_targets(ref["input"], 1000, box_order="official").numpy()
    np.testing.assert_allclose(out, ref["target_lam1"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(make_token_targets(ref["input"], 1000, box_order="official").numpy(), out,
                               rtol=0, atol=TARGETS_ATOL)
