"""Random erasing (timm 0.4.5 semantics) on the normalized image; the token-label map is left alone."""
import random

import numpy as np
import pytest

from passl_tl.datasets.random_erasing import RandomErasing
from passl_tl.datasets.transforms import Normalize
from passl_tl.utils.registry import TRANSFORMS, ConfigError

H, W = 64, 80


def sample():
    rs = np.random.RandomState(0)
    return {"img": np.full((3, H, W), 5.0, dtype=np.float32), "label": rs.randn(2, 5, 18, 18).astype(np.float32),
            "crop": (0.1, 0.2, 0.5, 0.6)}


def erased_box(img):
    """(top, left, h, w) bounding box of the pixels no longer 5.0, checking it is a filled rectangle."""
    changed = (img != 5.0).any(0)
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    top, left, h, w = rows[0], cols[0], rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    assert changed[top:top + h, left:left + w].all() and changed.sum() == h * w
    return top, left, h, w


def test_prob_zero_is_identity():
    t = RandomErasing(prob=0.0)
    s = sample()
    for seed in range(20):
        out = t(s, random.Random(seed))
        np.testing.assert_array_equal(out["img"], s["img"])
        assert out["label"] is s["label"]


def test_prob_one_erases_one_rectangle_within_bounds():
    t = RandomErasing(prob=1.0, mode="const", min_area=0.02, max_area=1 / 3, min_aspect=0.3)
    s = sample()
    areas, aspects = [], []
    for seed in range(200):
        out = t(s, random.Random(seed))
        top, left, h, w = erased_box(out["img"])
        assert (out["img"][:, top:top + h, left:left + w] == 0).all()
        # h and w are rounded from a real rectangle with area and aspect in range
        assert (h + 0.5) * (w + 0.5) >= 0.02 * H * W and (h - 0.5) * (w - 0.5) <= H * W / 3
        assert (h + 0.5) / (w - 0.5) >= 0.3 and (h - 0.5) / (w + 0.5) <= 1 / 0.3
        assert h < H and w < W
        areas.append(h * w / (H * W))
        aspects.append(h / w)
        np.testing.assert_array_equal(out["label"], s["label"])
        assert out["crop"] == s["crop"]
    assert min(areas) < 0.06 and max(areas) > 0.25
    assert min(aspects) < 0.5 and max(aspects) > 2.0
    assert (s["img"] == 5.0).all()  # the input is not modified


def test_fill_modes():
    s = sample()
    const = RandomErasing(prob=1.0, mode="const", min_area=0.2, max_area=0.3)(s, random.Random(0))["img"]
    top, left, h, w = erased_box(const)
    assert (const[:, top:top + h, left:left + w] == 0).all()

    rand = RandomErasing(prob=1.0, mode="rand", min_area=0.2, max_area=0.3)(s, random.Random(0))["img"]
    assert erased_box(rand) == (top, left, h, w)  # same draws, same rectangle
    region = rand[:, top:top + h, left:left + w]
    per_channel = region.reshape(3, -1)
    assert (per_channel == per_channel[:, :1]).all() and len(set(per_channel[:, 0].tolist())) == 3

    pixel = RandomErasing(prob=1.0, mode="pixel", min_area=0.2, max_area=0.3)(s, random.Random(0))["img"]
    assert erased_box(pixel) == (top, left, h, w)
    values = pixel[:, top:top + h, left:left + w]
    assert values.dtype == np.float32 and len(np.unique(values)) == values.size
    assert abs(values.mean()) < 0.1 and values.std() == pytest.approx(1.0, abs=0.1)


def test_several_rectangles_share_the_area():
    t = RandomErasing(prob=1.0, max_count=3, min_area=0.1, max_area=0.3)
    counts = set()
    for seed in range(60):
        boxes = t.boxes(H, W, random.Random(seed))
        counts.add(len(boxes))
        for _, _, h, w in boxes:
            assert (h - 0.5) * (w - 0.5) <= 0.3 * H * W / len(boxes)
    assert counts == {1, 2, 3}
    assert {len(RandomErasing(prob=1.0, min_count=2, max_count=2).boxes(H, W, random.Random(s)))
            for s in range(10)} == {2}


def test_deterministic_per_rng_and_independent_of_global_state():
    t = TRANSFORMS.build({"name": "RandomErasing", "prob": 1.0})
    assert t.mode == "pixel"
    s = sample()
    outs = []
    for global_seed in (1, 2):
        random.seed(global_seed)
        np.random.seed(global_seed)
        state = np.random.get_state()[1].copy()
        outs.append(t(s, random.Random(7))["img"])
        np.testing.assert_array_equal(np.random.get_state()[1], state)
    np.testing.assert_array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], t(s, random.Random(8))["img"])


def test_needs_the_normalized_image():
    img = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(TypeError, match="after Normalize"):
        RandomErasing(prob=1.0)({"img": img}, random.Random(0))
    out = RandomErasing(prob=1.0)(Normalize()({"img": img}, random.Random(0)), random.Random(0))
    assert out["img"].shape == (3, H, W)
    with pytest.raises(ConfigError, match="mode"):
        RandomErasing(mode="noise")
    with pytest.raises(ConfigError, match="min_count"):
        RandomErasing(min_count=2, max_count=1)


@pytest.mark.parametrize("kwargs", [{"prob": 25}, {"min_aspect": 0}, {"min_area": 0.5, "max_area": 0.1},
                                    {"min_count": 2}])
def test_bad_arguments_are_config_errors(kwargs):
    from passl_tl.utils.registry import ConfigError
    with pytest.raises(ConfigError, match="RandomErasing"):
        RandomErasing(**kwargs)
