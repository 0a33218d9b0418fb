"""Joint image / token-label transforms against the official label-transform fixtures."""
import random

import numpy as np
import pytest
from PIL import Image

from passl_tl.datasets.transforms import (IMAGENET_MEAN, IMAGENET_STD, Normalize, RandomHorizontalFlipWithLabel,
                                          RandomResizedCropWithCoords, ResizeCropPct, draw_filter)
from passl_tl.token_labels.packing import pack_label_sample
from passl_tl.token_labels.targets import make_token_targets
from passl_tl.utils.registry import TRANSFORMS

from tests.conftest import load_npz


@pytest.fixture(scope="module")
def ref():
    return load_npz("labels_transforms.npz")


def rrc_cases(ref):
    return sorted({int(k.split("/")[1]) for k in ref if k.startswith("rrc/")})


def test_hflip_matches_official(ref):
    out = RandomHorizontalFlipWithLabel(prob=1.0)({"img": np.zeros((4, 6, 3), np.uint8), "label": ref["label"]},
                                                  random.Random(0))
    np.testing.assert_array_equal(out["label"], ref["hflip/label_out"])


def test_rrc_params_match_official(ref):
    t = RandomResizedCropWithCoords(224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), interpolation="random")
    cases = rrc_cases(ref)
    assert len(cases) >= 4
    for n in cases:
        width, height = (int(v) for v in ref[f"rrc/{n}/img_wh"])
        seed = int(ref[f"rrc/{n}/python_random_seed"])
        rng = random.Random(seed)
        assert t.get_params(width, height, rng) == tuple(ref[f"rrc/{n}/ijhw"])
        assert draw_filter(t.filters, rng) == int(ref[f"rrc/{n}/interpolation_pil"])
        # The official code seeds the module-level generator; it draws the same numbers.
        random.seed(seed)
        assert t.get_params(width, height, random) == tuple(ref[f"rrc/{n}/ijhw"])


def test_rrc_records_official_coords(ref):
    t = TRANSFORMS.build({"name": "RandomResizedCropWithCoords", "size": 224})
    for n in rrc_cases(ref):
        width, height = (int(v) for v in ref[f"rrc/{n}/img_wh"])
        sample = {"img": Image.new("RGB", (width, height)), "label": ref["label"]}
        out = t(sample, random.Random(int(ref[f"rrc/{n}/python_random_seed"])))
        assert out["img"].size == (224, 224)
        np.testing.assert_array_equal(np.float32(out["crop"]), ref[f"rrc/{n}/coords"])
        np.testing.assert_array_equal(pack_label_sample(out["label"], out["crop"], 0), ref[f"rrc/{n}/label_out"])
        assert "crop" not in sample  # the input sample is left as it was


def test_rrc_resamples_with_the_drawn_filter(ref):
    img = np.random.RandomState(1).randint(0, 256, (375, 500, 3), dtype=np.uint8)
    seed = int(ref["rrc/0/python_random_seed"])
    out = RandomResizedCropWithCoords(224)({"img": img}, random.Random(seed))
    i, j, h, w = (int(v) for v in ref["rrc/0/ijhw"])
    region = Image.fromarray(img).crop((j, i, j + w, i + h))
    chosen = int(ref["rrc/0/interpolation_pil"])
    other = ({Image.BILINEAR, Image.BICUBIC} - {chosen}).pop()
    np.testing.assert_array_equal(np.asarray(out["img"]), np.asarray(region.resize((224, 224), chosen)))
    assert not np.array_equal(np.asarray(out["img"]), np.asarray(region.resize((224, 224), other)))


def two_colour_sample():
    """A 100x80 image red on its left 30 %, blue elsewhere, and the matching 18x18 label map (0 red, 1 blue)."""
    img = np.zeros((80, 100, 3), np.uint8)
    img[:, :30] = (255, 0, 0)
    img[:, 30:] = (0, 0, 255)
    red = (np.arange(18) + 0.5) / 18 < 0.3
    ids = np.broadcast_to(np.where(red, 0, 1), (18, 18)).astype(np.float32)
    label = np.stack([np.stack([np.full((18, 18), 9.0), np.full((18, 18), 1.0)]), np.stack([ids, 1 - ids])])
    return {"img": img, "label": label.astype(np.float32)}


def test_flip_moves_image_and_label_together():
    flip = RandomHorizontalFlipWithLabel(prob=0.5)
    sample = two_colour_sample()
    flips = []
    for seed in range(12):
        out = flip(sample, random.Random(seed))
        flipped = out["img"][0, 0, 2] == 255  # leftmost pixel blue
        flips.append(flipped)
        assert (out["label"][1, 0, 0, 0] == 1) == flipped
        expected = sample["label"][..., ::-1] if flipped else sample["label"]
        np.testing.assert_array_equal(out["label"], expected)
    assert 0 < sum(flips) < len(flips)


def test_flip_crop_and_targets_stay_consistent_with_image():
    pipeline = [RandomHorizontalFlipWithLabel(0.5), RandomResizedCropWithCoords(28, scale=(0.3, 1.0))]
    flips = set()
    for seed in range(16):
        rng = random.Random(seed)
        sample = two_colour_sample()
        for t in pipeline:
            sample = t(sample, rng)
        flips.add(bool(np.asarray(sample["img"])[:, 0, 2].mean() > np.asarray(sample["img"])[:, -1, 2].mean()))
        packed = pack_label_sample(sample["label"], sample["crop"], 0)[None]
        targets = make_token_targets(packed, 2, label_size=14)
        token_class = targets.numpy()[0, :, 2:].argmax(0).reshape(14, 14)
        pixels = np.asarray(sample["img"]).reshape(14, 2, 14, 2, 3).mean((1, 3))
        pixel_class = (pixels[..., 2] > pixels[..., 0]).astype(int)
        assert (token_class == pixel_class).mean() >= 0.9, seed
    assert flips == {False, True}


def test_flip_after_crop_mirrors_the_crop_record():
    sample = {"img": np.zeros((4, 4, 3), np.uint8), "crop": (0.1, 0.2, 0.5, 0.3)}
    out = RandomHorizontalFlipWithLabel(prob=1.0)(sample, random.Random(0))
    assert out["crop"] == pytest.approx((0.1, 0.5, 0.5, 0.3))


def test_rrc_fallback_is_central_crop():
    t = RandomResizedCropWithCoords(16, scale=(2.0, 3.0))  # every try too large
    assert t.get_params(400, 100, random.Random(0)) == (0, 133, 100, 133)
    assert t.get_params(100, 100, random.Random(0)) == (0, 0, 100, 100)
    assert t.get_params(100, 400, random.Random(0)) == (133, 0, 133, 100)


def test_resize_crop_pct_is_timm_eval_transform():
    img = np.random.RandomState(2).randint(0, 256, (200, 300, 3), dtype=np.uint8)
    out = ResizeCropPct(64, crop_pct=0.875)({"img": img}, random.Random(0))
    resized = Image.fromarray(img).resize((109, 73), Image.BICUBIC)  # shorter side floor(64 / 0.875) = 73
    np.testing.assert_array_equal(np.asarray(out["img"]), np.asarray(resized.crop((22, 4, 86, 68))))
    assert out["crop"] == pytest.approx((4 / 73, 22 / 109, 64 / 73, 64 / 109))


def test_resize_crop_pct_above_one_pads_like_torchvision():
    """VOLO-D4/D5 eval (crop_pct 1.15): the 194-pixel short side is padded 15 + 15 with black."""
    landscape = np.random.RandomState(4).randint(1, 256, (200, 300, 3), dtype=np.uint8)  # no black pixel
    portrait = np.ascontiguousarray(landscape.transpose(1, 0, 2))
    t = ResizeCropPct(224, crop_pct=1.15)  # short side floor(224 / 1.15) = 194, long side cropped at 67 / 2 -> 34

    resized = np.asarray(Image.fromarray(landscape).resize((291, 194), Image.BICUBIC))
    expected = np.zeros((224, 224, 3), np.uint8)
    expected[15:209] = resized[:, 34:258]
    out = t({"img": landscape}, random.Random(0))
    np.testing.assert_array_equal(np.asarray(out["img"]), expected)
    assert out["crop"] == pytest.approx((-15 / 194, 34 / 291, 224 / 194, 224 / 291))

    resized = np.asarray(Image.fromarray(portrait).resize((194, 291), Image.BICUBIC))
    expected = np.zeros((224, 224, 3), np.uint8)
    expected[:, 15:209] = resized[34:258]
    out = t({"img": portrait}, random.Random(0))
    np.testing.assert_array_equal(np.asarray(out["img"]), expected)
    assert out["crop"] == pytest.approx((34 / 291, -15 / 194, 224 / 291, 224 / 194))


def test_resize_crop_pct_odd_padding_puts_the_extra_pixel_after():
    """Both sides shorter than the crop, by 30 and 23: torchvision pads 15 + 15 and 11 + 12 (round
    would start at round(-11.5) = -12, one pixel off)."""
    img = np.random.RandomState(5).randint(1, 256, (208, 200, 3), dtype=np.uint8)
    resized = np.asarray(Image.fromarray(img).resize((194, 201), Image.BICUBIC))  # int(194 * 208 / 200) = 201
    expected = np.zeros((224, 224, 3), np.uint8)
    expected[11:212, 15:209] = resized
    out = ResizeCropPct(224, crop_pct=1.15)({"img": img}, random.Random(0))
    np.testing.assert_array_equal(np.asarray(out["img"]), expected)
    assert out["crop"] == pytest.approx((-11 / 201, -15 / 194, 224 / 201, 224 / 194))


def test_resize_crop_pct_above_two_is_refused():
    with pytest.raises(ValueError, match=r"crop_pct must be in \(0, 2\], got 2\.5"):
        ResizeCropPct(224, crop_pct=2.5)
    with pytest.raises(ValueError, match=r"crop_pct.*2\.5"):
        TRANSFORMS.build({"name": "ResizeCropPct", "size": 224, "crop_pct": 2.5})


def test_normalize():
    img = np.random.RandomState(3).randint(0, 256, (5, 7, 3), dtype=np.uint8)
    out = Normalize()({"img": img}, random.Random(0))["img"]
    assert out.shape == (3, 5, 7) and out.dtype == np.float32
    expected = (img.transpose(2, 0, 1) / 255.0 - np.reshape(IMAGENET_MEAN, (3, 1, 1))) / np.reshape(IMAGENET_STD,
                                                                                                   (3, 1, 1))
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        Normalize()({"img": out}, random.Random(0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="interpolation"):
        RandomResizedCropWithCoords(224, interpolation="nearest")
    with pytest.raises(ValueError, match="interpolation"):
        ResizeCropPct(224, interpolation="random")
    with pytest.raises(ValueError, match=r"\(min, max\)"):
        RandomResizedCropWithCoords(224, scale=(1.0, 0.08))
