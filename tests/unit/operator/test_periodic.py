"""The periodic loop: every object in turn, spread out, at a bounded rate."""

from __future__ import annotations

import random
import threading

from shoal.operator.resync import PeriodicLoop, Schedule, interval_for


def test_interval_grows_with_the_object_count() -> None:
    assert interval_for(30, 100, 10) == 30
    assert interval_for(30, 1000, 10) == 100
    assert interval_for(30, 0, 10) == 30


def test_first_runs_spread_over_the_interval_then_jittered() -> None:
    keys = [("ns", f"f{i}") for i in range(200)]
    schedule = Schedule("s", lambda: keys, lambda ns, name: None, interval=30)
    rng = random.Random(1)
    due = schedule.next_due(0.0, rng, rate=10)
    times = [t for t, _ in due]
    assert len(due) == 200 and times == sorted(times)
    assert times[0] > 0 and times[-1] <= 30 and times[-1] - times[0] > 15
    schedule.ran(("ns", "f0"), 100.0, rng, rate=10)
    assert 100 + 27 <= schedule.due[("ns", "f0")] <= 100 + 33


def test_gone_objects_leave_the_schedule() -> None:
    keys = [("ns", "a"), ("ns", "b")]
    schedule = Schedule("s", lambda: list(keys), lambda ns, name: None, interval=1)
    schedule.next_due(0.0, random.Random(0), rate=10)
    keys.pop()
    assert [k for _, k in schedule.next_due(0.0, random.Random(0), rate=10)] == [("ns", "a")]


def test_loop_runs_every_object_and_survives_a_failing_job() -> None:
    done: set[str] = set()
    all_ran = threading.Event()
    names = [f"f{i}" for i in range(5)]

    def job(ns: str, name: str) -> None:
        done.add(name)
        if done == set(names):
            all_ran.set()
        if name == "f2":
            raise RuntimeError("one fleet's trouble")

    loop = PeriodicLoop(
        [Schedule("s", lambda: [("ns", n) for n in names], job, interval=0.2)], rate=100
    )
    loop.start()
    try:
        assert all_ran.wait(10)
    finally:
        loop.stop()
    assert done == set(names)


def test_a_slow_job_holds_up_neither_other_objects_nor_other_schedules() -> None:
    """A policy whose job hangs (a calibration URL taking its whole timeout) while a fleet's
    autoscaler and another policy keep their pace; the hung one is not started twice."""
    release = threading.Event()
    starts: dict[str, int] = {}
    ran = {"autoscaler": threading.Event(), "other policy": threading.Event()}

    def policy_job(ns: str, name: str) -> None:
        starts[name] = starts.get(name, 0) + 1
        if name == "slow":
            release.wait(20)
        else:
            ran["other policy"].set()

    def autoscale(ns: str, name: str) -> None:
        ran["autoscaler"].set()

    loop = PeriodicLoop(
        [
            Schedule("policy re-check", lambda: [("ns", "slow"), ("ns", "quick")], policy_job,
                     interval=0.05, lane="slow", budget=0.1),
            Schedule("autoscaler", lambda: [("ns", "f")], autoscale, interval=0.05),
        ],
        rate=100,
    )  # fmt: skip
    loop.start()
    try:
        assert ran["autoscaler"].wait(5) and ran["other policy"].wait(5)
        assert ("policy re-check", ("ns", "slow")) in loop.running()
        ran["autoscaler"].clear()
        assert ran["autoscaler"].wait(5)  # and again, while the slow one still hangs
        assert starts["slow"] == 1 and starts["quick"] >= 2
    finally:
        release.set()
        loop.stop()
