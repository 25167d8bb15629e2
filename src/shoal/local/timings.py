"""Where the seconds of ``shoal up`` go: the moments it passes, from its own start.

``shoal up`` (:mod:`shoal.local.cli`) marks each moment the first time it sees it (the router
fitted, Ray and Serve up, each deployment healthy, the fleet running, the first answer),
prints them in one line when the fleet is up and writes them to ``timings.json`` in the state
folder, where ``bench/bench_make_up.py`` reads them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

#: The file in the state folder (``shoal.local.runner.state_dir``).
TIMINGS_FILE = "timings.json"


class UpTimings:
    """Seconds from ``started`` (``time.monotonic``) to each named moment, first sighting."""

    def __init__(self, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.marks: dict[str, float] = {}

    def mark(self, name: str, now: float | None = None) -> None:
        """Record ``name`` now, unless it was recorded before."""
        if name not in self.marks:
            at = time.monotonic() if now is None else now
            self.marks[name] = round(at - self.started, 2)

    def summary(self) -> str:
        """``router 1.2s, ray 6.0s, ...``: the moments in the order they came."""
        return ", ".join(f"{k} {v:.1f}s" for k, v in sorted(self.marks.items(), key=_second))

    def write(self, folder: Path) -> None:
        """Write the marks to :data:`TIMINGS_FILE` in ``folder``."""
        (folder / TIMINGS_FILE).write_text(json.dumps(self.marks, indent=1))


def _second(item: tuple[str, float]) -> float:
    return item[1]
