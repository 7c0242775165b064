"""The in-process nightly schedule: run the training job at HH:MM each night, in its own process.

A separate process keeps training's memory and CPU out of the serving process (and a
crash there out of serving). At scale, a Kubernetes CronJob runs `tuneloop train` instead.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, time, timedelta

log = logging.getLogger(__name__)


def parse_hhmm(text: str) -> time:
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", text.strip())
    if not match:
        raise ValueError(f"a time of day is HH:MM on a 24-hour clock, such as 02:30 (got {text!r})")
    return time(int(match[1]), int(match[2]))


def next_run(now: datetime, at: time) -> datetime:
    """The first moment at `at` strictly after `now`."""
    today = now.replace(hour=at.hour, minute=at.minute, second=0, microsecond=0)
    return today if today > now else today + timedelta(days=1)


class NightlyScheduler:
    def __init__(self, at: time, command: Sequence[str], clock: Callable[[], datetime] = datetime.now):
        self.at, self.command, self.clock = at, list(command), clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tuneloop-nightly", daemon=True)
        self.runs: list[int] = []  # exit codes, newest last

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            due = next_run(self.clock(), self.at)
            log.info("next nightly training run at %s", due.isoformat(timespec="minutes"))
            if self._stop.wait(max(0.0, (due - self.clock()).total_seconds())):
                return
            log.info("nightly training run starting: %s", " ".join(self.command))
            code = subprocess.call(self.command)
            self.runs.append(code)
            log.log(logging.INFO if code == 0 else logging.ERROR, "nightly training run ended with exit code %d", code)
