"""Evaluations on oneDNN that keep the models' traced programs (``TracedForwards``): bit for bit the logits of a
fresh export with the weights of the time, after an optimizer step and after ``set_value``, for a model and its
EMA evaluated in turn; a program per input shape and per architecture; no temporary file left behind."""
import os
import tempfile

import numpy as np
import paddle
import pytest

from passl_tl.engine import eval_forward, evaluate
from passl_tl.engine.ema import ModelEMA
from passl_tl.engine.eval_forward import OneDNNForward
from passl_tl.models import create_model
from passl_tl.utils.inference import TracedForwards

TRACES: list[paddle.nn.Layer] = []  # the head of each model whose forward was traced, in order


def counting_traces(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """``model`` with a pre-hook on its head that records each trace of its forward (hooks run while tracing;
    a program traced before is saved without running them). A function, not a method: the EMA's deep copy shares it."""
    def hook(head, inputs):
        if not paddle.in_dynamic_mode():
            TRACES.append(head)
    model.head.register_forward_pre_hook(hook)
    return model


def small_lvvit(seed: int) -> paddle.nn.Layer:
    """A one-block LV-ViT at 64 px: its conv stem's BatchNorms are folded into the convolutions by oneDNN's passes."""
    paddle.seed(seed)
    return counting_traces(create_model("lvvit_tiny", depth=1, num_classes=7, img_size=64))


def evaluated(model: paddle.nn.Layer, images: paddle.Tensor, traced: TracedForwards | None) -> tuple[np.ndarray, int]:
    """One evaluation's logits of ``images``, and how many times it traced."""
    before = len(TRACES)
    with paddle.no_grad():
        logits = OneDNNForward(model, traced)(images).numpy()
    return logits, len(TRACES) - before


def fresh(model: paddle.nn.Layer, images: paddle.Tensor) -> np.ndarray:
    """The logits of a fresh export and predictor with ``model``'s current weights."""
    return evaluated(model, images, None)[0]


def train_step(model: paddle.nn.Layer, images: paddle.Tensor) -> None:
    """One AdamW step; the train-mode forward also moves the BatchNorms' running statistics."""
    model.train()
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-2, parameters=model.parameters())
    outputs = model(images)
    (outputs["cls"].square().mean() + outputs["aux"].square().mean()).backward()
    optimizer.step()
    optimizer.clear_grad()
    model.eval()


@pytest.fixture
def images():
    paddle.seed(100)
    return paddle.randn([3, 3, 64, 64])


def test_reused_program_gives_the_logits_of_a_fresh_export(images):
    model, traced = small_lvvit(0), TracedForwards()
    first, traces = evaluated(model, images, traced)
    assert traces == 1
    second, traces = evaluated(model, images, traced)
    assert traces == 0
    reference = fresh(model, images)
    np.testing.assert_array_equal(first, reference)
    np.testing.assert_array_equal(second, reference)


def test_new_weights_are_evaluated(images):
    """After an optimizer step (parameters and BatchNorm statistics) and after ``set_state_dict`` (``set_value``
    of every tensor), the reused program gives the new weights' logits."""
    model, traced = small_lvvit(0), TracedForwards()
    before = evaluated(model, images, traced)[0]
    train_step(model, images)
    stepped, traces = evaluated(model, images, traced)
    assert traces == 0
    np.testing.assert_array_equal(stepped, fresh(model, images))
    assert np.abs(stepped - before).max() > 1e-3
    model.set_state_dict(small_lvvit(1).state_dict())
    replaced, traces = evaluated(model, images, traced)
    assert traces == 0
    np.testing.assert_array_equal(replaced, fresh(model, images))
    assert np.abs(replaced - stepped).max() > 1e-3


def test_model_and_ema_in_turn(images):
    """Through ``evaluate``, as the evaluation hook does: each model's program traced at its first evaluation."""
    model, traced = small_lvvit(0), TracedForwards()
    ema = ModelEMA(model, decay=0.5)
    labels = paddle.zeros([3], "int64")
    for first in (True, False):
        for which in (model, ema.module):
            logits, traces = [], len(TRACES)
            evaluate(which, [(images, labels)], backend="onednn", logits=logits, traced=traced)
            assert TRACES[traces:] == ([which.head] if first else [])
            np.testing.assert_array_equal(logits[0], fresh(which, images))
        train_step(model, images)
        ema.update(model)
    assert np.abs(fresh(model, images) - fresh(ema.module, images)).max() > 1e-3


def test_each_input_shape_gets_its_program():
    paddle.seed(0)
    model, traced = counting_traces(create_model("regnety_002", num_classes=7)), TracedForwards()
    model.eval()
    small, large = paddle.randn([2, 3, 32, 32]), paddle.randn([1, 3, 48, 48])
    expected = {32: fresh(model, small), 48: fresh(model, large)}
    for images, traced_now in ((small, 1), (large, 1), (small, 0)):
        logits, traces = evaluated(model, images, traced)
        assert traces == traced_now
        np.testing.assert_array_equal(logits, expected[images.shape[-1]])


def test_a_changed_architecture_is_traced_again(images):
    """A layer's setting (GELU's approximation: no tensor changes) and a layer replaced by one of the same shapes
    (its tensors have new names)."""
    model, traced = small_lvvit(0), TracedForwards()
    before = evaluated(model, images, traced)[0]
    model.backbone.blocks[0].mlp.act = paddle.nn.GELU(approximate=True)
    approximate, traces = evaluated(model, images, traced)
    assert traces == 1
    np.testing.assert_array_equal(approximate, fresh(model, images))
    assert np.abs(approximate - before).max() > 0
    model.head.cls_head = paddle.nn.Linear(240, 7)
    replaced, traces = evaluated(model, images, traced)
    assert traces == 1
    np.testing.assert_array_equal(replaced, fresh(model, images))
    assert evaluated(model, images, traced)[1] == 0


def test_a_model_with_hooks_of_its_own_is_traced_each_time(images):
    """``paddle.jit.save`` traces a layer's own forward hooks only when saving the layer itself."""
    model, traced = small_lvvit(0), TracedForwards()
    model.register_forward_post_hook(lambda layer, inputs, logits: logits + 1.0)
    for _ in range(2):
        logits, traces = evaluated(model, images, traced)
        assert traces == 1
        np.testing.assert_array_equal(logits, fresh(model, images))


def test_no_temporary_files_left_behind(images, tmp_path, monkeypatch):
    """Each evaluation's program and weights are written to a temporary directory that is gone once its predictor is
    created: nothing stays on disk between evaluations, so nothing can outlive the objects or the process."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    programs = []
    create = eval_forward.create_cpu_predictor

    def creating(program, *args, **kwargs):
        programs.append(program)
        return create(program, *args, **kwargs)

    monkeypatch.setattr(eval_forward, "create_cpu_predictor", creating)
    model, traced = small_lvvit(0), TracedForwards()
    ema = ModelEMA(model, decay=0.5)
    for _ in range(2):
        for which in (model, ema.module):
            evaluated(which, images, traced)
            assert os.listdir(tmp_path) == []
    assert len(programs) == 4 and {os.path.dirname(os.path.dirname(p)) for p in programs} == {str(tmp_path)}
