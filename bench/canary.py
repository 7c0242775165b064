"""Canaries that judge themselves: how often the statistics are wrong, and how fast they are right.

The statistics alone, simulated (the issue allows it): each turn of simulated traffic is an
interleaved choice (on `--compare` of turns: canary's answer against the active release's), or an
answer from the canary (on `--share` of the rest) or the active release, which users may rate
with thumbs or stars and a guardrail may act on. After **every** turn the service's own decision
(`feedback.canary.judge`, the default policy) is asked; a run ends at its first decision or at
`--turns`.

- A/A (both releases alike): the share of runs rolled back and promoted, against the configured
  error rates (0.05 each): an always-valid test keeps them within, checked after every event.
- A canary users dislike, at two stated effect sizes: 60/40 in the interleaved choices; thumbs
  down rising from 20% to 35% with no interleaving at all. Events (what users said) to rollback,
  median and 95th percentile.
- A canary users prefer 60/40: events to the promotion (asked of an operator by default).

- `--end-to-end`: on the embedded model, a deliberately worse release approved as a canary and
  rolled back by simulated users' choices; time and events to the rollback, failed requests
  (bench/canary_loop.py).

    PYTHONPATH=. .venv/bin/python bench/canary.py              # 400 runs per scenario
    PYTHONPATH=. .venv/bin/python bench/canary.py --runs 100   # quicker
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/canary.py --end-to-end
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench._stats import percentile  # noqa: E402
from feedback.canary import CanaryEvidence, CanaryPolicy, ReleaseEvidence, judge  # noqa: E402
from feedback.stats import wilson  # noqa: E402


@dataclass(frozen=True)
class Users:
    """How users and checks treat one release's answers."""

    thumbs_down: float = 0.20  # of thumbs given
    stars_mean: float = 3.8
    intervention: float = 0.02
    error: float = 0.005


@dataclass(frozen=True)
class Scenario:
    name: str
    canary: Users
    active: Users
    canary_wins: float = 0.5  # of interleaved choices with a winner
    compare: float = 0.2  # share of turns shown as an interleaved pair
    ties: float = 0.3  # of interleaved choices
    share: float = 0.2  # canary's share of the other turns
    thumbs: float = 0.3  # of answers rated with a thumb
    stars: float = 0.1  # of answers rated with stars


def _answer(evidence: ReleaseEvidence, users: Users, scenario: Scenario, rng: random.Random) -> None:
    evidence.answers += 1
    if rng.random() < scenario.thumbs:
        if rng.random() < users.thumbs_down:
            evidence.thumbs_down += 1
        else:
            evidence.thumbs_up += 1
    if rng.random() < scenario.stars:
        stars = min(5, max(1, round(rng.gauss(users.stars_mean, 1.0))))
        evidence.stars += 1
        evidence.stars_sum += stars
        evidence.stars_squares += stars * stars
    evidence.interventions += rng.random() < users.intervention
    evidence.errors += rng.random() < users.error


def _turn(evidence: CanaryEvidence, scenario: Scenario, rng: random.Random) -> None:
    if rng.random() < scenario.compare:
        if rng.random() < scenario.ties:
            evidence.ties += 1
        elif rng.random() < scenario.canary_wins:
            evidence.wins += 1
        else:
            evidence.losses += 1
    elif rng.random() < scenario.share:
        _answer(evidence.canary, scenario.canary, scenario, rng)
    else:
        _answer(evidence.active, scenario.active, scenario, rng)


def run(scenario: Scenario, policy: CanaryPolicy, turns: int, seed: int) -> tuple[str, int, int]:
    """(the first action other than wait, or "none"; events when it was taken; turns)."""
    rng, evidence = random.Random(seed), CanaryEvidence()
    for turn in range(1, turns + 1):
        _turn(evidence, scenario, rng)
        action = judge(evidence, policy).action
        if action != "wait":
            return action, evidence.events, turn
    return "none", evidence.events, turns


SCENARIOS = [
    Scenario("A/A", Users(), Users()),
    Scenario("disliked 60/40 (choices)", Users(), Users(), canary_wins=0.4),
    Scenario("disliked: thumbs down 20% -> 35%, no interleaving", Users(thumbs_down=0.35), Users(), compare=0.0),
    Scenario("preferred 60/40 (choices)", Users(), Users(), canary_wins=0.6),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=400, help="seeded runs per scenario")
    parser.add_argument("--turns", type=int, default=4000, help="turns per run at most")
    parser.add_argument("--end-to-end", action="store_true", help="the service on the embedded model instead")
    args = parser.parse_args()
    if args.end_to_end:
        from bench.canary_loop import end_to_end

        end_to_end()
        return
    policy = CanaryPolicy()
    started = time.perf_counter()
    print(f"policy: false rollback {policy.false_rollback}, false promotion {policy.false_promotion}, "
          f"at least {policy.min_answers} answers per release for rates and means; checked after every turn; "
          f"{args.runs} runs of at most {args.turns} turns per scenario")
    print(f"{'scenario':<52} {'rollback':>9} {'promote':>8} {'none':>6} {'events p50':>10} {'p95':>6} "
          f"{'turns p50':>9}")
    for scenario in SCENARIOS:
        outcomes = [run(scenario, replace(policy), args.turns, seed) for seed in range(args.runs)]
        counts = {action: sum(o[0] == action for o in outcomes) for action in ("rollback", "ask_promote", "none")}
        decided = [o for o in outcomes if o[0] != "none"]
        events = [o[1] for o in decided] or [0]
        turns = [o[2] for o in decided] or [0]
        print(f"{scenario.name:<52} {counts['rollback'] / args.runs:>9.3f} {counts['ask_promote'] / args.runs:>8.3f} "
              f"{counts['none'] / args.runs:>6.3f} {percentile(events, 0.5):>10.0f} {percentile(events, 0.95):>6.0f} "
              f"{percentile(turns, 0.5):>9.0f}")
        if scenario.name == "A/A":
            for action, rate in (("rollback", policy.false_rollback), ("ask_promote", policy.false_promotion)):
                low, high = wilson(counts[action], args.runs)
                print(f"  false {action.replace('ask_', '')}: {counts[action]}/{args.runs}, 95% interval "
                      f"{low:.3f}-{high:.3f}, configured {rate}")
    print(f"events: what users said (choices, thumbs, stars) about either release; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
