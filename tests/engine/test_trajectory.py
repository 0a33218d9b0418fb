"""Trajectory parity: several optimizer steps of the official LV-ViT recipe, reproduced by our own
training run (``configs/lvvit/lvvit_tiny.yaml`` with the fixture's settings, built by
``Trainer.from_config``, fed the fixture's batches) - optimizer, weight-decay groups, LR schedule,
EMA, MixToken and the token-label loss together.

Every setting comes from the fixture (``meta``: model constructor, recipe arguments, MixToken seeds;
array shapes: batch size, classes, steps), so a trajectory with other settings runs unchanged.

Tolerances (fixture README, "Suggested tolerances"): lr rtol 1e-12; boxes exact; losses atol 2e-6
and cls logits atol 1e-5 (float32 forward of another framework: the reference's own f32-vs-f64
spread is 4e-7 / 1.6e-6); final weights, EMA weights and Adam moments per tensor
``max(10 x the reference's f32-vs-f64 spread of that tensor, 1e-7)``: Adam's normalised update
amplifies float32 rounding (up to 1.5e-4 in the conv stem, where batch-statistics gradients are
least precise), so one global tolerance is either too loose for the transformer tensors or too
tight for the stem; each plausible recipe mistake exceeds this rule >= 20x in some tensor.
"""
import json
import re

import numpy as np
import paddle
import pytest

from passl_tl.engine import FixedBatches, Trainer
from passl_tl.engine.defaults import DEFAULTS
from passl_tl.engine.hooks.hook import Hook
from passl_tl.engine.optimizers import decay_parameter_names
from passl_tl.models import build_model, load_weights
from passl_tl.models.weights import official_key_map
from passl_tl.utils.config import load_config

from tests.conftest import REPO_ROOT, fixture_path, load_npz

CONFIG = f"{REPO_ROOT}/configs/lvvit/lvvit_tiny.yaml"
CASE = "lvvit_trajectory"
STEM_CHANNELS = {"4_2": 64, "4_2_128": 128}  # official p_emb -> the conv stem's width
LOSS_ATOL = 2e-6
LOGITS_ATOL = 1e-5
LR_RTOL = 1e-12


class StepRecorder(Hook):
    """Records what every training iteration did (after the optimizer step and the EMA update)."""

    priority = 45

    def __init__(self, watched: dict[str, str]):
        self.watched = watched  # official name -> ours
        self.steps = []

    def after_train_iter(self, trainer, batch, outputs):
        model, ema = trainer.model_without_ddp.state_dict(), trainer.ema.module.state_dict()
        self.steps.append({
            "epoch": trainer.epoch, "iter": trainer.iter, "lr": trainer.optimizer.get_lr(), "stepped": outputs.stepped,
            "box": batch.mix_box, "loss": float(outputs.loss), "x_cls": outputs.outputs["cls"].numpy(),
            "after": {name: model[ours].numpy() for name, ours in self.watched.items()},
            "ema_after": {name: ema[ours].numpy() for name, ours in self.watched.items()},
        })


def model_overrides(meta):
    """Our preset's overrides for the official ``LV_ViT`` constructor arguments of the fixture."""
    kwargs = dict(meta["constructor_kwargs"])
    assert kwargs.pop("return_dense") and kwargs.pop("mix_token"), "token labeling + MixToken expected"
    kwargs["stem_channels"] = STEM_CHANNELS[kwargs.pop("p_emb")]
    return kwargs


def recipe_config(meta, batch_size, out_dir, box_seeds, compiled=False):
    """The LV-ViT-T config with the fixture's model and recipe arguments (official ``main.py`` names)."""
    args = meta["args"]
    assert not args["mixup"] and not args["cutmix"] and not args["amp"] and args["opt"] == "adamw"
    assert args["sched"] == "cosine" and args["model_ema"]
    overrides = [f"model.{key}={value}" for key, value in model_overrides(meta).items()] + [
        "device=cpu", "amp.enable=false", f"output_dir={out_dir}", f"data.batch_size={batch_size}",
        f"epochs={args['epochs']}", f"optimizer.lr={args['lr']}", f"optimizer.weight_decay={args['weight_decay']}",
        f"lr_scheduler.warmup_epochs={args['warmup_epochs']}", f"lr_scheduler.warmup_lr={args['warmup_lr']}",
        f"lr_scheduler.min_lr={args['min_lr']}", f"lr_scheduler.cooldown_epochs={args['cooldown_epochs']}",
        f"hooks.ema.decay={args['model_ema_decay']}", f"model.dense_weight={args['dense_weight']}",
        f"model.cls_weight={args['cls_weight']}", f"model.ground_truth={str(args['ground_truth']).lower()}"]
    if args["opt_eps"] is not None:
        overrides.append(f"optimizer.eps={args['opt_eps']}")
    if args["opt_betas"] is not None:
        overrides.append(f"optimizer.betas={list(args['opt_betas'])}")
    if args["clip_grad"] is not None:
        overrides.append(f"optimizer.clip_grad={args['clip_grad']}")
    cfg = load_config(CONFIG, overrides, DEFAULTS)
    cfg["batch"]["mixtoken"]["box_seeds"] = [int(s) for s in box_seeds]
    cfg["batch"]["target"] = None  # the fixture's batches hold the dense targets the official loop receives
    cfg["data"]["val"] = {}
    cfg["compile"] = compiled
    return cfg


@pytest.fixture(scope="module", params=[False, True], ids=["eager", "compiled"])
def trajectory(tmp_path_factory, request):
    """Our run of the fixture's recipe, eager and compiled (``compile``): (fixture arrays, meta, model,
    trainer, recorder)."""
    ref = load_npz(f"{CASE}.npz")
    meta = json.loads(str(ref["meta"]))
    num_batches = len([k for k in ref if re.fullmatch(r"x/\d+", k)])
    assert num_batches == meta["iters_per_epoch"]
    batches = [(paddle.to_tensor(ref[f"x/{i}"]), paddle.to_tensor(ref[f"target/{i}"])) for i in range(num_batches)]
    cfg = recipe_config(meta, batches[0][0].shape[0], str(tmp_path_factory.mktemp("trajectory")),
                        ref["step/mix_seed"], request.param)
    model = build_model(cfg)
    load_weights(model, fixture_path(f"{CASE}.pth"))
    names = official_key_map([k[len("step/after/"):] for k in ref if k.startswith("step/after/")], model)
    recorder = StepRecorder(names)
    trainer = Trainer.from_config(cfg, model, train_loader=FixedBatches(batches))
    trainer.hooks["recorder"] = recorder
    trainer.hooks = dict(sorted(trainer.hooks.items(), key=lambda item: item[1].priority))
    trainer.train()
    return ref, meta, model, trainer, recorder


def test_schedule_and_boxes(trajectory):
    ref, meta, _, trainer, recorder = trajectory
    steps = recorder.steps
    assert len(steps) == meta["steps"] == len(ref["step/lr"])
    assert [s["epoch"] for s in steps] == ref["step/epoch"].tolist()
    assert [s["iter"] for s in steps] == ref["step/batch_idx"].tolist()
    assert all(s["stepped"] for s in steps)
    np.testing.assert_allclose([s["lr"] for s in steps], ref["step/lr"], rtol=LR_RTOL, atol=0)
    epochs = len(ref["sched/lr_epoch"])
    np.testing.assert_allclose([trainer.lr_scheduler.lr_at(e) for e in range(epochs)], ref["sched/lr_epoch"],
                               rtol=LR_RTOL, atol=0)
    for step, box in zip(steps, ref["step/bbox"]):
        empty = box[0] == box[2] or box[1] == box[3]
        assert step["box"] == (None if empty else tuple(int(v) for v in box))


def test_weight_decay_groups(trajectory):
    ref, _, model, _, _ = trajectory
    decayed = decay_parameter_names(model)
    ours = {name: p.name for name, p in model.named_parameters() if not p.stop_gradient}
    mapping = official_key_map(list(ref["param_groups/0/names"]) + list(ref["param_groups/1/names"]), model)
    for group, decay in enumerate(ref["param_groups/weight_decay"]):
        names = list(ref[f"param_groups/{group}/names"])
        assert {ours[mapping[n]] in decayed for n in names} == {bool(decay)}, f"group {group}"
    assert len(mapping) == len(ours)  # every trainable parameter is in one of the two groups


def test_losses_and_logits(trajectory):
    ref, _, _, _, recorder = trajectory
    np.testing.assert_allclose([s["loss"] for s in recorder.steps], ref["step/loss"], rtol=0, atol=LOSS_ATOL)
    for k, step in enumerate(recorder.steps):
        np.testing.assert_allclose(step["x_cls"], ref["step/x_cls"][k], rtol=0, atol=LOGITS_ATOL, err_msg=f"step {k}")


def per_tensor_atol(meta, group, name):
    return max(10.0 * meta["f32_vs_f64_maxabs"][group][name], 1e-7)


def assert_state_matches(ours, ref, meta, prefix, spread, model):
    """Every entry of the official state ``<prefix>/<name>`` against ours, per-tensor tolerance."""
    official = {k[len(prefix) + 1:]: ref[k] for k in ref if k.startswith(prefix + "/")}
    mapping = official_key_map(official, model)
    linear = {f"{n}.weight" for n, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)}
    assert set(mapping.values()) == set(ours), "our state has entries the official one lacks, or the reverse"
    for name, key in mapping.items():
        expected = official[name].T if key in linear else official[name]
        np.testing.assert_allclose(ours[key].numpy(), expected, rtol=0, atol=per_tensor_atol(meta, spread, name),
                                   err_msg=f"{prefix}/{name}")


def test_per_step_tensors(trajectory):
    ref, meta, model, _, recorder = trajectory
    for key in [k for k in ref if k.startswith(("step/after/", "step/ema_after/"))]:
        group, name = key.split("/")[1], key.split("/", 2)[2]
        spread = "final_model_per_tensor" if group == "after" else "final_ema_per_tensor"
        np.testing.assert_allclose(np.stack([s[group][name] for s in recorder.steps]), ref[key], rtol=0,
                                   atol=per_tensor_atol(meta, spread, name), err_msg=key)


def test_final_weights(trajectory):
    ref, meta, model, _, _ = trajectory
    assert_state_matches(model.state_dict(), ref, meta, "final/model", "final_model_per_tensor", model)


def test_final_ema_weights(trajectory):
    ref, meta, model, trainer, _ = trajectory
    assert_state_matches(trainer.ema.module.state_dict(), ref, meta, "final/ema", "final_ema_per_tensor", model)


def test_final_adam_moments(trajectory):
    ref, meta, model, trainer, _ = trajectory
    state = trainer.optimizer.state_dict()
    params = dict(model.named_parameters())
    names = sorted({k.split("/")[2] for k in ref if k.startswith("final/opt/") and k.count("/") == 3})
    assert names
    mapping = official_key_map(names, model)
    linear = {f"{n}.weight" for n, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)}
    for name in names:
        pname = params[mapping[name]].name
        steps = int(ref["final/opt/step"])  # Paddle keeps beta1 ** (steps taken + 1), the next step's power
        np.testing.assert_allclose(state[f"{pname}_beta1_pow_acc_0"].numpy(), trainer.optimizer._beta1 ** (steps + 1),
                                   rtol=1e-6)  # a float32 product of float32 factors
        for moment, ours in (("exp_avg", "moment1"), ("exp_avg_sq", "moment2")):
            expected = ref[f"final/opt/{name}/{moment}"]
            value = state[f"{pname}_{ours}_0"].numpy()
            value = value.T if mapping[name] in linear else value
            np.testing.assert_allclose(value, expected, rtol=0, atol=per_tensor_atol(meta, moment, name),
                                       err_msg=f"{moment} of {name}")
