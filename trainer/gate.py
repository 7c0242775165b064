"""The gate a candidate must pass before an operator even sees it as a candidate.

`check(thresholds, metrics)` compares each figure of the evaluation with its threshold and
says in one line why the candidate passed or failed. The win rate is judged by the lower end
of its 95% interval (`win_rate_bound`), so a candidate passes only when it is *clearly* at
least as good as what users have now, not when a coin flip of ties says 0.5. A figure in
`required` that could not be measured fails the gate, saying which; any other figure that
could not be measured (None: no held-out pairs, no guardrails, no golden set) does not block
and is reported as "not measured", so the operator sees what the gate could not look at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class GateThresholds:
    # The first two stay in this order: callers build `GateThresholds(pair_accuracy, win_rate)`.
    # Held-out pairs on which the policy's implicit DPO reward ranks the chosen answer first.
    # A coin flip scores 0.5; 0.55 asks for a real signal while leaving room for the noise of
    # a few dozen held-out pairs.
    min_pair_accuracy: float = 0.55
    # The primary judge's win rate against the active release (ties count half): 0.5 means
    # "at least as good as what users have now".
    min_win_rate: float = 0.5
    # The reward model's held-out pair accuracy. A reward model no better than chance would
    # steer the policy at noise, so it asks for the same margin over a coin flip.
    min_reward_pair_accuracy: float = 0.55
    # Golden-set ROUGE-L F drop (active - candidate). Rewording moves ROUGE-L by a few
    # hundredths; more than 0.05 means reference answers were forgotten, not rephrased.
    max_golden_drop: float = 0.05
    # Rise in the share of answers the guardrails refuse, fix or flag: two more in a hundred
    # is already a visible change for users and reviewers.
    max_violation_increase: float = 0.02
    # |mean words of candidate / active - 1|. Preference training drifts towards longer (or
    # shorter) answers when the judges reward length; half as long again is a change of
    # style the operator should choose on purpose, not receive as a side effect.
    max_length_drift: float = 0.5
    # Mean KL(candidate || active) in nats per answer token. A refinement of the active
    # release moves its next-token distribution by tenths of a nat; a whole nat per token
    # means a different model, usually an over-optimised one.
    max_kl: float = 1.0
    # "lower": the win rate's 95% (Wilson) lower bound must reach min_win_rate; "point": the rate itself.
    win_rate_bound: str = "lower"
    # Figures without which no candidate passes: a release nobody could compare with the
    # active one has shown nothing an operator could approve on.
    required: tuple[str, ...] = ("win_rate",)

    @classmethod
    def open(cls) -> GateThresholds:
        """Thresholds every figure passes: for tests, and for runs an operator reviews by hand anyway."""
        inf = float("inf")
        return cls(0.0, 0.0, 0.0, max_golden_drop=inf, max_violation_increase=inf, max_length_drift=inf, max_kl=inf,
                   win_rate_bound="point", required=())


@dataclass(frozen=True)
class _Rule:
    key: str  # the metric's key in `metrics`
    name: str  # how the report and the summary line name it
    threshold_field: str
    at_least: bool  # True: value >= threshold passes; False: |value| <= threshold (or value <=)
    absolute: bool = False  # compare |value| (a drift either way counts)


RULES = (
    _Rule("pair_accuracy", "held-out pair accuracy", "min_pair_accuracy", True),
    _Rule("win_rate", "win rate against the active release", "min_win_rate", True),
    _Rule("reward_pair_accuracy", "reward model held-out pair accuracy", "min_reward_pair_accuracy", True),
    _Rule("golden_drop", "golden-set ROUGE-L drop", "max_golden_drop", False),
    _Rule("violation_increase", "guardrail violation increase", "max_violation_increase", False),
    _Rule("length_drift", "answer length drift", "max_length_drift", False, absolute=True),
    _Rule("kl", "KL to the active release (nats/token)", "max_kl", False),
)


def check(thresholds: GateThresholds, metrics: Mapping[str, float | None]) -> dict:
    """Each check with its figure and threshold, and one line that says why it passed or failed.

    `metrics` has the keys of `RULES` (pair_accuracy, reward_pair_accuracy, win_rate,
    golden_drop, violation_increase, length_drift, kl); a missing key or None is "not
    measured".
    """
    checks = [_check(_bound(rule, thresholds), _value(rule, metrics, thresholds),
                     getattr(thresholds, rule.threshold_field), rule.key in thresholds.required) for rule in RULES]
    return {"passed": all(c["passed"] for c in checks), "summary": summary(checks), "checks": checks}


def _bound(rule: _Rule, thresholds: GateThresholds) -> _Rule:
    if rule.key == "win_rate" and thresholds.win_rate_bound == "lower":
        return _Rule(rule.key, "win rate against the active release (95% lower bound)", rule.threshold_field, True)
    return rule


def _value(rule: _Rule, metrics: Mapping[str, float | None], thresholds: GateThresholds) -> float | None:
    if rule.key == "win_rate" and thresholds.win_rate_bound == "lower" and metrics.get("win_rate") is not None:
        return metrics.get("win_rate_low", metrics["win_rate"])
    return metrics.get(rule.key)


def summary(checks: list[dict]) -> str:
    """One line: the failing checks with figure and threshold, else what passed and what was not measured."""
    failed = [c for c in checks if not c["passed"]]
    unmeasured = [c["name"] for c in checks if c["value"] is None]
    if failed:
        return "Gate failed: " + "; ".join(f"{c['name']} {c['value']:.3f} {_missed(c)}" if c["value"] is not None
                                           else f"{c['name']} could not be measured and is required"
                                           for c in failed)
    measured = [f"{c['name']} {c['value']:.3f} {c['op']} {c['threshold']:g}" for c in checks if c["value"] is not None]
    line = "Gate passed: " + ("; ".join(measured) if measured else "nothing could be measured")
    if measured and unmeasured:
        line += f" (not measured: {', '.join(unmeasured)})"
    return line


def _check(rule: _Rule, value: float | None, threshold: float, required: bool = False) -> dict:
    if value is None:
        passed = not required  # not measured: shown as such, and blocks only a required figure
    elif rule.at_least:
        passed = value >= threshold
    else:
        passed = (abs(value) if rule.absolute else value) <= threshold
    op = "≥" if rule.at_least else "|x| ≤" if rule.absolute else "≤"
    return {"key": rule.key, "name": rule.name, "value": value, "threshold": threshold, "op": op,
            "passed": passed, "measured": value is not None}


def _missed(check: dict) -> str:
    """How a failing figure misses its threshold, in words: "is below 0.5", "is beyond ±0.5"."""
    threshold = f"{check['threshold']:g}"
    if check["op"] == "≥":
        return f"is below {threshold}"
    return f"is beyond ±{threshold}" if check["op"] == "|x| ≤" else f"is above {threshold}"
