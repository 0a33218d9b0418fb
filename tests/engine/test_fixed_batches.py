"""FixedBatches: the same given batches every epoch, resumable mid-epoch (the trajectory test's loader)."""
import paddle
import pytest

from passl_tl.engine import FixedBatches


def test_fixed_batches_replay_every_epoch_and_resume_mid_epoch():
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
