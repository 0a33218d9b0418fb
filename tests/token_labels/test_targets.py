"""Dense token-label targets against the official mixup_target fixtures."""
import numpy as np
import paddle
import pytest

from passl_tl.batch.pipeline import Batch, Step
from passl_tl.models import create_model
from passl_tl.token_labels.packing import pack_label_sample
from passl_tl.token_labels.targets import TokenLabelTargets, dense_label_map, make_token_targets, pool_crop
from passl_tl.utils.registry import BATCH_TRANSFORMS

from tests.conftest import load_npz

NUM_CLASSES = 1000


@pytest.fixture(scope="module")
def ref():
    return load_npz("labels_dense_target.npz")


def test_official_box_order_matches_official_targets(ref):
    out = make_token_targets(ref["input"], NUM_CLASSES, label_size=14, smoothing=0.1, box_order="official")
    assert out.shape == [3, NUM_CLASSES, 198]
    np.testing.assert_allclose(out.numpy(), ref["target_lam1"], rtol=0, atol=1e-4)


def test_correct_box_order_matches_xyxy_targets(ref):
    out = make_token_targets(paddle.to_tensor(ref["input"]), NUM_CLASSES, box_order="correct")
    np.testing.assert_allclose(out.numpy(), ref["target_lam1_boxes_xyxy"], rtol=0, atol=1e-4)
    official = make_token_targets(ref["input"], NUM_CLASSES, box_order="official").numpy()
    # The box order matters for the cropped samples only, not for the full-image crop (sample 2).
    assert np.abs(out.numpy()[:2] - official[:2]).max() > 0.5
    np.testing.assert_allclose(out.numpy()[2], official[2], rtol=0, atol=1e-6)


def test_label_size_one_gives_ground_truth_and_cls_columns(ref):
    out = make_token_targets(ref["input"], NUM_CLASSES, label_size=1, box_order="official")
    assert out.shape == [3, NUM_CLASSES, 2]
    np.testing.assert_allclose(out.numpy(), ref["target_lam1_labelsize1"], rtol=0, atol=1e-4)


def test_pooled_logits_match_roi_align(ref):
    labels = paddle.to_tensor(ref["input"])
    dense = dense_label_map(labels, NUM_CLASSES)
    crop = labels[:, 2, 0, 0, :4]
    tokens = pool_crop(dense, crop, 14, box_order="official").numpy().reshape(3, NUM_CLASSES, 196)
    cls = pool_crop(dense, crop, 1, box_order="official").numpy().reshape(3, NUM_CLASSES)
    np.testing.assert_allclose(tokens, ref["pooled_tokens"], rtol=0, atol=3e-5)
    np.testing.assert_allclose(cls, ref["pooled_cls"], rtol=0, atol=3e-5)


def test_dense_map_scatters_topk_logits(ref):
    dense = dense_label_map(paddle.to_tensor(ref["input"]), NUM_CLASSES).numpy()
    b, r, c = 1, 4, 9
    ids = ref["input"][b, 1, :, r, c].astype(int)
    np.testing.assert_array_equal(dense[b, ids, r, c], ref["input"][b, 0, :, r, c])
    assert np.count_nonzero(dense[b, :, r, c]) == np.count_nonzero(ref["input"][b, 0, :, r, c])


def test_columns(ref):
    out = make_token_targets(ref["input"], NUM_CLASSES).numpy()
    gt = ref["input"][:, 2, 0, 0, 5].astype(int)
    np.testing.assert_array_equal(out[:, :, 0].argmax(1), gt)
    np.testing.assert_allclose(out[np.arange(3), gt, 0], 0.9 + 1e-4, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[:, :, 0].sum(1), 1.0, atol=1e-4)
    np.testing.assert_allclose(out[:, :, 1:].sum(1), 1.0 + 1e-4, atol=1e-4)  # on + C * off


@pytest.mark.parametrize("as_tensor", [False, True])
def test_input_is_not_modified(ref, as_tensor):
    labels = paddle.to_tensor(ref["input"]) if as_tensor else ref["input"].copy()
    make_token_targets(labels, NUM_CLASSES, box_order="official")
    after = labels.numpy() if as_tensor else labels
    np.testing.assert_array_equal(after, ref["input"])
    # The official function rewrote (h, w) into (bottom, right) in its input.
    assert not np.array_equal(after[:, 2, 0, 0, :], ref["input_after_call_plane2_row0"])


def test_box_order_semantics_on_half_image_map():
    # Class 0 fills the left half of the map, class 1 the right half; crop the left half.
    ids = np.zeros((2, 18, 18), np.float32)
    ids[0, :, 9:] = 1
    ids[1] = 1 - ids[0]
    logits = np.stack([np.full((18, 18), 8.0), np.full((18, 18), 1.0)]).astype(np.float32)
    labels = pack_label_sample(np.stack([logits, ids]), crop=(0.0, 0.0, 1.0, 0.5), gt=0)[None]
    correct = make_token_targets(labels, 2, label_size=4, box_order="correct").numpy()
    official = make_token_targets(labels, 2, label_size=4, box_order="official").numpy()
    assert (correct[0, :, 1:].argmax(0) == 0).all()
    # The official order pools the top half (the crop mirrored across the diagonal): both classes.
    tokens = official[0, :, 2:].argmax(0).reshape(4, 4)
    np.testing.assert_array_equal(tokens, np.repeat([[0, 0, 1, 1]], 4, axis=0))


def test_pack_label_sample_layout():
    label = np.random.RandomState(0).rand(2, 5, 7, 6).astype(np.float16)
    packed = pack_label_sample(label, (0.1, 0.2, 0.3, 0.4), 42)
    assert packed.shape == (3, 5, 7, 6) and packed.dtype == np.float32
    np.testing.assert_array_equal(packed[:2], label.astype(np.float32))
    np.testing.assert_array_equal(packed[2, 0, 0], np.float32([0.1, 0.2, 0.3, 0.4, 0, 42]))
    assert np.count_nonzero(packed[2]) == 5


def test_errors():
    with pytest.raises(ValueError, match="width >= 6"):
        pack_label_sample(np.zeros((2, 5, 18, 5), np.float32), (0, 0, 1, 1), 0)
    with pytest.raises(ValueError, match="width >= 6"):
        make_token_targets(np.zeros((1, 3, 5, 18, 5), np.float32), 10)
    labels = pack_label_sample(np.full((2, 5, 8, 8), 12, np.float32), (0, 0, 1, 1), 3)[None]
    with pytest.raises(ValueError, match=r"outside \[0, 10\)"):
        make_token_targets(labels, 10)
    with pytest.raises(ValueError, match="box_order"):
        make_token_targets(labels, 20, box_order="xyxy")
    with pytest.raises(ValueError, match=r"\[B, 3, k, H, W\]"):
        make_token_targets(labels[:, :2], 20)


def test_registered_batch_stage_takes_classes_and_grid_from_the_model(ref):
    """The target stage reads num_classes and the token grid (the label size) from the model it is bound to."""
    _, num_classes, columns = ref["target_lam1"].shape
    grid = int(round((columns - 2) ** 0.5))
    stage = BATCH_TRANSFORMS.build({"name": "TokenLabelTargets", "box_order": "official"})
    assert isinstance(stage, TokenLabelTargets)
    with paddle.LazyGuard():
        model = create_model("lvvit_tiny", depth=1, num_classes=num_classes, img_size=16 * grid)
    stage.bind(model, None)
    assert (stage.num_classes, stage.label_size) == (num_classes, grid)
    batch = stage(Batch(paddle.zeros([1]), paddle.to_tensor(ref["input"])), Step(0, 0, 0))
    np.testing.assert_allclose(batch.targets.numpy(), ref["target_lam1"], atol=1e-4)  # fixture README: dense targets


def test_correct_box_order_on_a_non_square_map():
    """A 12 x 24 map whose top half is class 1 and bottom half class 2: a top-half crop must
    give class-1 targets everywhere (scaling rows by the width would reach into the bottom)."""
    k, h, w, num_classes = 2, 12, 24, 4
    labels = np.zeros((1, 3, k, h, w), np.float32)
    labels[0, 0, 0] = 8.0
    labels[0, 1, 0, : h // 2], labels[0, 1, 0, h // 2:] = 1, 2
    labels[0, 1, 1] = 3
    labels[0, 2, 0, 0, :4] = (0.0, 0.0, 0.5, 1.0)  # top, left, height, width
    targets = make_token_targets(labels, num_classes, label_size=4, smoothing=0.0).numpy()
    assert (targets[0, :, 1:].argmax(axis=0) == 1).all()
