"""The gate a candidate must pass before an operator even sees it as a candidate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateThresholds:
    min_pair_accuracy: float = 0.55
    min_win_rate: float = 0.5


def check(thresholds: GateThresholds, pair_accuracy: float | None, win_rate: float | None) -> dict:
    """Each check with its figure and threshold, and one line that says why it passed or failed.

    A figure that could not be measured (no held-out pairs, no judge) is reported as such
    and does not block: the operator reads that in the report.
    """
    checks = [
        _check("held-out pair accuracy", pair_accuracy, thresholds.min_pair_accuracy),
        _check("win rate against the active release", win_rate, thresholds.min_win_rate),
    ]
    failed = [c for c in checks if not c["passed"]]
    if failed:
        summary = "Gate failed: " + "; ".join(f"{c['name']} {c['value']:.3f} is below {c['threshold']}" for c in failed)
    else:
        measured = [f"{c['name']} {c['value']:.3f} ≥ {c['threshold']}" for c in checks if c["value"] is not None]
        summary = "Gate passed: " + ("; ".join(measured) if measured else "nothing could be measured")
    return {"passed": not failed, "summary": summary, "checks": checks}


def _check(name: str, value: float | None, threshold: float) -> dict:
    passed = value is None or value >= threshold
    return {"name": name, "value": value, "threshold": threshold, "op": "≥", "passed": passed}
