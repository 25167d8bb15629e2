"""The operator's one periodic loop: re-checks every fleet and policy, and runs the autoscaler.

Instead of a kopf timer per object (two per fleet: thousands of tasks at platform scale, and
a deletion that waits for the object's timers to stop), one thread walks the objects the
watch cache holds, each when it is due:

- every object is due once per *interval*: the configured one, or longer when there are many
  objects, so that the loop never starts more than ``rate`` jobs per second (at 1,000 fleets
  and 10 per second, every fleet is re-checked every 100 s instead of every 30 s);
- the first time an object is seen it is due after a random part of its interval, and every
  later due time is jittered by ±10 %, so the work spreads out instead of arriving in waves
  (after a restart, say);
- jobs run on worker threads, in lanes (:data:`LANE_WORKERS`): a policy whose calibration URL
  takes its whole timeout, or a Prometheus that hangs, holds up only its own object, never
  the autoscaling or key revocation of the others; one job per object and schedule at a
  time; each in (a copy of) the kopf context captured from a watch handler, so the events
  they post reach kopf's event queue as a handler's would.

The jobs themselves take the fleet's lock and read the fleet fresh; a fleet being deleted is
left alone (:mod:`shoal.operator.handlers`).
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name
#: What the loop calls for one object.
Job = Callable[[str, str], None]


def interval_for(base: float, count: int, rate: float) -> float:
    """Seconds between two runs of a job for one of ``count`` objects: ``base``, or as long
    as it takes to run ``count`` jobs at ``rate`` per second, whichever is longer."""
    return max(base, count / rate) if rate > 0 else base


@dataclass
class Schedule:
    """One kind of periodic work: which objects, what to do with each, how often."""

    name: str
    objects: Callable[[], list[Key]]
    job: Job
    interval: float
    #: "fast" (reads and applies against the API server and Prometheus) or "slow" (fetches
    #: and fits: calibration URLs, embedding endpoints); each lane has workers of its own.
    lane: str = "fast"
    #: Seconds a job should take at most; a longer one is logged (its own timeouts bound it).
    budget: float = 60.0
    due: dict[Key, float] = field(default_factory=dict)

    def next_due(self, now: float, rng: random.Random, rate: float) -> list[tuple[float, Key]]:
        """Refresh the due times from the current objects; the (due, key) pairs, soonest first."""
        current = set(self.objects())
        for key in list(self.due):
            if key not in current:
                del self.due[key]
        every = interval_for(self.interval, len(current), rate)
        for key in current - self.due.keys():
            self.due[key] = now + rng.uniform(0.1, 1.0) * every
        return sorted((t, k) for k, t in self.due.items())

    def ran(self, key: Key, now: float, rng: random.Random, rate: float) -> None:
        every = interval_for(self.interval, len(self.due), rate)
        self.due[key] = now + every * rng.uniform(0.9, 1.1)


#: Worker threads per lane. Jobs of one lane run side by side, so a slow one (a calibration
#: URL that takes its whole timeout, a Prometheus that does not answer) holds up neither the
#: other objects nor the other lane.
LANE_WORKERS = {"fast": 4, "slow": 4}


class PeriodicLoop:
    """A dispatcher thread that starts the due jobs of its schedules, at most ``rate`` jobs
    per second, each on a worker of its schedule's lane; one job per (schedule, object) at a
    time, so an object whose job overruns is not started again until it is done (and its
    overrun is logged) while every other object keeps its pace."""

    def __init__(self, schedules: list[Schedule], rate: float, seed: int | None = None) -> None:
        self.schedules = schedules
        self.rate = rate
        self.context: contextvars.Context | None = None
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: set[tuple[str, Key]] = set()
        self._pools = {
            lane: ThreadPoolExecutor(workers, thread_name_prefix=f"shoal-periodic-{lane}")
            for lane, workers in LANE_WORKERS.items()
        }
        self._thread = threading.Thread(target=self._run, name="shoal-periodic", daemon=True)

    def adopt_context(self) -> None:
        """Run later jobs in (a copy of) the caller's context: kopf's, from a handler."""
        if self.context is None:
            self.context = contextvars.copy_context()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Start no more jobs; wait up to ``timeout`` for the dispatcher (jobs in progress
        finish on their own: each is bounded by its own timeouts)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def running(self) -> list[tuple[str, Key]]:
        """The (schedule, object) pairs whose job is in progress."""
        with self._lock:
            return sorted(self._running)

    def _run_one(self, schedule: Schedule, key: Key) -> None:
        started = time.monotonic()
        try:
            if self.context is not None:
                # A copy per job: one context cannot be entered by two threads at once.
                self.context.copy().run(schedule.job, *key)
            else:
                schedule.job(*key)
        except Exception:  # one object's failure never stops the loop
            log.exception("%s of %s/%s failed", schedule.name, *key)
        finally:
            took = time.monotonic() - started
            if took > schedule.budget:
                log.warning("%s of %s/%s took %.1f s, more than its %.1f s; the other "
                            "objects were not held up", schedule.name, *key, took,
                            schedule.budget)  # fmt: skip
            with self._lock:
                schedule.ran(key, time.monotonic(), self._rng, self.rate)
                self._running.discard((schedule.name, key))

    def _start(self, schedule: Schedule, key: Key) -> None:
        with self._lock:
            self._running.add((schedule.name, key))
        try:
            self._pools[schedule.lane].submit(self._run_one, schedule, key)
        except RuntimeError:  # stopping: the pool takes no more work
            with self._lock:
                self._running.discard((schedule.name, key))

    def _run(self) -> None:
        gap = 1.0 / self.rate if self.rate > 0 else 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            soonest = now + 1.0
            started = False
            for schedule in self.schedules:
                with self._lock:
                    due = schedule.next_due(now, self._rng, self.rate)
                    busy = {k for name, k in self._running if name == schedule.name}
                for when, key in due:
                    if when > now:
                        soonest = min(soonest, when)
                        break
                    if key in busy:
                        continue  # still running: started again once it is done
                    if self._stop.is_set():
                        return
                    self._start(schedule, key)
                    started = True
                    if gap and self._stop.wait(gap):
                        return
                    now = time.monotonic()
            if not started:
                self._stop.wait(max(0.05, min(soonest - time.monotonic(), 1.0)))
