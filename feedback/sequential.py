"""Sequential tests a canary may run after every event without inflating its false alarms.

Both are mixture sequential probability ratio tests (mSPRT): the likelihood ratio of "some
effect, weighted by a prior" against "no effect" is a martingale under no effect, so by Ville's
inequality it ever reaches 1/alpha with probability at most alpha, however often it is looked at
(Robbins 1970; Johari, Pekelis & Walsh, "Always valid inference", 2017). Checking a fixed-n test
after every event instead would raise far more false alarms than its alpha says.

- **Interleaved choices** (the canary's answer against the active release's, same prompt): each
  choice with a winner is a coin with P(canary preferred) = p, and no effect is p = 1/2. The
  mixture over p is Beta(a, a), so the ratio has a closed form and the test is exact.
  a = 12 puts the prior's spread (sd 0.1) on the effects that matter, such as 60/40.
- **Rates** (thumbs down, guardrail interventions, errors; and mean stars): the difference of the
  two releases' means is close to normal; the mixture over it is normal with sd `tau`. This is
  Johari et al.'s test, valid as the counts grow, hence a minimum of events per release first.

A decision reads the side the estimate is on; the chance of any decision under no effect stays
within alpha, and of the wrong side's decision far below it. This module writes the tests itself:
they are a few lines of closed form, and the statistics libraries here (scipy, statsmodels) have
fixed-sample tests only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

Verdict = Literal["worse", "better", "undecided"]
CHOICE_PRIOR = 12.0  # Beta(a, a): sd 0.1 around a fair coin


@dataclass(frozen=True)
class Sequential:
    """One test's state: its statistic (log of the mixture likelihood ratio) against its boundary."""

    metric: str
    log_ratio: float
    boundary: float  # log(1 / alpha)
    estimate: float | None  # the canary's effect: P(canary preferred), or canary minus active
    verdict: Verdict
    events: int

    def as_dict(self) -> dict:
        return asdict(self)


def _log_beta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def choice_log_ratio(wins: int, losses: int, prior: float = CHOICE_PRIOR) -> float:
    """log of the Beta(prior, prior) mixture's likelihood ratio against p = 1/2."""
    n = wins + losses
    return _log_beta(prior + wins, prior + losses) - _log_beta(prior, prior) + n * math.log(2.0)


def choices(wins: int, losses: int, alpha: float, metric: str = "interleaved choices") -> Sequential:
    """The canary won `wins` and lost `losses` of the choices with a winner."""
    log_ratio, boundary = choice_log_ratio(wins, losses), math.log(1.0 / alpha)
    n = wins + losses
    estimate = wins / n if n else None
    better_side = 0.0 if estimate is None else estimate - 0.5
    return Sequential(metric, log_ratio, boundary, estimate, _verdict(log_ratio, boundary, better_side), n)


def normal_log_ratio(difference: float, variance: float, tau: float) -> float:
    """log of the N(0, tau^2) mixture's likelihood ratio for an estimate `difference` of known
    `variance` against a difference of zero."""
    if variance <= 0:
        return 0.0
    total = variance + tau * tau
    return 0.5 * math.log(variance / total) + tau * tau * difference * difference / (2.0 * variance * total)


def rates(canary_hits: int, canary_n: int, active_hits: int, active_n: int, alpha: float, *, metric: str,
          tau: float = 0.1, minimum: int = 30, higher_is_worse: bool = True) -> Sequential:
    """Two releases' rates of an event (a thumbs down, a guardrail intervention, an error)."""
    if min(canary_n, active_n) < minimum:
        return Sequential(metric, 0.0, math.log(1.0 / alpha), None, "undecided", canary_n + active_n)
    pooled = (canary_hits + active_hits) / (canary_n + active_n)
    variance = pooled * (1 - pooled) * (1 / canary_n + 1 / active_n)  # under no effect
    difference = canary_hits / canary_n - active_hits / active_n
    return _normal(metric, difference, variance, tau, alpha, canary_n + active_n, higher_is_worse)


def means(canary: tuple[int, float, float], active: tuple[int, float, float], alpha: float, *, metric: str,
          tau: float = 0.5, minimum: int = 30, higher_is_worse: bool = False) -> Sequential:
    """Two releases' mean of a score (stars), each given as (count, sum, sum of squares)."""
    (n_c, sum_c, squares_c), (n_a, sum_a, squares_a) = canary, active
    if min(n_c, n_a) < minimum:
        return Sequential(metric, 0.0, math.log(1.0 / alpha), None, "undecided", n_c + n_a)
    variance = _variance(n_c, sum_c, squares_c) / n_c + _variance(n_a, sum_a, squares_a) / n_a
    difference = sum_c / n_c - sum_a / n_a
    return _normal(metric, difference, variance, tau, alpha, n_c + n_a, higher_is_worse)


def _normal(metric: str, difference: float, variance: float, tau: float, alpha: float, events: int,
            higher_is_worse: bool) -> Sequential:
    log_ratio, boundary = normal_log_ratio(difference, variance, tau), math.log(1.0 / alpha)
    worse_side = difference if higher_is_worse else -difference
    return Sequential(metric, log_ratio, boundary, difference, _verdict(log_ratio, boundary, -worse_side), events)


def _verdict(log_ratio: float, boundary: float, better_side: float) -> Verdict:
    if log_ratio < boundary or better_side == 0:
        return "undecided"
    return "better" if better_side > 0 else "worse"


def _variance(n: int, total: float, squares: float) -> float:
    return max(0.0, squares - total * total / n) / max(1, n - 1)


def choices_to_decide(wins: int, losses: int, alpha: float, limit: int = 100_000) -> int | None:
    """How many more choices the test needs if the canary keeps winning at today's rate; None
    when today's rate is a fair coin (no decision is in sight) or it would take past `limit`."""
    n = wins + losses
    if n == 0 or wins == losses:
        return None
    share, boundary = wins / n, math.log(1.0 / alpha)

    def decided(total: int) -> bool:
        return choice_log_ratio(share * total, (1 - share) * total) >= boundary

    if decided(n):
        return 0
    high = max(2 * n, 16)
    while not decided(high):
        if high > limit:
            return None
        high *= 2
    low = n
    while high - low > 1:  # the first total where the boundary is crossed
        middle = (low + high) // 2
        low, high = (low, middle) if decided(middle) else (middle, high)
    return high - n
