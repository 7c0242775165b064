"""Live review scores: the active release's reward model rates how unsure it is about each
new answer, so the reviewers' queue (feedback.review) shows the least certain ones first.

It lives in serving because it runs in the service process, beside the answers it scores,
and follows the active release as serving does. It works off the event loop and off the
chat path: a committed Response's id goes into a bounded queue (when full, the oldest id
is dropped and counted: a chat turn never waits for scoring and never fails because of
it); one background thread takes batches, reads each answer's conversation, asks the
reward model for its uncertainty, and writes `Response.review_uncertainty` and the
release whose reward model scored it.

Answers are noticed through the database session, not the chat service: every Response
committed through this process's engine is queued (SQLAlchemy's session events), whichever
path stored it. Serving cannot import the trainer, so the app factory hands in the function
that loads a reward model (`trainer.reward_model.RewardModel.load`); all this module needs of the
model is `uncertainties(prompts, completions)`.

The reward model is the one the nightly run saved beside the active release's adapter
(`store.artifacts.reward_dir_for`). It is reloaded when the active release changes or
its folder's files do; with none (the base release, or a release trained without one),
nothing is scored and ids are let go. When a model is loaded, the newest unscored answers
(those from before it, and any dropped) are queued as far as the queue has room.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import event, update
from sqlalchemy.engine import Engine as Database
from sqlalchemy.orm import Session
from sqlmodel import col, select

from feedback.export import PromptContext  # the prompts as the reward model was trained on them
from store import releases
from store.artifacts import reward_dir_for
from store.db import session_scope
from store.models import Release, Response

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class UncertaintyModel(Protocol):
    def uncertainties(self, prompts: Sequence[Messages], completions: Sequence[str]) -> list[float]: ...


# (release, its reward folder) -> the loaded model. The app passes trainer.reward_model's loader.
LoadRewardModel = Callable[[Release, Path], UncertaintyModel]

# The scoring thread's nice value (Linux). Scoring is background work that must never
# starve serving. torch.set_num_threads cannot confine it: the count is process-wide state
# that every thread torch initialises later (the engine's worker, request threads) picks
# up. A nice value belongs to the thread, and the OpenMP workers it starts inherit it, so
# under load the engine's threads get the cores (CFS weight 1024 against 15 at nice 19),
# and when serving is idle the scorer still uses all of them.
NICE = 19


@dataclass
class ScorerStats:
    release: str | None  # whose reward model scores now; None: nothing is scored
    pending: int
    scored: int
    dropped: int  # ids pushed out of a full queue (never scored unless a later backfill finds them)
    failed: int  # batches that raised (logged)


class ReviewScorer:
    def __init__(self, database: Database, load: LoadRewardModel, *, queue_size: int = 1024, batch_size: int = 8,
                 interval: float = 2.0, backfill: int | None = None, nice: int | None = NICE):
        self.database, self.load = database, load
        self.queue_size, self.batch_size, self.interval = queue_size, batch_size, interval
        self.backfill = queue_size if backfill is None else backfill
        self.nice = nice
        self._pending: deque[uuid.UUID] = deque()
        self._changed = threading.Condition()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._model: UncertaintyModel | None = None
        self._model_key: tuple | None = None
        self._release: tuple[int, str] | None = None  # (id, name) of the release whose model is loaded
        self.scored = self.dropped = self.failed = 0
        self._info_key = f"tuneloop.review-scores.{id(self)}"

    # ------------------------------------------------------------ queueing (any thread)

    def submit(self, response_ids: Iterable[uuid.UUID]) -> None:
        """Queue answers for scoring; never blocks beyond a short lock, drops the oldest when full."""
        with self._changed:
            for response_id in response_ids:
                if len(self._pending) >= self.queue_size:
                    self._pending.popleft()
                    self.dropped += 1
                self._pending.append(response_id)
            self._changed.notify_all()

    def stats(self) -> ScorerStats:
        with self._changed:
            return ScorerStats(self._release[1] if self._release else None, len(self._pending), self.scored,
                               self.dropped, self.failed)

    def _flushed(self, session: Session, flush_context) -> None:
        # Runs inside every flush of every session in the process: cheap, and never raises.
        try:
            if session.bind is self.database:
                new = [obj.id for obj in session.new if isinstance(obj, Response)]
                if new:
                    session.info.setdefault(self._info_key, []).extend(new)
        except Exception:
            log.exception("review scores: could not note new answers")

    def _committed(self, session: Session) -> None:
        try:
            ids = session.info.pop(self._info_key, None)
            if ids:
                self.submit(ids)
        except Exception:
            log.exception("review scores: could not queue new answers")

    def _rolled_back(self, session: Session) -> None:
        session.info.pop(self._info_key, None)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Listen for committed answers and start the scoring thread."""
        if self._thread is not None:
            return
        self._listeners = [("after_flush", self._flushed), ("after_commit", self._committed),
                           ("after_rollback", self._rolled_back)]
        for name, listener in self._listeners:
            event.listen(Session, name, listener)
        self._stopping, self._busy = False, True  # busy until the first look at the active release
        self._thread = threading.Thread(target=self._run, name="tuneloop-review-scores", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening and let the thread finish its batch; queued ids are let go."""
        if self._thread is None:
            return
        for name, listener in self._listeners:
            event.remove(Session, name, listener)
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout)
        self._thread = None

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued id is handled (for tests and orderly shutdowns)."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._pending and not self._busy, timeout)

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        _lower_priority(self.nice)
        first = True
        while True:
            with self._changed:
                if not first and not self._pending and not self._stopping:
                    self._changed.wait(self.interval)  # woken by new ids; else look at the release again
                first = False
                if self._stopping:
                    self._busy = False
                    self._changed.notify_all()
                    return
                self._busy = True
            try:
                self.run_once()
                failed = False
            except Exception:  # the database restarting, a bad answer, ...: the thread goes on
                self.failed, failed = self.failed + 1, True
                log.exception("review scores: a batch failed")
            with self._changed:
                self._busy = False
                self._changed.notify_all()
                if failed and not self._stopping:
                    self._changed.wait(self.interval)  # not a tight loop of failures

    def run_once(self) -> int:
        """Follow the active release, then score one batch of queued answers; how many were scored."""
        model = self._follow_active_release()
        with self._changed:
            batch = [self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))]
        if model is None or not batch:
            return 0  # without a reward model ids are let go: a later model's backfill finds them
        return self._score(model, batch)

    def _follow_active_release(self) -> UncertaintyModel | None:
        with session_scope(self.database) as session:
            release = releases.active_release(session)
        folder = reward_dir_for(release) if release is not None else None
        stamp = _stamp(folder) if folder is not None else None
        key = (release.id, str(folder), stamp) if stamp is not None else None
        if key == self._model_key:
            return self._model
        self._model, self._model_key = None, key
        with self._changed:
            self._release = None
        if key is None:
            return None
        try:
            model = self.load(release, folder)
        except Exception:  # a half-written folder is retried once its files change
            log.exception("review scores: could not load the reward model in %s", folder)
            return None
        self._model = model
        with self._changed:
            self._release = (release.id, release.name)
        log.info("review scores: scoring answers with the reward model of release %s", release.name)
        self._queue_unscored()
        return model

    def _queue_unscored(self) -> None:
        with self._changed:
            room = min(self.backfill, self.queue_size - len(self._pending))
        if room <= 0:
            return
        with session_scope(self.database) as session:
            ids = session.exec(select(Response.id).where(col(Response.review_uncertainty).is_(None))
                               .order_by(col(Response.created_at).desc()).limit(room)).all()
        with self._changed:
            queued = set(self._pending)
            self._pending.extend(i for i in ids if i not in queued)

    def _score(self, model: UncertaintyModel, ids: list[uuid.UUID]) -> int:
        release_id = self._release[0]
        # Read, then score with no transaction open (SQLite has one writer: none is held
        # through a forward pass), then write in one short transaction.
        with session_scope(self.database) as session:
            responses = session.exec(select(Response).where(col(Response.id).in_(ids))).all()
            context = PromptContext(session)
            prompts = [context.prompt(r) for r in responses]
            texts = [r.text for r in responses]
            found = [r.id for r in responses]
        if not found:
            return 0
        values = model.uncertainties(prompts, texts)
        with session_scope(self.database) as session:
            session.execute(update(Response), [
                {"id": i, "review_uncertainty": float(v), "review_scorer_release_id": release_id}
                for i, v in zip(found, values, strict=True)
            ])
        with self._changed:
            self.scored += len(found)
        return len(found)


def _stamp(folder: Path) -> tuple | None:
    """What changes when the folder's files do; None when there is no folder (or it is empty)."""
    try:
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    except OSError:
        return None
    return tuple(files) or None


def _lower_priority(nice: int | None) -> None:
    # Linux only: there a thread is a task with its own nice value. Elsewhere the call would
    # renice the whole process (or another one), so it is left alone.
    if nice is None or sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as error:
        log.warning("review scores: could not lower the scoring thread's priority: %s", error)
