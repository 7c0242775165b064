"""The whole loop on the embedded model: simulated users' feedback in, a better release out.

  1. start the real service (uvicorn subprocess) on a fresh data dir and SQLite file under
     bench/out/, with every widget turn an A/B pair (TUNELOOP_AB_SHARE=1.0);
  2. `trainer.simulate.run`: N users chat over HTTP and choose between the two answers as
     the judge prefers (default `trainer.judges:concise`: the clearly shorter answer);
  3. stop the service and run one nightly job in-process (`trainer.nightly.main`), timed;
  4. print the pairs, the run's duration, held-out pair accuracy, and the candidate's win
     rate against the base release under the same judge, with its 95% (Wilson) interval.

The win rate comes from the nightly job's own evaluation: `trainer.datasets.split_rows`
holds out whole prompt groups (a prompt and its near copies), and `trainer.nightly`
answers only those held-out prompts with the candidate and the active release (greedy),
so the figure is measured on prompts the candidate was not trained on.

    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/loop.py                          # full size (30+ min)
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/loop.py --events 40 --users 4 --max-tokens 48
    HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python bench/loop.py --reuse bench/out/loop-XXXX --learning-rate 2e-4

`--reuse DIR` trains again on the feedback a previous run collected (its snapshot taken
before training), to compare training knobs without simulating users again.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub, whatever the caller set
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench._service import OUT, model_path, service  # noqa: E402

TARGET_WIN_RATE, TARGET_MINUTES = 0.65, 20.0
SNAPSHOT = "feedback-before-training.db"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="'tiny', a local model folder, or (default) the embedded SmolLM2-135M-Instruct")
    data = parser.add_argument_group("feedback")
    data.add_argument("--users", type=int, default=8, help="simulated users chatting at once")
    data.add_argument("--events", type=int, default=300, help="chat turns, each an A/B pair with a choice")
    data.add_argument("--judge", default="trainer.judges:concise", help="module:function for users and evaluation")
    data.add_argument("--max-tokens", type=int, default=96, help="answer cap when serving and when evaluating")
    data.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the A/B answers")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--threads", type=int, default=0, help="torch threads in the service (0: torch's default)")
    data.add_argument("--train-threads", type=int, default=0, help="torch threads for the nightly job (0: default)")
    data.add_argument("--reuse", type=Path, metavar="DIR", help="skip the users: train on DIR's collected feedback")
    dpo = parser.add_argument_group("training (trainer.config.NightlyConfig)")
    dpo.add_argument("--recipe", default="dpo", help="dpo, kto, sft+dpo, rm+grpo, rm+ppo or auto")
    dpo.add_argument("--reward-model", default="auto", help="auto, always or never (the reward model's judge and accuracy)")
    dpo.add_argument("--rl-steps", type=int, default=60, help="GRPO/PPO steps")
    dpo.add_argument("--num-generations", type=int, default=4, help="GRPO answers per prompt")
    dpo.add_argument("--kl-coef", type=float, default=0.05, help="GRPO beta / PPO KL weight")
    dpo.add_argument("--learning-rate", type=float, default=1e-4)
    dpo.add_argument("--epochs", type=float, default=2.0)
    dpo.add_argument("--beta", type=float, default=0.1)
    dpo.add_argument("--lora-r", type=int, default=16)
    dpo.add_argument("--lora-alpha", type=int, help="default: 2 x lora r")
    dpo.add_argument("--batch-size", type=int, default=4, help="per-device train batch size")
    dpo.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    dpo.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: epochs decide)")
    dpo.add_argument("--min-pairs", type=int, default=8, help="fewest pairs worth a run")
    dpo.add_argument("--holdout-fraction", type=float, default=0.2, help="share of pairs held out (by prompt)")
    dpo.add_argument("--eval-max-tokens", type=int, help="answer cap when evaluating (default: --max-tokens)")
    dpo.add_argument("--eval-prompts", type=int, default=200, help="held-out prompts answered by both releases")
    return parser.parse_args()


# ---------------------------------------------------------------- 1-2: users give feedback


def collect(out: Path, model: str, args: argparse.Namespace) -> dict:
    from trainer import simulate
    from trainer.judges import load_judge

    settings = {"AB_SHARE": "1.0", "MAX_TOKENS": args.max_tokens, "TEMPERATURE": args.temperature}
    with service(out, model, settings, args.threads) as url:
        started = time.perf_counter()
        stats = asyncio.run(simulate.run(url, args.users, args.events, load_judge(args.judge), args.seed))
        seconds = time.perf_counter() - started
    shutil.copy(out / "tuneloop.db", out / SNAPSHOT)  # the service has stopped: the file is whole
    return {**stats, "seconds": seconds}


def reuse(out: Path, source: Path) -> dict:
    shutil.copy(source / SNAPSHOT, out / "tuneloop.db")
    shutil.copy(source / SNAPSHOT, out / SNAPSHOT)
    return {"reused": str(source)}


def choices(database_url: str) -> dict[str, int]:
    """A/B choices in the store by verdict: ties make no training pair."""
    from sqlalchemy import func
    from sqlmodel import Session, select

    from store.db import make_engine
    from store.models import Comparison

    engine = make_engine(database_url)
    with Session(engine) as session:
        rows = session.exec(select(Comparison.winner, func.count()).group_by(Comparison.winner)).all()
    engine.dispose()
    return {winner.value: count for winner, count in rows}


# ---------------------------------------------------------------- 3: the nightly job


def nightly_config(args: argparse.Namespace):  # noqa: ANN201
    from trainer.config import NightlyConfig

    return NightlyConfig.from_flags(
        judge=args.judge, eval_prompts=args.eval_prompts, eval_max_tokens=args.eval_max_tokens or args.max_tokens,
        learning_rate=args.learning_rate, num_train_epochs=args.epochs, beta=args.beta,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha or 2 * args.lora_r,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        max_steps=args.max_steps, min_pairs=args.min_pairs, holdout_fraction=args.holdout_fraction,
        seed=args.seed, recipe=args.recipe, reward_model=args.reward_model, rl_max_steps=args.rl_steps,
        num_generations=args.num_generations, kl_coef=args.kl_coef, max_completion_length=args.max_tokens,
    )


def train(out: Path, model: str, args: argparse.Namespace):  # noqa: ANN201
    from trainer.gate import GateThresholds
    from trainer.nightly import Environment, main

    from plugins.manager import load_plugins
    from tuneloop.settings import Settings
    from tuneloop.wiring import plugin_settings

    # As `tuneloop train` does: the plugins' output checks and reward functions.
    plugins = load_plugins(plugin_settings(Settings(data_dir=out)))
    # The bench measures rather than gates: a candidate is written whatever its figures.
    environment = Environment(f"sqlite:///{out / 'tuneloop.db'}", out, model, gate=GateThresholds.open(),
                              device="cpu", output_check=plugins, reward_functions=plugins.reward_functions)
    started = time.perf_counter()
    result = main(nightly_config(args), environment)
    return result, time.perf_counter() - started


# ---------------------------------------------------------------- 4: report


def plot(win: dict, pair_accuracy: float | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    rate = win["rate"]
    ax.errorbar([0], [rate], yerr=[[rate - win["low"]], [win["high"] - rate]], fmt="o", capsize=8, color="C0",
                label=f"win rate {rate:.2f} (95% CI {win['low']:.2f}-{win['high']:.2f}, n={win['n']})")
    if pair_accuracy is not None:
        ax.plot([1], [pair_accuracy], "s", color="C2", label=f"held-out pair accuracy {pair_accuracy:.2f}")
    ax.axhline(0.5, color="grey", linestyle=":", label="no change (0.5)")
    ax.axhline(TARGET_WIN_RATE, color="C3", linestyle="--", label=f"target ({TARGET_WIN_RATE:g})")
    ax.set_xticks([0, 1], ["candidate vs base\n(held-out prompts)", "pair accuracy\n(held-out pairs)"])
    ax.set_xlim(-0.6, 1.6)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out: Path, feedback: dict, verdicts: dict, result, seconds: float, args: argparse.Namespace,  # noqa: ANN001
           model: str) -> None:
    print()
    if "reused" in feedback:
        print(f"feedback: reused from {feedback['reused']}")
    else:
        print(f"feedback: {feedback.get('turns', 0)} turns by {args.users} users in {feedback['seconds']:.0f} s, "
              f"{feedback.get('comparisons', 0)} A/B choices, {feedback.get('errors', 0)} errors")
    print(f"A/B choices stored: {verdicts} (ties make no pair)")
    print(f"nightly run: {result.status.value} in {seconds / 60:.1f} min "
          f"(target < {TARGET_MINUTES:g} min: {'met' if seconds < TARGET_MINUTES * 60 else 'NOT met'}): {result.message}")
    if not result.release:
        return
    body = result.report
    data, evaluation = body["data"], body["evaluation"]
    print(f"recipe {body['recipe']}: {body['recipe_reason']}")
    print(f"pairs: {data['train']} trained, {data['held_out']} held out ({data['new_pairs']} new); "
          f"{data['prompts_train']} logged prompts")
    for name, stage in body["training"]["stages"].items():
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in stage["summary"].items()))
    accuracy = evaluation["pair_accuracy"]
    print(f"held-out pair accuracy (implicit reward): {accuracy:.3f}" if accuracy is not None
          else "held-out pair accuracy: n/a")
    if body.get("reward_model"):
        print(f"reward model held-out pair accuracy: {body['reward_model']['pair_accuracy']:.3f}")
    win = evaluation["win_rate"]
    if win:
        met = "met" if win["rate"] >= TARGET_WIN_RATE else "NOT met"
        print(f"win rate vs base on {win['n']} held-out prompts ({win['judge']}): {win['rate']:.3f} "
              f"[95% CI {win['low']:.3f}-{win['high']:.3f}] = {win['wins']} wins, {win['ties']} ties, "
              f"{win['losses']} losses (target >= {TARGET_WIN_RATE:g}: {met})")
        png = out / "win_rate.png"
        plot(win, accuracy, png, f"{result.release} ({body['recipe']}): lr {args.learning_rate:g}, epochs {args.epochs:g}, "
                                 f"beta {args.beta:g}, r {args.lora_r}")
        print(f"plot: {png}")
    print(f"report: {out / 'releases' / result.release / 'report.html'}")
    print(f"model {model}; max_tokens {args.max_tokens} (evaluation {args.eval_max_tokens or args.max_tokens}); lr {args.learning_rate:g}, epochs {args.epochs:g}, "
          f"beta {args.beta:g}, lora r {args.lora_r} alpha {args.lora_alpha or 2 * args.lora_r}, "
          f"batch {args.batch_size}x{args.grad_accum}; torch threads: service {args.threads or 'default'}, training {args.train_threads or 'default'}; {os.cpu_count()} cpus")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request drowns the progress bar
    load_before = os.getloadavg()[0]
    if args.train_threads:
        import torch

        torch.set_num_threads(args.train_threads)
    model = model_path(args.model)
    out = OUT / f"loop-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True)
    print(f"data dir {out}", flush=True)
    feedback = reuse(out, args.reuse) if args.reuse else collect(out, model, args)
    verdicts = choices(f"sqlite:///{out / 'tuneloop.db'}")
    result, seconds = train(out, model, args)
    report(out, feedback, verdicts, result, seconds, args, model)
    print(f"1-min load average at start: {load_before:.2f}")


if __name__ == "__main__":
    main()
