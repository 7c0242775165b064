"""What a canary's live evidence says: roll it back, promote it, or wait for more.

The evidence is counted from the store (`store.canary`), the same on every replica; the tests
are `feedback.sequential`'s, valid after every event. Two families with their own error rate:

- **rollback**: any metric in the policy's list alone can roll a canary back (interleaved
  choices, thumbs down, stars, guardrail interventions, errors). The family's error rate is
  split evenly over them (Bonferroni), so an A/A canary is rolled back with probability at most
  `false_rollback`, however long it runs.
- **promotion**: a clear win in the interleaved choices (or, with none, fewer thumbs down)
  promotes it, or asks an operator, by policy; at most `false_promotion` for an A/A canary.

After `max_choices` choices with a winner and no decision the canary is called inconclusive
once: an operator decides (the users cannot tell the two apart).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from feedback import sequential
from feedback.sequential import Sequential

Action = Literal["rollback", "promote", "ask_promote", "inconclusive", "wait"]
ROLLBACK_METRICS = ("choices", "thumbs_down", "stars", "guardrails", "errors")


@dataclass(frozen=True)
class CanaryPolicy:
    decide: bool = True  # False: evidence is shown, nothing is decided
    promote: Literal["auto", "ask"] = "ask"  # a clear win promotes by itself, or asks an operator
    false_rollback: float = 0.05
    false_promotion: float = 0.05
    min_answers: int = 30  # per release, before a rate or a mean can decide
    max_choices: int = 1000  # choices with a winner before calling it inconclusive
    rollback_metrics: tuple[str, ...] = ROLLBACK_METRICS

    @property
    def rollback_alpha(self) -> float:
        """Each rollback metric's share of the family's error rate (Bonferroni)."""
        return self.false_rollback / max(1, len(self.rollback_metrics))


@dataclass
class ReleaseEvidence:
    """One release's answers since the canary started, and what users and checks said of them."""

    answers: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    stars: int = 0  # ratings with stars, their sum and sum of squares (a mean and its variance)
    stars_sum: float = 0.0
    stars_squares: float = 0.0
    interventions: int = 0  # answers a guardrail blocked, rewrote or flagged
    errors: int = 0
    latency_ms_sum: float = 0.0

    @property
    def thumbs(self) -> int:
        return self.thumbs_up + self.thumbs_down

    @property
    def star_summary(self) -> tuple[int, float, float]:
        return self.stars, self.stars_sum, self.stars_squares


@dataclass
class CanaryEvidence:
    canary: ReleaseEvidence = field(default_factory=ReleaseEvidence)
    active: ReleaseEvidence = field(default_factory=ReleaseEvidence)
    wins: int = 0  # interleaved choices the canary's answer won
    losses: int = 0
    ties: int = 0  # "both good" / "both bad": no winner, no information about which is better

    @property
    def events(self) -> int:
        """Everything users and checks said about either release."""
        ours, theirs = self.canary, self.active
        return self.wins + self.losses + self.ties + ours.thumbs + theirs.thumbs + ours.stars + theirs.stars


@dataclass(frozen=True)
class Judgement:
    action: Action
    reason: str
    tests: dict[str, Sequential]  # the rollback family's, each at its share of the error rate
    promotion: Sequential | None

    def as_dict(self) -> dict:
        return {"action": self.action, "reason": self.reason,
                "tests": {name: test.as_dict() for name, test in self.tests.items()},
                "promotion": self.promotion.as_dict() if self.promotion else None}


def rollback_tests(evidence: CanaryEvidence, policy: CanaryPolicy) -> dict[str, Sequential]:
    alpha = policy.rollback_alpha
    ours, theirs, least = evidence.canary, evidence.active, policy.min_answers
    every = {
        "choices": lambda: sequential.choices(evidence.wins, evidence.losses, alpha),
        "thumbs_down": lambda: sequential.rates(ours.thumbs_down, ours.thumbs, theirs.thumbs_down, theirs.thumbs,
                                                alpha, metric="thumbs down", minimum=least),
        "stars": lambda: sequential.means(ours.star_summary, theirs.star_summary, alpha, metric="stars",
                                          minimum=least),
        "guardrails": lambda: sequential.rates(ours.interventions, ours.answers, theirs.interventions, theirs.answers,
                                               alpha, metric="guardrail interventions", tau=0.05, minimum=least),
        "errors": lambda: sequential.rates(ours.errors, ours.answers, theirs.errors, theirs.answers, alpha,
                                           metric="errors", tau=0.05, minimum=least),
    }
    return {name: every[name]() for name in policy.rollback_metrics}


def promotion_test(evidence: CanaryEvidence, policy: CanaryPolicy) -> Sequential:
    """The interleaved choices where there are any; fewer thumbs down where there are none."""
    if evidence.wins + evidence.losses:
        return sequential.choices(evidence.wins, evidence.losses, policy.false_promotion)
    ours, theirs = evidence.canary, evidence.active
    return sequential.rates(ours.thumbs_down, ours.thumbs, theirs.thumbs_down, theirs.thumbs,
                            policy.false_promotion, metric="thumbs down", minimum=policy.min_answers)


def judge(evidence: CanaryEvidence, policy: CanaryPolicy) -> Judgement:
    tests = rollback_tests(evidence, policy)
    promotion = promotion_test(evidence, policy)
    worse = [test for test in tests.values() if test.verdict == "worse"]
    if worse:
        first = worse[0]
        return Judgement("rollback", f"users like it less: {first.metric} crossed its boundary "
                                     f"({first.log_ratio:.2f} >= {first.boundary:.2f})", tests, promotion)
    if promotion.verdict == "better":
        action = "promote" if policy.promote == "auto" else "ask_promote"
        return Judgement(action, f"users like it more: {promotion.metric} crossed its boundary "
                                 f"({promotion.log_ratio:.2f} >= {promotion.boundary:.2f})", tests, promotion)
    if evidence.wins + evidence.losses >= policy.max_choices:
        return Judgement("inconclusive", f"no difference after {evidence.wins + evidence.losses} choices with a "
                                         "winner: an operator decides", tests, promotion)
    return Judgement("wait", "not enough evidence yet", tests, promotion)
