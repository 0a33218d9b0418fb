"""Engine pieces: LR schedule, sampler, MixToken boxes, optimizer groups, EMA, checkpoints."""
import math
import os

import numpy as np
import paddle
import pytest
from conftest import load_npz

from passl_tl.engine.checkpoint import checkpoint_name, list_checkpoints, load_checkpoint, save_atomic
from passl_tl.engine.data import ShardedBatchSampler
from passl_tl.engine.ema import ModelEMA
from passl_tl.engine.lr_schedulers import CosineWarmup
from passl_tl.engine.optimizers import decay_parameter_names
from passl_tl.token_labels.mixtoken import mix_lam, sample_mix_box


def test_cosine_warmup_matches_timm_formula():
    s = CosineWarmup(base_lr=1.6e-3, epochs=300, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5, cooldown_epochs=10)
    assert s.total_epochs == 310
    assert s.lr_at(0) == pytest.approx(1e-6)  # warmup applies from the first epoch
    assert s.lr_at(1) == pytest.approx(1e-6 + (1.6e-3 - 1e-6) / 5)
    assert s.lr_at(5) == pytest.approx(1e-5 + 0.5 * (1.6e-3 - 1e-5) * (1 + math.cos(math.pi * 5 / 300)))
    assert s.lr_at(150) == pytest.approx(1e-5 + 0.5 * (1.6e-3 - 1e-5))
    assert s.lr_at(299) > s.lr_at(300) == s.lr_at(309) == 1e-5


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


def sampler_batches(n, bs, world, shuffle, drop_last, pad, epoch=0, start=0):
    out = []
    for r in range(world):
        s = ShardedBatchSampler(n, bs, shuffle, drop_last, seed=1, pad=pad)
        s.num_replicas, s.rank = world, r
        s.set_epoch(epoch)
        s.set_start_iter(start)
        out.append(list(s))
    return out


def test_eval_sampler_covers_every_index_once():
    shards = sampler_batches(103, 8, 2, shuffle=False, drop_last=False, pad=False)
    seen = sorted(i for shard in shards for batch in shard for i in batch)
    assert seen == list(range(103))


def test_train_sampler_disjoint_seeded_and_resumable():
    a, b = sampler_batches(100, 8, 2, True, True, True, epoch=3)
    flat_a, flat_b = [i for x in a for i in x], [i for x in b for i in x]
    assert not set(flat_a) & set(flat_b) and len(a) == 6
    assert sampler_batches(100, 8, 2, True, True, True, epoch=3)[0] == a
    assert sampler_batches(100, 8, 2, True, True, True, epoch=4)[0] != a
    assert sampler_batches(100, 8, 2, True, True, True, epoch=3, start=2)[0] == a[2:]


def test_no_weight_decay_groups():
    class Net(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(4, 4)
            self.norm = paddle.nn.LayerNorm(4)
            self.pos_embed = self.create_parameter([1, 3, 4])

        def no_weight_decay(self):
            return {"pos_embed"}

    net = Net()
    assert decay_parameter_names(net) == {net.fc.weight.name}


def test_ema_update_formula():
    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Linear(3, 2), paddle.nn.BatchNorm1D(2))
    ema = ModelEMA(net, decay=0.9)
    before = {k: v.numpy().copy() for k, v in ema.state_dict().items()}
    for p in net.parameters():
        p.set_value(p + 1.0)
    ema.update(net)
    live = net.state_dict()
    for k, v in ema.state_dict().items():
        np.testing.assert_allclose(v.numpy(), 0.9 * before[k] + 0.1 * live[k].numpy(), rtol=1e-6, atol=1e-7)


def test_atomic_save_and_clear_errors(tmp_path):
    path = str(tmp_path / checkpoint_name(1, 10))
    save_atomic({"model": {"w": paddle.ones([2])}, "epoch": 1}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    with open(path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(ValueError, match=os.path.basename(path)):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="nope.pdckpt"):
        load_checkpoint(str(tmp_path / "nope.pdckpt"))


def test_checksummed_save_detects_changed_bytes_and_leftovers_are_removed(tmp_path):
    from passl_tl.engine.checkpoint import file_sha256, remove_temporaries, verify_checksum
    path = str(tmp_path / checkpoint_name(0, 1))
    save_atomic({"model": {"w": paddle.arange(1000, dtype="float32")}, "epoch": 0}, path, checksum=True)
    assert open(path + ".sha256").read().strip() == file_sha256(path) and verify_checksum(path)
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\x00" * 8)
    with pytest.raises(ValueError, match=f"checkpoint {path} is corrupt or truncated"):
        load_checkpoint(path)
    (tmp_path / "ckpt_e0000_i000002.pdckpt.tmp4242").write_bytes(b"half")
    (tmp_path / "notes.tmp1").write_bytes(b"a user's file")  # not ours: kept
    assert remove_temporaries(str(tmp_path)) == [str(tmp_path / "ckpt_e0000_i000002.pdckpt.tmp4242")]
    os.remove(tmp_path / "notes.tmp1")
    assert sorted(os.listdir(tmp_path)) == [checkpoint_name(0, 1), checkpoint_name(0, 1) + ".sha256"]


def test_list_checkpoints_sorted(tmp_path):
    for e, i in [(2, 5), (0, 100), (2, 100), (10, 1)]:
        (tmp_path / checkpoint_name(e, i)).write_bytes(b"x")
    names = [os.path.basename(p) for p in list_checkpoints(str(tmp_path))]
    assert names == [checkpoint_name(0, 100), checkpoint_name(2, 5), checkpoint_name(2, 100), checkpoint_name(10, 1)]


def test_adamw_decays_only_matrices_on_lvvit():
    """One step with zero gradients: Adam's update is 0, so only decoupled decay moves weights."""
    from passl_tl.engine.optimizers import AdamW
    from passl_tl.models import create_model
    model = create_model("lvvit_tiny", depth=1, num_classes=4, img_size=32, embed_dim=48, num_heads=2)
    opt = AdamW(model, lr=0.1, weight_decay=0.5)
    before = {n: p.numpy().copy() for n, p in model.named_parameters() if not p.stop_gradient}
    (sum(p.sum() for p in model.parameters() if not p.stop_gradient) * 0.0).backward()
    opt.step()
    after = dict(model.named_parameters())
    for name, value in before.items():
        decayed = value.ndim > 1 and name not in ("backbone.pos_embed", "backbone.cls_token")
        np.testing.assert_allclose(after[name].numpy(), value * (0.95 if decayed else 1.0), rtol=1e-6,
                                   err_msg=name)
    assert "backbone.blocks.0.attn.qkv.weight" in before and "backbone.norm.weight" in before


def update(wrapper, loss, iteration=0, iters_per_epoch=1):
    return wrapper.update(loss, iteration, iters_per_epoch, "here", lambda: "")


def test_optim_wrapper_with_and_without_grad_scaler():
    """The GradScaler branch gives the plain update (on CPU Paddle turns loss scaling off,
    so this checks the code path; scaling itself is exercised on GPU)."""
    from passl_tl.engine.optim_wrapper import OptimWrapper
    with pytest.warns(UserWarning, match="AmpScaler"):
        scaler_on_cpu = paddle.amp.GradScaler(init_loss_scaling=1024.0)
    results = []
    for scaler in (None, scaler_on_cpu):
        paddle.seed(0)
        net = paddle.nn.Linear(3, 2)
        opt = paddle.optimizer.SGD(0.1, parameters=net.parameters())
        assert update(OptimWrapper(opt, scaler), (net(paddle.ones([4, 3])) ** 2).mean())
        assert net.weight.grad is None or float(net.weight.grad.abs().sum()) == 0.0  # cleared
        results.append(net.weight.numpy())
    np.testing.assert_array_equal(results[0], results[1])


def test_gradient_accumulation_averages_each_group_including_a_short_last_one():
    """accumulate_steps=2 over an epoch of 3 iterations: the groups are {0, 1} and {2}; each step
    equals an SGD step on the mean loss of its group's samples (SGD: the step scales with the gradient)."""
    from passl_tl.engine.optim_wrapper import OptimWrapper
    parts = [paddle.to_tensor(np.random.RandomState(i).standard_normal((2, 3)).astype("float32")) for i in range(3)]

    def fresh():
        paddle.seed(0)
        net = paddle.nn.Linear(3, 2)
        return net, paddle.optimizer.SGD(0.1, parameters=net.parameters())

    net, opt = fresh()
    for group in ([0, 1], [2]):  # reference: one step per group on the concatenated samples
        x = paddle.concat([parts[i] for i in group])
        update(OptimWrapper(opt), (net(x) ** 2).mean())
    net2, opt2 = fresh()
    wrapper = OptimWrapper(opt2, accumulate_steps=2)
    stepped = [update(wrapper, (net2(x) ** 2).mean(), i, 3) for i, x in enumerate(parts)]
    assert stepped == [False, True, True]
    np.testing.assert_allclose(net2.weight.numpy(), net.weight.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net2.bias.numpy(), net.bias.numpy(), rtol=1e-6, atol=1e-7)


def test_ema_moves_once_per_optimizer_step():
    from types import SimpleNamespace

    from passl_tl.engine.hooks.ema import EMAHook
    net = paddle.nn.Linear(2, 2)
    hook = EMAHook(decay=0.5)
    trainer = SimpleNamespace(model_without_ddp=net, ema=None)
    hook.before_run(trainer)
    before = hook.ema.module.weight.numpy().copy()
    net.weight.set_value(net.weight + 1.0)
    hook.after_train_iter(trainer, None, SimpleNamespace(stepped=False))  # no optimizer step: no EMA step
    np.testing.assert_array_equal(hook.ema.module.weight.numpy(), before)
    hook.after_train_iter(trainer, None, SimpleNamespace(stepped=True))
    np.testing.assert_allclose(hook.ema.module.weight.numpy(), before + 0.5, rtol=1e-6)


def test_checkpoints_only_at_accumulation_boundaries(tmp_path):
    from types import SimpleNamespace

    from passl_tl.engine.hooks.checkpoint import CheckpointHook
    from passl_tl.utils.registry import ConfigError
    with pytest.raises(ConfigError, match="interval_iters=3 must be a multiple of .*accumulate_steps=2"):
        CheckpointHook(interval_iters=3).before_run(SimpleNamespace(optim_wrapper=SimpleNamespace(accumulate_steps=2)))
    CheckpointHook(interval_iters=4).before_run(SimpleNamespace(optim_wrapper=SimpleNamespace(accumulate_steps=2),
                                                                output_dir=str(tmp_path)))


def test_repeated_augmentation_spreads_copies_over_processes():
    """DeiT's RASampler: every index 3 times, the copies on different processes, n // world per process;
    items are (index, copy) pairs so that each copy is augmented on its own."""
    world, n = 3, 30
    shards = []
    for r in range(world):
        s = ShardedBatchSampler(n, 5, shuffle=True, drop_last=True, seed=0, pad=True, repeats=3)
        s.num_replicas, s.rank = world, r
        shards.append([i for batch in s for i in batch])
    assert all(len(shard) == n // world for shard in shards)
    for position in range(n // world):  # the 3 copies of one index sit at the same position on each rank
        assert len({shard[position][0] for shard in shards}) == 1
        assert [shard[position][1] for shard in shards] == [0, 1, 2]
    single = ShardedBatchSampler(n, 5, shuffle=True, drop_last=True, seed=0, pad=True, repeats=3)
    single.num_replicas, single.rank = 1, 0
    assert sorted(i for batch in single for i in batch) == list(range(n))  # one process: plain sampling


def test_cnn_backbones_refuse_token_features_clearly():
    """RegNet has no token grid: MixToken and token-label targets are config errors naming it when the
    batch stages are bound to it (the trainer is built), not at the first iteration."""
    from passl_tl.batch.pipeline import BatchPipeline
    from passl_tl.models import create_model
    from passl_tl.token_labels.mixtoken import MixToken
    from passl_tl.token_labels.targets import TokenLabelTargets
    from passl_tl.utils.registry import ConfigError
    with paddle.LazyGuard():
        cnn = create_model("regnety_002", num_classes=10)
        deit = create_model("deit_tiny_patch16_224", depth=1, num_classes=10)
    with pytest.raises(ConfigError, match="MixToken needs a backbone with a token grid; RegNet"):
        BatchPipeline({"mixtoken": MixToken()}).bind(cnn)
    with pytest.raises(ConfigError, match="TokenLabelTargets needs a backbone with a token grid; RegNet"):
        BatchPipeline({"target": TokenLabelTargets()}).bind(cnn)
    with pytest.raises(ConfigError, match="MixToken needs a head that un-mixes per-token outputs.*LinearHead"):
        BatchPipeline({"mixtoken": MixToken()}).bind(deit)


def test_sampler_and_evaluate_hook_arguments_are_checked():
    from passl_tl.engine.hooks.evaluate import EvaluateHook
    from passl_tl.utils.registry import ConfigError
    for bad in (0, -3, 1.5):
        with pytest.raises(ConfigError, match="repeated_augmentation"):
            ShardedBatchSampler(10, 2, True, True, repeats=bad)
    with pytest.raises(ConfigError, match="track"):
        EvaluateHook(track="best")


def test_mixtoken_box_seeds_replay_a_recorded_run():
    """``box_seeds``: step k draws as the official code after ``np.random.seed(box_seeds[k])``; too few
    seeds for the run is a config error naming the counts."""
    from passl_tl.batch.pipeline import Batch, Step
    from passl_tl.models import create_model
    from passl_tl.token_labels.mixtoken import MixToken
    from passl_tl.utils.registry import ConfigError
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


def test_fixed_batches_replay_every_epoch_and_resume_mid_epoch():
    from passl_tl.engine import FixedBatches
    batches = [(paddle.full([2, 3], float(i)), paddle.full([2], i)) for i in range(3)]
    loader = FixedBatches(batches)
    assert len(loader.batch_sampler) == 3 and loader.batch_size == 2 and loader.dataset is None
    assert [int(x[0, 0]) for x, _ in loader] == [0, 1, 2] == [int(x[0, 0]) for x, _ in loader]
    loader.batch_sampler.set_start_iter(2)
    assert [int(x[0, 0]) for x, _ in loader] == [2]
    assert [int(x[0, 0]) for x, _ in loader] == [0, 1, 2]  # the skip applies to one pass
    with pytest.raises(ValueError, match=r"one size, got sizes \[2, 3\]"):
        FixedBatches([batches[0], (paddle.zeros([3, 3]), paddle.zeros([3]))])
    with pytest.raises(ValueError, match="at least one"):
        FixedBatches([])
