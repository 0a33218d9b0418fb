"""MixToken: the official box draws, seeded replays, and the box swap of token maps."""
import numpy as np
import paddle
import pytest

from passl_tl.batch.pipeline import Batch, Step
from passl_tl.models import create_model
from passl_tl.token_labels.mixtoken import (MixToken, box_tensor, flip_box, mix_class_target, mix_lam, mix_map,
                                           sample_mix_box)
from passl_tl.utils.registry import ConfigError

from tests.conftest import load_npz


@pytest.mark.parametrize("case", ["lvvit_t_d2", "lvvit_lstem_d1"])
def test_mix_box_reproduces_official_draws(case):
    ref = load_npz(f"{case}.npz")
    for prefix in ("train", "train_emptybox"):
        rng = np.random.RandomState(int(ref[f"{prefix}/mix_seed"]))
        box = sample_mix_box(rng, (14, 14), alpha=1.0)
        assert box == tuple(int(v) for v in ref[f"{prefix}/bbox"])
    assert mix_lam(tuple(ref["train/bbox"]), 196) == pytest.approx(float(ref["train/loss_lam"]))


def test_mix_box_rows_use_grid_height():
    rng = np.random.RandomState(3)
    for _ in range(200):
        x1, y1, x2, y2 = sample_mix_box(rng, (4, 20))
        assert 0 <= x1 <= x2 <= 4 and 0 <= y1 <= y2 <= 20


def test_mixtoken_box_seeds_replay_a_recorded_run():
    """``box_seeds``: step k draws as the official code after ``np.random.seed(box_seeds[k])``; too few
    seeds for the run is a config error naming the counts."""
    with paddle.LazyGuard():
        model = create_model("lvvit_tiny", depth=1, num_classes=10)
    stage = MixToken(box_seeds=[5, 6, 7, 8])
    stage.bind(model, None)
    stage.check_steps(4)
    batch = Batch(paddle.zeros([2, 3, 4, 4]), paddle.zeros([2]))
    for step, seed in enumerate([5, 6, 7, 8]):
        box = sample_mix_box(np.random.RandomState(seed), (14, 14))
        assert stage(batch, Step(0, 0, step)).mix_box == (box if box[0] < box[2] and box[1] < box[3] else None)
    with pytest.raises(ConfigError, match=r"a seed for each of the 5 steps.*got 4 seeds"):
        stage.check_steps(5)
    with pytest.raises(ConfigError, match="box_seeds must be a list of non-negative integers"):
        MixToken(box_seeds=[1, -2])


def test_flip_box_matches_masked_reference():
    x = np.random.RandomState(1).standard_normal((3, 2, 5, 6)).astype("float32")
    box = (1, 2, 4, 6)  # rows 1:4 (axis 2), cols 2:6 (axis 3)
    expected = x.copy()
    expected[:, :, 1:4, 2:6] = x[::-1, :, 1:4, 2:6]
    mixed = flip_box(paddle.to_tensor(x), box, row_axis=2)
    np.testing.assert_array_equal(mixed.numpy(), expected)
    np.testing.assert_array_equal(flip_box(mixed, box, row_axis=2).numpy(), x)  # an involution
    channels_last = flip_box(paddle.to_tensor(x.transpose(0, 2, 3, 1)), box, row_axis=1)
    np.testing.assert_array_equal(channels_last.numpy(), expected.transpose(0, 2, 3, 1))
    t = paddle.to_tensor(x)
    assert flip_box(t, None, 2) is t and flip_box(t, (3, 1, 3, 5), 2) is t
    with pytest.raises(ValueError, match="does not fit"):
        flip_box(t, (0, 0, 6, 2), 2)


@pytest.mark.parametrize("box", [(1, 2, 4, 6), (0, 0, 5, 6), (2, 3, 2, 5), (0, 0, 0, 0)])
def test_box_tensor_swaps_like_the_numpy_reference(box):
    """A compiled step's box (a tensor, unknown when the program is built): the map swapped in the box, its
    gradient swapped back, and the class target mixed exactly as with the Python box's float share."""
    x = np.random.RandomState(2).standard_normal((3, 2, 5, 6)).astype("float32")
    upstream = np.random.RandomState(3).standard_normal(x.shape).astype("float32")
    x1, y1, x2, y2 = box
    expected, expected_grad = x.copy(), upstream.copy()
    expected[:, :, x1:x2, y1:y2] = x[::-1, :, x1:x2, y1:y2]
    expected_grad[:, :, x1:x2, y1:y2] = upstream[::-1, :, x1:x2, y1:y2]
    t = paddle.to_tensor(x, stop_gradient=False)
    mixed = mix_map(t, box_tensor(box), scale=1, row_axis=2)
    mixed.backward(paddle.to_tensor(upstream))
    np.testing.assert_array_equal(mixed.numpy(), expected)
    np.testing.assert_array_equal(t.grad.numpy(), expected_grad)
    target = paddle.nn.functional.softmax(paddle.to_tensor(x[:, 0, 0]), axis=-1)
    np.testing.assert_array_equal(mix_class_target(target, box_tensor(box), 30).numpy(),
                                  mix_class_target(target, box, 30).numpy())
    tiled = np.tile(x, (1, 1, 2, 2))
    scaled = mix_map(paddle.to_tensor(tiled), box_tensor(box), scale=2, row_axis=2)
    expected_scaled = tiled.copy()
    expected_scaled[:, :, 2 * x1:2 * x2, 2 * y1:2 * y2] = tiled[::-1, :, 2 * x1:2 * x2, 2 * y1:2 * y2]
    np.testing.assert_array_equal(scaled.numpy(), expected_scaled)
    assert box_tensor(None).tolist() == [0, 0, 0, 0]
