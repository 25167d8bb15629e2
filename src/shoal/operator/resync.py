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
- jobs run one at a time, each in the kopf context captured from a watch handler, so the
  events they post reach kopf's event queue as a handler's would.

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


class PeriodicLoop:
    """A thread that runs the due jobs of its schedules, at most ``rate`` jobs per second."""

    def __init__(self, schedules: list[Schedule], rate: float, seed: int | None = None) -> None:
        self.schedules = schedules
        self.rate = rate
        self.context: contextvars.Context | None = None
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shoal-periodic", daemon=True)

    def adopt_context(self) -> None:
        """Run later jobs in (a copy of) the caller's context: kopf's, from a handler."""
        if self.context is None:
            self.context = contextvars.copy_context()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Stop after the job in progress (if any)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run_one(self, schedule: Schedule, key: Key) -> None:
        try:
            if self.context is not None:
                self.context.run(schedule.job, *key)
            else:
                schedule.job(*key)
        except Exception:  # one object's failure never stops the loop
            log.exception("%s of %s/%s failed", schedule.name, *key)

    def _run(self) -> None:
        gap = 1.0 / self.rate if self.rate > 0 else 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            soonest = now + 1.0
            ran = False
            for schedule in self.schedules:
                for when, key in schedule.next_due(now, self._rng, self.rate):
                    if when > now:
                        soonest = min(soonest, when)
                        break
                    if self._stop.is_set():
                        return
                    self._run_one(schedule, key)
                    schedule.ran(key, time.monotonic(), self._rng, self.rate)
                    ran = True
                    if gap and self._stop.wait(gap):
                        return
                    now = time.monotonic()
            if not ran:
                self._stop.wait(max(0.0, min(soonest - time.monotonic(), 1.0)))
