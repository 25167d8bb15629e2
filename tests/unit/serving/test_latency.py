"""The simulator's latency model: load makes it slower in the ways a real engine is."""

from __future__ import annotations

import pytest

from shoal.serving.engines.latency import BatchScheduler, LatencyModel, QueueFull


def run_until_done(s: BatchScheduler) -> dict[str, list[float]]:
    """Drive a scheduler on a virtual clock; token times per request."""
    now = 0.0
    times: dict[str, list[float]] = {}
    while s.busy:
        step = s.step()
        now += step.seconds
        for ev in step.tokens:
            times.setdefault(ev.request_id, []).append(now)
    return times


def test_step_grows_with_batch_and_prompt() -> None:
    m = LatencyModel()
    assert m.inter_token_seconds(32) > m.inter_token_seconds(1)
    assert m.ttft_seconds(2000, 0) > m.ttft_seconds(10, 0)
    assert m.ttft_seconds(100, 30) > m.ttft_seconds(100, 0)


def test_fixed_model_ignores_load() -> None:
    m = LatencyModel.fixed(0.02)
    assert m.step_seconds(1, 0) == m.step_seconds(500, 100_000) == 0.02


def test_ttft_grows_with_concurrency_and_queueing() -> None:
    m = LatencyModel(max_batch=4)
    alone = BatchScheduler(m)
    alone.submit("a", 100, 8)
    t_alone = run_until_done(alone)["a"][0]

    crowd = BatchScheduler(m)
    for i in range(12):
        crowd.submit(f"r{i}", 100, 8)
    times = run_until_done(crowd)
    firsts = sorted(t[0] for t in times.values())
    assert firsts[0] > t_alone  # a shared prefill step is longer
    assert firsts[-1] > 2 * firsts[0]  # the last ones waited for a batch slot
    assert all(len(t) == 8 for t in times.values())


def test_inter_token_latency_grows_with_batch() -> None:
    m = LatencyModel(max_batch=64)

    def itl(n: int) -> float:
        s = BatchScheduler(m)
        for i in range(n):
            s.submit(f"r{i}", 10, 20)
        t = run_until_done(s)["r0"]
        return (t[-1] - t[1]) / (len(t) - 2)

    assert itl(32) > itl(1)


def test_long_prompt_has_longer_ttft() -> None:
    m = LatencyModel()
    short, long_ = BatchScheduler(m), BatchScheduler(m)
    short.submit("a", 10, 2)
    long_.submit("a", 5000, 2)
    assert run_until_done(long_)["a"][0] > run_until_done(short)["a"][0]


def test_prefill_budget_is_chunked() -> None:
    m = LatencyModel(max_prefill_tokens_per_step=1000)
    s = BatchScheduler(m)
    s.submit("a", 2500, 1)
    steps = 0
    while s.busy:
        s.step()
        steps += 1
    assert steps == 3


def test_bounded_queue_refuses() -> None:
    s = BatchScheduler(LatencyModel(max_batch=1, max_waiting=1))
    s.submit("a", 1, 5)  # takes the free batch slot at the next step
    s.submit("b", 1, 5)  # waits
    with pytest.raises(QueueFull):
        s.submit("c", 1, 5)
    s.step()  # admits "a"; "b" still waits
    with pytest.raises(QueueFull):
        s.submit("c", 1, 5)
    no_queue = BatchScheduler(LatencyModel(max_batch=2, max_waiting=0))
    no_queue.submit("a", 1, 5)
    no_queue.submit("b", 1, 5)
    with pytest.raises(QueueFull):
        no_queue.submit("c", 1, 5)


def test_cancel_and_kv_usage() -> None:
    s = BatchScheduler(LatencyModel(kv_cache_tokens=1000))
    s.submit("a", 500, 10)
    s.step()
    assert s.kv_cache_usage == pytest.approx(0.501)
    s.cancel("a")
    assert not s.busy and s.kv_cache_usage == 0


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        LatencyModel(base_step_seconds=0)
    with pytest.raises(ValueError):
        LatencyModel(max_batch=0)
