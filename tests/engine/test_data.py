"""The sharded batch sampler: disjoint seeded shards, resumable, every eval index once, DeiT's repeats."""
import pytest

from passl_tl.engine.data import ShardedBatchSampler
from passl_tl.engine.hooks.evaluate import EvaluateHook
from passl_tl.utils.registry import ConfigError


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


def test_sampler_and_evaluate_hook_arguments_are_checked():
    for bad in (0, -3, 1.5):
        with pytest.raises(ConfigError, match="repeated_augmentation"):
            ShardedBatchSampler(10, 2, True, True, repeats=bad)
    with pytest.raises(ConfigError, match="track"):
        EvaluateHook(track="best")
