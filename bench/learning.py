"""Does one night teach the model what its users prefer, whatever that is? The panel's worst case.

For each A/B share (1.0: every widget turn a pair; 0.2: the default) the real service chats
with a crowd of simulated users once (`record`); the store and what was said are snapshotted
after 100, 300 and 1,000 events. Then for every judge of the panel (`bench/panel.py`) and
every snapshot (`night`):

  1. a copy of that snapshot is served again and the crowd gives its feedback on what it was
     shown, as that judge prefers, through the same public API the widget uses;
  2. plain `tuneloop train --judge bench.panel:NAME` runs on it (a subprocess, the defaults
     a user gets), timed;
  3. the release's own report gives the win rate against the base on held-out prompts (greedy,
     capped as served) with its 95% interval, and the recipe, the data and the stages.

Answers do not depend on the judge, so one round of answers serves the whole panel: that is
what makes 2 x 3 x 9 nights fit a machine, and it is the only way this differs from running
`tuneloop simulate --judge J` once per judge (conversations that go on do so with the answer
shown first, as before a user has voted).

    PYTHONPATH=. .venv/bin/python bench/learning.py                          # everything (hours)
    PYTHONPATH=. .venv/bin/python bench/learning.py --events 300 --shares 1.0 --judges asks_back,example
    PYTHONPATH=. .venv/bin/python bench/learning.py --yields-only            # pair yield, base rates: no training
    PYTHONPATH=. .venv/bin/python bench/learning.py --strategy samples --events 100 --yields-only

Results go to bench/out/learning/<strategy>/: `results.json` (one entry per night, kept
across runs, so a long table can be filled in over several sessions), `learning-defaults.png` (win
rate against events per judge, one line per share; `learning-<label>.png` for a `--label`led
variant of the training flags) and the table printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub, whatever the caller set
sys.path.insert(0, str(ROOT))

from bench._service import OUT, model_path, service  # noqa: E402
from bench.panel import PANEL  # noqa: E402

TARGETS = {1.0: 0.70, 0.2: 0.65}  # the worst judge's win rate after 300 events, per A/B share
TARGET_MINUTES = 20.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="'tiny', a local folder, or (default) the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--shares", default="1.0,0.2", help="A/B shares, comma-separated")
    parser.add_argument("--events", default="100,300,1000", help="feedback events at which nights are run")
    parser.add_argument("--judges", default=",".join(PANEL), help="panel judges (bench/panel.py), comma-separated")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default="contrast", help="TUNELOOP_AB_STRATEGY while recording")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the service (0: torch's default)")
    parser.add_argument("--yields-only", action="store_true", help="record and report pair yields; train nothing")
    parser.add_argument("--again", action="store_true", help="run nights again that results.json already has")
    parser.add_argument("--train-args", default="", help="extra `tuneloop train` flags (default: none, as users get)")
    parser.add_argument("--label", default="defaults", help="names the training variant in results.json")
    return parser.parse_args()


def _csv(text: str, kind=str) -> list:  # noqa: ANN001
    return [kind(part) for part in text.split(",") if part.strip()]


# ---------------------------------------------------------------- recording: the crowd chats


def snapshot_path(folder: Path, events: int) -> Path:
    return folder / f"store-{events}.db"


def transcript_path(folder: Path, events: int) -> Path:
    return folder / f"transcript-{events}.json"


def record(folder: Path, share: float, checkpoints: list[int], args: argparse.Namespace, model: str) -> None:
    """One crowd chats with the service; the store and the transcript are kept at each checkpoint.
    A recording that reached an earlier checkpoint goes on from there (same store, same users)."""
    missing = [n for n in sorted(checkpoints) if not snapshot_path(folder, n).is_file()]
    if not missing:
        return
    reached = [n for n in sorted(int(p.stem.split("-")[1]) for p in folder.glob("transcript-*.json")) if n < missing[0]]
    if not reached:
        shutil.rmtree(folder / "service", ignore_errors=True)
    settings = {"AB_SHARE": share, "AB_STRATEGY": args.strategy}
    with service(folder / "service", model, settings, args.threads) as url:
        asyncio.run(_chat(url, folder, missing, args, reached[-1] if reached else 0))


async def _chat(url: str, folder: Path, checkpoints: list[int], args: argparse.Namespace, reached: int) -> None:
    import random

    import httpx

    from trainer.simulate import SimulatedUser, Transcript, deal_prompts, load_prompts

    rng = random.Random(args.seed)
    dealt = deal_prompts([p["prompt"] for p in load_prompts()], checkpoints[-1], rng)
    transcript = load_transcript(folder, reached) if reached else Transcript()
    stats = Counter()
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=900) as http:
        people = [SimulatedUser(http, None, random.Random(rng.random()), stats, i) for i in range(args.users)]
        tokens = transcript.tokens or [None] * len(people)
        await asyncio.gather(*(person.sign_in(token) for person, token in zip(people, tokens)))
        transcript.tokens = [person.token for person in people]
        done = reached
        for checkpoint in checkpoints:
            queue = list(reversed(dealt[done:checkpoint]))

            async def work(person: SimulatedUser) -> None:
                while queue:
                    try:
                        transcript.turns.append(await person.event(queue.pop()))
                    except (httpx.HTTPError, RuntimeError) as error:
                        stats["errors"] += 1
                        print(f"event failed: {error}", flush=True)

            await asyncio.gather(*(work(person) for person in people))
            done = checkpoint
            _save(folder, checkpoint, transcript, url, time.perf_counter() - started)
            print(f"recorded {checkpoint} events in {time.perf_counter() - started:.0f} s", flush=True)


def _save(folder: Path, events: int, transcript, url: str, seconds: float) -> None:  # noqa: ANN001
    source = sqlite3.connect(folder / "service" / "tuneloop.db")
    target = sqlite3.connect(snapshot_path(folder, events))
    source.backup(target)  # a consistent copy of a live WAL database
    target.close()
    source.close()
    body = {"tokens": transcript.tokens, "turns": [asdict(turn) for turn in transcript.turns], "seconds": seconds}
    transcript_path(folder, events).write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")


def load_transcript(folder: Path, events: int):  # noqa: ANN201
    from trainer.simulate import Answered, Transcript

    body = json.loads(transcript_path(folder, events).read_text(encoding="utf-8"))
    return Transcript(body["tokens"], [Answered(**turn) for turn in body["turns"]])


# ---------------------------------------------------------------- what the recording offers each judge


def pair_yield(transcript, judge) -> dict:  # noqa: ANN001
    """A/B choices this judge makes on the recorded pairs: with a winner / all."""
    verdicts = Counter()
    for turn in transcript.turns:
        if turn.ab:
            shown = sorted(turn.answers, key=lambda a: a["position"])
            verdicts[judge(turn.prompt, shown[0]["text"], shown[1]["text"])] += 1
    choices = sum(verdicts.values())
    winners = verdicts["a"] + verdicts["b"]
    return {"choices": choices, "winners": winners, "yield": winners / choices if choices else None,
            "both_bad": verdicts["both_bad"]}


def base_rate(transcript, judge) -> float | None:  # noqa: ANN001
    """Share of the base model's plain answers (as a single turn gets them) that have the judge's trait."""
    has = getattr(judge, "has", None)
    plain = [a["text"] for turn in transcript.turns for a in turn.answers if a["index"] == 0]
    return sum(map(has, plain)) / len(plain) if has and plain else None


# ---------------------------------------------------------------- one night


def night(folder: Path, share: float, events: int, name: str, args: argparse.Namespace, model: str) -> dict:
    from trainer.simulate import give_feedback

    work = folder / f"night-{name}-{events}-{args.label}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy(snapshot_path(folder, events), work / "tuneloop.db")
    transcript = load_transcript(folder, events)
    with service(work, model, {"AB_SHARE": share}, args.threads) as url:
        feedback = asyncio.run(give_feedback(url, transcript, PANEL[name]))
    command = [sys.executable, "-m", "tuneloop.cli", "train", "--judge", f"bench.panel:{name}", *args.train_args.split()]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNELOOP_DATA_DIR": str(work), "TUNELOOP_MODEL": model,
           "TUNELOOP_DEVICE": "cpu"}
    env.pop("TUNELOOP_DATABASE_URL", None)
    # Every night here is judged against the same base release: the base's greedy answers that one
    # night gave, the next reuses (trainer.answers.AnswerCache), as nights against one active
    # release do in a deployment.
    shared_cache = folder.parent / "eval-cache"
    if shared_cache.is_dir():
        shutil.copytree(shared_cache, work / "eval-cache")
    started = time.perf_counter()
    with (work / "train.log").open("wb") as log:
        code = subprocess.call(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    minutes = (time.perf_counter() - started) / 60
    if (work / "eval-cache").is_dir():
        shutil.copytree(work / "eval-cache", shared_cache, dirs_exist_ok=True)
    return {"share": share, "events": events, "judge": name, "label": args.label, "minutes": minutes, "exit": code,
            "feedback": dict(feedback), **pair_yield(transcript, PANEL[name]), **_outcome(work, name)}


def _outcome(work: Path, name: str) -> dict:
    reports = sorted(work.glob("releases/*/report.json"))
    if not reports:
        log = (work / "train.log").read_text(errors="replace").strip().splitlines()
        return {"release": None, "message": log[-1] if log else "no log"}
    body = json.loads(reports[-1].read_text(encoding="utf-8"))
    evaluation = body["evaluation"]
    win = evaluation["win_rates"].get(f"bench.panel:{name}") or {}
    stages = {stage: info["summary"] for stage, info in body["training"]["stages"].items()}
    return {"release": body["release"], "recipe": body["recipe"], "recipe_reason": body["recipe_reason"],
            "gate": body["gate"]["summary"], "win": {k: win.get(k) for k in ("rate", "low", "high", "wins", "ties",
                                                                               "losses", "n")},
            "data": body["data"], "stages": stages, "kl": (evaluation.get("kl") or {}).get("per_token"),
            "timings": body.get("timings")}


# ---------------------------------------------------------------- report


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["judge"] for r in results}, key=list(PANEL).index)
    columns = min(3, len(names))
    rows = (len(names) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        for share, colour in zip(sorted({r["share"] for r in results}, reverse=True), ("C0", "C1", "C2")):
            points = sorted((r["events"], r["win"]) for r in results
                            if r["judge"] == name and r["share"] == share and r.get("win", {}).get("rate") is not None)
            if not points:
                continue
            xs = [p[0] for p in points]
            rates = [p[1]["rate"] for p in points]
            errors = [[p[1]["rate"] - p[1]["low"] for p in points], [p[1]["high"] - p[1]["rate"] for p in points]]
            ax.errorbar(xs, rates, yerr=errors, marker="o", capsize=4, color=colour, label=f"A/B share {share:g}")
        ax.axhline(0.5, color="grey", linestyle=":")
        ax.axhline(TARGETS[1.0], color="C3", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{name} ({getattr(PANEL[name], 'kind', '')})", fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("feedback events", fontsize=8)
    axes.flat[0].set_ylabel("win rate vs base (held out)")
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("One night of plain `tuneloop train`: win rate against the base, per simulated judge", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict], yields: dict, rates: dict) -> None:
    print("\njudge          kind          base  share events  yield  pairs thumbs  recipe   win rate (95% CI)      W/T/L     min")
    for r in sorted(results, key=lambda r: (list(PANEL).index(r["judge"]), -r["share"], r["events"])):
        win, data = r.get("win") or {}, r.get("data") or {}
        base = rates.get(r["judge"])
        rate = (f"{win['rate']:.3f} ({win['low']:.2f}-{win['high']:.2f})" if win.get("rate") is not None
                else (r.get("message") or "")[:40])
        print(f"{r['judge']:14s} {getattr(PANEL[r['judge']], 'kind', 'length'):12s} "
              f"{'' if base is None else f'{base:.2f}':>5s} {r['share']:5.1f} {r['events']:6d} "
              f"{r['yield'] or 0:6.2f} {data.get('pairs_train', 0):6d} {data.get('thumbs_train', 0):6d}  "
              f"{r.get('recipe') or '-':8s} {rate:22s} {win.get('wins', '')}/{win.get('ties', '')}/{win.get('losses', '')}"
              f"  {r['minutes']:5.1f}")
    for share, target in TARGETS.items():
        at = [r for r in results if r["share"] == share and r["events"] == 300 and (r.get("win") or {}).get("rate") is not None]
        if at:
            worst = min(at, key=lambda r: r["win"]["rate"])
            print(f"worst judge after 300 events at A/B share {share:g}: {worst['judge']} {worst['win']['rate']:.3f} "
                  f"(target >= {target:g}: {'met' if worst['win']['rate'] >= target else 'NOT met'}); "
                  f"longest night {max(r['minutes'] for r in at):.1f} min (target < {TARGET_MINUTES:g})")
    del yields


def main() -> None:
    args = parse_args()
    model = model_path(args.model)
    shares, checkpoints, judges = _csv(args.shares, float), _csv(args.events, int), _csv(args.judges)
    unknown = [name for name in judges if name not in PANEL]
    if unknown:
        raise SystemExit(f"unknown judges {unknown}: the panel has {', '.join(PANEL)}")
    root = OUT / "learning" / args.strategy
    root.mkdir(parents=True, exist_ok=True)
    results_file = root / "results.json"
    results = load_results(results_file)
    rates: dict[str, float | None] = {}
    for share in shares:
        folder = root / f"share-{share:g}"
        folder.mkdir(exist_ok=True)
        record(folder, share, checkpoints, args, model)
        for events in checkpoints:
            transcript = load_transcript(folder, events)
            for name in judges:
                rates.setdefault(name, base_rate(transcript, PANEL[name]))
                found = pair_yield(transcript, PANEL[name])
                print(f"share {share:g}, {events} events, {name}: pair yield {found['yield'] or 0:.2f} "
                      f"({found['winners']} of {found['choices']}), base rate {rates[name]}", flush=True)
            if args.yields_only:
                continue
            for name in judges:
                done = [r for r in results if (r["share"], r["events"], r["judge"], r.get("label", "defaults"))
                        == (share, events, name, args.label)]
                if done and not args.again:
                    continue
                outcome = night(folder, share, events, name, args, model)
                results = [r for r in results if r not in done] + [outcome]
                results_file.write_text(json.dumps(results, indent=1), encoding="utf-8")
                print(json.dumps({k: outcome.get(k) for k in ("judge", "share", "events", "recipe", "win", "minutes")}),
                      flush=True)
    shown = [r for r in results if r.get("label", "defaults") == args.label]
    if shown:
        plot(shown, root / f"learning-{args.label}.png")
        table(shown, {}, rates)
        print(f"plot: {root / f'learning-{args.label}.png'}")


if __name__ == "__main__":
    main()
