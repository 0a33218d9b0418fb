"""Mixup / CutMix on token-label targets, and soft targets for plain labels."""
import numpy as np
import paddle
import pytest

from passl_tl.batch.mixup import Mixup, cutmix_box, mix_targets, paste_box
from passl_tl.batch.pipeline import Batch, BatchPipeline, Step
from passl_tl.batch.soft_targets import smoothed_one_hot
from passl_tl.token_labels.targets import make_token_targets
from passl_tl.utils.registry import ConfigError

from tests.conftest import load_npz


def test_mixed_token_targets_match_official_mixup_target():
    ref = load_npz("labels_dense_target.npz")
    targets = make_token_targets(ref["input"], 1000, label_size=14, smoothing=0.1, box_order="official")
    mixed = mix_targets(targets, float(ref["mix_lam"])).numpy()
    np.testing.assert_allclose(mixed, ref["target_mix"], atol=1e-4)  # fixture README: dense targets atol 1e-4


def test_cutmix_box_bounds_and_area():
    rng = np.random.RandomState(0)
    for lam in np.linspace(0.05, 0.95, 19):
        top, bottom, left, right = cutmix_box(rng, 32, 48, lam)
        assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 48
        assert (bottom - top) <= int(32 * np.sqrt(1 - lam)) and (right - left) <= int(48 * np.sqrt(1 - lam))
    top, bottom, left, right = cutmix_box(rng, 100, 100, 0.5, minmax=(0.2, 0.8))
    assert 20 <= bottom - top < 80 and 20 <= right - left < 80


def test_paste_box_takes_the_flipped_partner_inside_only():
    x = paddle.arange(4 * 2 * 6 * 5, dtype="float32").reshape([4, 2, 6, 5])
    out = paste_box(x, (1, 4, 2, 5)).numpy()
    ref = x.numpy().copy()
    ref[:, :, 1:4, 2:5] = x.numpy()[::-1, :, 1:4, 2:5]
    np.testing.assert_array_equal(out, ref)


def one_hot_batch():
    images = paddle.to_tensor(np.random.RandomState(1).rand(4, 3, 16, 16).astype("float32"))
    return Batch(images, paddle.to_tensor(np.eye(4, 5, dtype="float32")))  # [B, K] one row per sample


def test_mixup_mixes_images_and_targets_with_the_same_lam():
    batch = one_hot_batch()
    x = batch.images.numpy()
    out = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0)(batch, Step(0, 0, 0))
    lam = float(out.targets.numpy()[0, 0])  # sample 0 keeps lam of its own one-hot
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(out.targets.numpy()[0, 3], 1.0 - lam, rtol=1e-6)
    np.testing.assert_allclose(out.images.numpy(), lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(batch.images.numpy(), x)  # the input batch is left as it was


def test_cutmix_lam_is_the_pasted_area_share():
    cut = 0
    for step in range(20):
        batch = one_hot_batch()
        x = batch.images.numpy()
        out = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0)(batch, Step(0, 0, step))
        changed = (out.images.numpy() != x).any(axis=1)[0]  # pixels of sample 0 taken from sample 3
        lam = float(out.targets.numpy()[0, 0])
        if lam < 1.0:
            cut += 1
            assert lam == pytest.approx(1.0 - changed.sum() / changed.size, abs=1e-6)
    assert cut > 5


def test_mixup_probability_and_determinism():
    batch = one_hot_batch()
    assert Mixup(prob=0.0)(batch, Step(0, 0, 0)) is batch
    a, b = (Mixup()(one_hot_batch(), Step(0, 0, 5)) for _ in range(2))
    np.testing.assert_array_equal(a.images.numpy(), b.images.numpy())
    with pytest.raises(ConfigError):
        Mixup(mixup_alpha=0.0, cutmix_alpha=0.0)


def test_soft_targets():
    t = smoothed_one_hot(paddle.to_tensor([2, 0], dtype="int64"), 5, 0.1).numpy()
    np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
    assert t[0, 2] == pytest.approx(0.92) and t[0, 0] == pytest.approx(0.02)


@pytest.mark.parametrize("kwargs", [{"cutmix_minmax": [0.8, 0.2]}, {"cutmix_minmax": [0.2]}, {"prob": 5.0}])
def test_mixup_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigError, match="Mixup"):
        Mixup(**kwargs)


def test_mixup_needs_a_target_stage():
    with pytest.raises(ConfigError, match="batch.target"):
        BatchPipeline({"mixup": Mixup()})
