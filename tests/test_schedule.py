"""The nightly schedule: when it fires, and that it runs the job in its own process."""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta

import pytest

from trainer.schedule import NightlyScheduler, next_run, parse_hhmm


def test_next_run_is_tonight_or_tomorrow():
    at = parse_hhmm("02:30")
    assert next_run(datetime(2026, 11, 21, 1, 0), at) == datetime(2026, 11, 21, 2, 30)
    assert next_run(datetime(2026, 11, 21, 2, 30), at) == datetime(2026, 11, 22, 2, 30)
    with pytest.raises(ValueError, match="HH:MM"):
        parse_hhmm("25:00")


def test_the_scheduler_runs_the_command_at_the_time(tmp_path):
    marker = tmp_path / "ran"
    start = datetime(2026, 11, 21, 2, 29, 59)
    began = time.monotonic()
    # A clock one second before 02:30: the job is due a second after start.
    clock = lambda: start + timedelta(seconds=time.monotonic() - began)  # noqa: E731
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ok')"]
    scheduler = NightlyScheduler(parse_hhmm("02:30"), command, clock=clock)
    scheduler.start()
    deadline = time.monotonic() + 30
    while not scheduler.runs and time.monotonic() < deadline:
        time.sleep(0.05)
    scheduler.stop()
    assert scheduler.runs == [0] and marker.read_text() == "ok"
