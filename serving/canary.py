"""The canary judges itself: every few seconds, on its live evidence, with `feedback.canary`'s
sequential tests; a worse canary is rolled back, a better one promoted or put to an operator.

Every replica runs a monitor, and one decides: each look takes the `canary-judge` lease in the
store, so two replicas never roll back twice, and the state change (with its evidence) is one
transaction. The replica that decided reconciles at once; the others at their next poll.

Each decision is a state change in the release record (`releases.rollback` / `promote`, by the
system), an audit entry `canary.decide` with the evidence, and, through that entry, a post in
the operators' Slack channel (bot/slack/announce.py). An operator who disagrees undoes it:
`tuneloop releases approve NAME --canary S` again after a rollback (fresh evidence from then),
`tuneloop releases rollback` after a promotion. A win that asks an operator and an inconclusive
canary are announced once each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine as Database
from sqlmodel import Session

from feedback.canary import CanaryEvidence, CanaryPolicy, Judgement, judge
from feedback.canary_evidence import canary_since, collect
from feedback.sequential import choices_to_decide
from feedback.stats import wilson
from serving import metrics
from store import audit, locks, releases
from store.db import session_scope
from store.models import Release, in_utc, utcnow

log = logging.getLogger(__name__)
JOB = "canary-judge"
HISTORY = 500  # points of the statistics kept for the release's plot
DECIDE = "canary.decide"


class CanaryMonitor:
    def __init__(self, database: Database, policy: CanaryPolicy, interval_s: float = 5.0,
                 decided: Callable[[], None] | None = None) -> None:
        self.database, self.policy, self.interval_s = database, policy, interval_s
        self.decided = decided or (lambda: None)  # wakes this replica's reconciler

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.look)
            except Exception:  # a database hiccup must not stop the canary being watched
                log.exception("judging the canary failed; trying again")
            await asyncio.sleep(self.interval_s)

    def look(self) -> Judgement | None:
        """Judge the running canary once, if this replica gets the lease; what it found."""
        try:
            with locks.held(self.database, JOB, lease=timedelta(seconds=60)):
                with session_scope(self.database) as session:
                    judgement = self._judge(session)
        except locks.LockHeld:
            return None  # another replica is looking right now
        if judgement is not None and judgement.action in ("rollback", "promote"):
            self.decided()
        return judgement

    def _judge(self, session: Session) -> Judgement | None:
        canary, active = releases.canary_release(session), releases.active_release(session)
        if canary is None or active is None:
            metrics.canary_judged(None)
            return None
        judgement, status = current(session, canary, active, self.policy)
        metrics.canary_judged(status)
        _remember(canary, status)
        session.add(canary)
        if self.policy.decide:
            self._act(session, canary, judgement, status)
        return judgement

    def _act(self, session: Session, canary: Release, judgement: Judgement, status: dict) -> None:
        action = judgement.action
        if action == "wait" or (action in ("ask_promote", "inconclusive") and _announced(canary, action)):
            return
        evidence = {key: status[key] for key in ("events", "metrics", "tests", "promotion")}
        audit.record(session, actor=None, action=DECIDE, target=f"release:{canary.name}",
                     details={"decision": action, "reason": judgement.reason, "evidence": evidence})
        log.warning("canary %s: %s (%s)", canary.name, action, judgement.reason)
        if action == "rollback":
            releases.rollback(session, None, reason=f"automatic: {judgement.reason}")
        elif action == "promote":
            releases.promote(session, None)
        else:
            canary.report = {**canary.report, "canary": {**canary.report["canary"], f"announced_{action}": True}}
            session.add(canary)


def current(session: Session, canary: Release, active: Release, policy: CanaryPolicy) -> tuple[Judgement, dict]:
    """The canary's judgement on its evidence so far, and its live status."""
    since = canary_since(session, canary)
    evidence = collect(session, canary, active, since)
    judgement = judge(evidence, policy)
    return judgement, live_status(evidence, judgement, since, policy)


def _announced(canary: Release, action: str) -> bool:
    return bool(canary.report.get("canary", {}).get(f"announced_{action}"))


def _remember(canary: Release, status: dict) -> None:
    """The live status in the release's report, with the statistics' history for its plot."""
    kept = canary.report.get("canary", {})
    if kept.get("since") != status["since"]:
        kept = {}  # a new canary period: its evidence starts again
    history = list(kept.get("history", []))
    if not history or history[-1]["events"] != status["events"]:
        history.append({"at": status["judged_at"], "events": status["events"],
                        **{name: test["log_ratio"] for name, test in status["tests"].items()},
                        "promotion": status["promotion"]["log_ratio"]})
    flags = {key: value for key, value in kept.items() if key.startswith("announced_")}
    canary.report = {**canary.report, "canary": {**status, **flags, "history": history[-HISTORY:]}}


def live_status(evidence: CanaryEvidence, judgement: Judgement, since: datetime, policy: CanaryPolicy) -> dict:
    """What `releases show` and GET /api/releases/NAME show of a running canary."""
    elapsed_h = max((utcnow() - in_utc(since)).total_seconds() / 3600, 1e-9)
    decisive = evidence.wins + evidence.losses
    to_go = choices_to_decide(evidence.wins, evidence.losses,
                              policy.rollback_alpha if evidence.wins < evidence.losses else policy.false_promotion)
    per_hour = decisive / elapsed_h
    metrics = {}
    for name, side in (("canary", evidence.canary), ("active", evidence.active)):
        metrics[name] = {
            "answers": side.answers, "errors": side.errors, "interventions": side.interventions,
            "thumbs_up": side.thumbs_up, "thumbs_down": side.thumbs_down,
            "thumbs_down_rate": _rate(side.thumbs_down, side.thumbs),
            "error_rate": _rate(side.errors, side.answers + side.errors),
            "intervention_rate": _rate(side.interventions, side.answers),
            "stars": side.stars, "stars_mean": side.stars_sum / side.stars if side.stars else None,
            "latency_ms_mean": side.latency_ms_sum / side.answers if side.answers else None,
        }
    return {
        "since": in_utc(since).isoformat(), "judged_at": utcnow().isoformat(), "events": evidence.events,
        "choices": {"canary_won": evidence.wins, "canary_lost": evidence.losses, "ties": evidence.ties,
                    "canary_share": _rate(evidence.wins, decisive)},
        "metrics": metrics,
        "tests": {name: test.as_dict() for name, test in judgement.tests.items()},
        "promotion": judgement.promotion.as_dict() if judgement.promotion else None,
        "decision": {"action": judgement.action, "reason": judgement.reason},
        "expected": {"choices_to_decide": to_go, "choices_per_hour": per_hour,
                     "hours_to_decide": to_go / per_hour if to_go is not None and per_hour > 0 else None},
        "method": "mixture SPRT (always valid): Beta(12, 12) mixture for interleaved choices, normal mixture "
                  "for rates and means; the rollback error rate split over its metrics",
    }


def _rate(hits: int, n: int) -> dict:
    """A rate with its 95% Wilson interval (for reading; the decisions are the sequential tests')."""
    low, high = wilson(hits, n)
    return {"rate": hits / n if n else None, "low": low, "high": high, "n": n}
