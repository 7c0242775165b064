"""Serving follows the database: load what is approved, verify it, route to it, unload the old.

Every replica runs one of these against the shared database, so they all swap together.
Polling keeps it to plain SQL that works the same on SQLite and PostgreSQL; the replica
that took an operator's action is woken at once rather than at its next poll.
"""

from __future__ import annotations

import asyncio
import time
import logging
import os
import socket
from pathlib import Path

from sqlalchemy.engine import Engine as Database

from serving import metrics
from serving.engine import Engine
from serving.routing import LiveReleases, ReleaseChoice, choice_of
from store import audit, releases
from store.artifacts import directory_checksum
from store.db import session_scope

log = logging.getLogger(__name__)
REPLICA = f"{socket.gethostname()}:{os.getpid()}"


class AdapterRefused(RuntimeError):
    """An adapter that must not be served: missing, altered since approval, or unloadable."""


class Reconciler:
    last_read: float | None = None  # time.monotonic() of the last reconcile that read the store
    retry_s = 30.0  # a release the engine failed to load (a replica down, ...) is tried again this often

    def __init__(self, engine: Engine, database: Database, live: LiveReleases, interval: float = 0.5):
        self.engine, self.database, self.live, self.interval = engine, database, live, interval
        # (release, checksum) -> when to try it again: never for files that fail verification, which
        # do not change by waiting; `retry_s` later for an engine that could not load it. Each is
        # audited once, not at every poll.
        self._refused: dict[tuple[int, str | None], float] = {}
        self._woken = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            self._woken.clear()
            try:
                await self.reconcile()
            except Exception:  # a bad poll (database restarting, ...) must not stop the loop
                log.exception("reconciling releases failed; trying again")
            try:
                await asyncio.wait_for(self._woken.wait(), self.interval)
            except TimeoutError:
                pass

    def wake(self) -> None:
        """Reconcile now, not at the next poll: a release changed here. Safe from any thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._woken.set)

    async def reconcile(self) -> None:
        active, canary, share = await asyncio.to_thread(self._desired)
        self.last_read = time.monotonic()  # the store answered: readiness counts on it
        ready_active = await self._ready(active) if active else None
        ready_canary = await self._ready(canary) if canary else None
        new_active = ready_active or self.live.active  # a refused release never replaces a working one
        if (new_active, ready_canary) != (self.live.active, self.live.canary) or share != self.live.canary_share:
            before = (self.live.active, self.live.canary)
            self.live.set(new_active, ready_canary, share)
            metrics.routed(new_active.name if new_active else None, ready_canary.name if ready_canary else None,
                           self.live.canary_share)
            await asyncio.to_thread(self._audit_swap, before)
        await self._unload_unused()

    def _desired(self) -> tuple[ReleaseChoice | None, ReleaseChoice | None, float]:
        with session_scope(self.database) as session:
            active, canary = releases.active_release(session), releases.canary_release(session)
            return (choice_of(active) if active else None, choice_of(canary) if canary else None,
                    canary.canary_share if canary else 0.0)

    async def _ready(self, choice: ReleaseChoice) -> ReleaseChoice | None:
        """The choice once its adapter is loaded and verified; None if it is refused."""
        if choice.adapter is None or choice.adapter in self.engine.adapters():
            return choice
        key = (choice.release_id, choice.checksum)
        if time.monotonic() < self._refused.get(key, 0.0):
            return None
        try:
            await asyncio.to_thread(verify, choice.adapter_path, choice.checksum)
            await self.engine.load_adapter(choice.adapter, choice.adapter_path)
        except Exception as error:
            retry = float("inf") if isinstance(error, AdapterRefused) else time.monotonic() + self.retry_s
            if key not in self._refused:
                log.error("refusing release %s: %s", choice.name, error)
                await asyncio.to_thread(self._audit, "serving.refuse", choice,
                                        {"reason": str(error), "retrying": retry != float("inf")})
            self._refused[key] = retry
            return None
        self._refused.pop(key, None)
        log.info("loaded release %s (adapter %s, checksum verified)", choice.name, choice.adapter)
        return choice

    async def _unload_unused(self) -> None:
        for adapter in self.engine.adapters() - self.live.serving():
            if not self.live.busy(adapter):  # requests still streaming keep their adapter
                await self.engine.unload_adapter(adapter)
                log.info("unloaded adapter %s", adapter)

    def _audit_swap(self, before: tuple[ReleaseChoice | None, ReleaseChoice | None]) -> None:
        active, canary = self.live.active, self.live.canary
        details = {
            "previous_active": before[0].name if before[0] else None,
            "previous_canary": before[1].name if before[1] else None,
            "canary": canary.name if canary else None,
            "canary_share": self.live.canary_share,
            "verified_checksums": {c.name: c.checksum for c in (active, canary) if c and c.checksum},
        }
        self._audit("serving.swap", active, details)

    def _audit(self, action: str, choice: ReleaseChoice | None, details: dict) -> None:
        with session_scope(self.database) as session:
            target = f"release:{choice.name}" if choice else "release:none"
            audit.record(session, actor=None, action=action, target=target, details={"replica": REPLICA, **details})


def verify(adapter_path: str | None, checksum: str | None) -> None:
    """Refuse an adapter whose files are not exactly the ones the release recorded."""
    if not adapter_path or not Path(adapter_path).is_dir():
        raise AdapterRefused(f"adapter folder {adapter_path} is missing")
    if not checksum:
        raise AdapterRefused("the release records no checksum")
    actual = directory_checksum(adapter_path)
    if actual != checksum:
        raise AdapterRefused(f"checksum mismatch: release says {checksum[:12]}…, files give {actual[:12]}…")
