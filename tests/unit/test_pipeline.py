"""The prefetching input pipeline: packing ahead on a thread never advances the saved
iterator state, a resumed run sees exactly the batches an uninterrupted one would, and the
processes' rows cover the global batch exactly once."""

import json
import time

import numpy as np
import pytest

from trainers.data.pipeline import Prefetcher, make_batches
from trainers.spec import DataConfig

CFG = DataConfig(task_count=89, input_length=96, target_length=32, examples_per_task=50)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("family", ["t5", "decoder"])
def test_prefetched_state_is_that_of_the_batches_consumed(tmp_path, family):
    plain = make_batches(CFG, family, 4, 7, tmp_path, window=16)
    ahead = Prefetcher(make_batches(CFG, family, 4, 7, tmp_path, window=16), depth=2)
    for _ in range(5):
        _assert_same(next(plain), next(ahead))
    deadline = time.time() + 10
    # The thread packs ahead: `depth` batches queued and one waiting for room, no more.
    while ahead.inner.batches < 5 + 3 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert ahead.inner.batches == 5 + 3
    state = json.loads(json.dumps(ahead.state()))
    assert state == plain.state() and state["skip_rows"] > 0
    cont = [next(plain) for _ in range(4)]

    resumed = Prefetcher(make_batches(CFG, family, 4, 7, tmp_path, window=16))
    resumed.restore(state)
    for a in cont:
        _assert_same(a, next(resumed))
    ahead.close()
    resumed.close()


def test_close_drops_the_batches_packed_ahead(tmp_path):
    plain = make_batches(CFG, "t5", 4, 3, tmp_path, window=16)
    ahead = Prefetcher(make_batches(CFG, "t5", 4, 3, tmp_path, window=16), depth=3)
    _assert_same(next(plain), next(ahead))
    ahead.close()  # as a preempted run does
    assert ahead.state() == plain.state()
    for _ in range(3):  # the next batch restarts the thread where the consumer left off
        _assert_same(next(plain), next(ahead))
    ahead.close()


def test_errors_and_the_end_of_the_inner_iterator_reach_the_consumer():
    class Failing:
        def __init__(self):
            self.n = 0

        def __next__(self):
            self.n += 1
            if self.n == 3:
                raise ValueError("shard unreadable")
            return {"x": np.full(2, self.n)}

        def state(self):
            return {"n": self.n}

        def restore(self, state):
            self.n = state["n"]

    it = Prefetcher(Failing())
    assert [int(next(it)["x"][0]) for _ in range(2)] == [1, 2]
    with pytest.raises(ValueError, match="shard unreadable"):
        next(it)
    it.close()


@pytest.mark.parametrize("processes", [2, 4])
def test_process_rows_cover_the_global_batch_exactly_once(tmp_path, processes):
    whole = Prefetcher(make_batches(CFG, "t5", 8, 3, tmp_path, window=16))
    parts = [Prefetcher(make_batches(CFG, "t5", 8, 3, tmp_path, window=16, process_index=i,
                                     process_count=processes)) for i in range(processes)]
    for _ in range(4):  # batches that straddle windows too
        full = next(whole)
        local = [next(p) for p in parts]
        assert all(b["encoder_input_tokens"].shape[0] == 8 // processes for b in local)
        _assert_same(full, {k: np.concatenate([b[k] for b in local]) for k in full})
    for it in [whole, *parts]:
        it.close()
