"""The trainer's overhead: a DPO run through the nightly job's training function against plain TRL.

Both sides train the same LoRA adapter (rank, alpha, modules from NightlyConfig) on the
same crafted preference pairs (a prompt, a short chosen answer, a long rejected one, as
conversational TRL rows), with the same model, batch size, steps, learning rate, beta and
max length, evaluate on the same held-out pairs and save the adapter, in this process,
alternating which goes first round by round:

- tuneloop: `trainer.dpo.train(NightlyConfig(...), model, None, rows, held_out, folder)`,
  what the nightly job calls for its DPO stage;
- plain TRL: the few lines of a TRL example: `AutoModelForCausalLM` + `get_peft_model`,
  `DPOConfig`, `DPOTrainer(...).train()`, `evaluate()`, `save_pretrained`.

For each run it times the whole call and, inside it, `DPOTrainer.train()` alone (a timing
wrapper on the class, the same for both), so training throughput (pairs/s in `train()`)
and set-up overhead (model load, tokenizing, evaluation, saving) show separately. Target:
tuneloop within 10% of plain TRL (ratio >= 0.90).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/trainer.py                        # embedded SmolLM2-135M, 12 steps
    HF_HUB_OFFLINE=1 .venv/bin/python bench/trainer.py --model tiny --steps 20 --rounds 3
    HF_HUB_OFFLINE=1 .venv/bin/python bench/trainer.py --threads 1 --batch-size 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub, whatever the caller set
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

TARGET_RATIO = 0.90
TOPICS = ["boil an egg", "reverse a list in python", "plant tomatoes", "write a resignation letter",
          "convert miles to km", "train a puppy to sit", "explain photosynthesis", "budget for a holiday",
          "fix a leaking tap", "learn spanish verbs", "summarise the french revolution", "speed up a sql query",
          "brew green tea", "back up a laptop", "stretch after running", "read a bus timetable"]
ASKS = ["How do I {}?", "What is the quickest way to {}?", "Can you tell me how to {}?", "Explain how to {}."]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M), 'tiny' or a local folder")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step (per-device batch)")
    parser.add_argument("--pairs", type=int, default=64, help="training pairs crafted")
    parser.add_argument("--held-out", type=int, default=8, help="held-out pairs evaluated after training")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating which goes first")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    return parser.parse_args()


def crafted_pairs(count: int, offset: int = 0) -> list[dict]:
    """Conversational DPO rows: the short answer chosen over a rambling one."""
    rows = []
    for number in range(offset, offset + count):
        topic, ask = TOPICS[number % len(TOPICS)], ASKS[(number // len(TOPICS)) % len(ASKS)]
        short = f"Here is how to {topic}: follow the usual steps."
        long = (f"There are a great many ways to {topic}, and people disagree about them. " * 3
                + "Let me walk you through the history first, then the options, then my own view.")
        rows.append({"prompt": [{"role": "user", "content": ask.format(topic) + f" (#{number})"}],
                     "chosen": [{"role": "assistant", "content": short}],
                     "rejected": [{"role": "assistant", "content": long}]})
    return rows


class TrainTimer:
    """Times every `DPOTrainer.train()` call while active (both sides go through it)."""

    def __init__(self):
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []  # this process's CPU time, all threads: less moved by other work

    def __enter__(self) -> Self:
        from trl import DPOTrainer

        self._class, self._original = DPOTrainer, DPOTrainer.__dict__.get("train")
        inherited = DPOTrainer.train

        def timed(trainer, *args, **kwargs):
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return inherited(trainer, *args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - started)
                self.cpu_seconds.append(time.process_time() - cpu)

        DPOTrainer.train = timed
        return self

    def __exit__(self, *exc) -> None:
        if self._original is None:
            del self._class.train
        else:
            self._class.train = self._original


def nightly_config(args: argparse.Namespace, output_dir: str):
    from trainer.config import NightlyConfig

    return NightlyConfig.from_flags(output_dir=output_dir, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                                    per_device_eval_batch_size=args.batch_size, disable_tqdm=True)


def run_tuneloop(args: argparse.Namespace, model: str, train_rows: list[dict], held_out: list[dict]) -> None:
    from feedback.export import Row
    from trainer import dpo

    now = datetime.now(UTC)

    def rows(data: list[dict]) -> list[Row]:
        return [Row(d, "comparison", d["prompt"][0]["content"], now - timedelta(seconds=i)) for i, d in enumerate(data)]

    with tempfile.TemporaryDirectory(prefix="bench-tuneloop-") as folder:
        config = nightly_config(args, str(Path(folder) / "checkpoints"))
        dpo.train(config, model, None, rows(train_rows), rows(held_out), Path(folder) / "dpo")


def run_plain(args: argparse.Namespace, model: str, train_rows: list[dict], held_out: list[dict]) -> None:
    """What a TRL user writes, with the nightly job's knobs copied over."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    with tempfile.TemporaryDirectory(prefix="bench-plain-") as folder:
        knobs = nightly_config(args, folder)  # the same values, not the same code
        tokenizer = AutoTokenizer.from_pretrained(model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if knobs.bf16 else torch.float32)
        policy = get_peft_model(policy, LoraConfig(r=knobs.lora_r, lora_alpha=knobs.lora_alpha,
                                                   lora_dropout=knobs.lora_dropout, task_type="CAUSAL_LM",
                                                   target_modules=list(knobs.lora_target_modules)))
        config = DPOConfig(output_dir=folder, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                           per_device_eval_batch_size=args.batch_size, learning_rate=knobs.learning_rate,
                           beta=knobs.beta, max_length=knobs.max_length, bf16=knobs.bf16, logging_steps=1,
                           gradient_checkpointing=False, save_strategy="no", report_to="none", disable_tqdm=True)
        trainer = DPOTrainer(model=policy, args=config, train_dataset=Dataset.from_list(train_rows),
                             eval_dataset=Dataset.from_list(held_out), processing_class=tokenizer)
        trainer.train()
        trainer.evaluate()
        trainer.model.save_pretrained(Path(folder) / "adapter")


SIDES = {"tuneloop": run_tuneloop, "plain TRL": run_plain}


def measure(side: str, args: argparse.Namespace, model: str, train_rows, held_out) -> dict:
    with TrainTimer() as timer, contextlib.redirect_stdout(io.StringIO()):  # the trainers print every step
        started = time.perf_counter()
        SIDES[side](args, model, train_rows, held_out)
        whole = time.perf_counter() - started
    (train,), (train_cpu,) = timer.seconds, timer.cpu_seconds
    pairs = args.steps * args.batch_size
    return {"side": side, "whole_s": whole, "train_s": train, "other_s": whole - train, "train_cpu_s": train_cpu,
            "train_pairs_s": pairs / train, "whole_pairs_s": pairs / whole}


def main() -> None:
    args = parse_args()
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    from bench._service import model_path

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = model_path(None if args.model == "embedded" else args.model)
    train_rows, held_out = crafted_pairs(args.pairs), crafted_pairs(args.held_out, offset=args.pairs)
    pairs = args.steps * args.batch_size
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}")
    print(f"model {model}\n{args.steps} steps x {args.batch_size} pairs = {pairs} pairs trained "
          f"({args.pairs} crafted), {args.held_out} held out; {args.rounds} rounds, alternating order")

    warm = argparse.Namespace(**{**vars(args), "steps": 1})
    measure("plain TRL", warm, model, train_rows, held_out)  # imports, kernels, page cache: not timed

    results = []
    print(f"\n{'round':<7}{'side':<11}{'whole s':>9}{'train() s':>11}{'other s':>9}{'train() cpu s':>15}"
          f"{'pairs/s train()':>17}{'pairs/s whole':>15}")
    for number in range(1, args.rounds + 1):
        order = list(SIDES) if number % 2 else list(reversed(SIDES))
        for side in order:
            r = measure(side, args, model, train_rows, held_out)
            results.append(r)
            print(f"{number:<7}{side:<11}{r['whole_s']:>9.1f}{r['train_s']:>11.1f}{r['other_s']:>9.1f}"
                  f"{r['train_cpu_s']:>15.1f}{r['train_pairs_s']:>17.2f}{r['whole_pairs_s']:>15.2f}")

    medians = {side: {key: statistics.median(r[key] for r in results if r["side"] == side)
                      for key in ("whole_s", "train_s", "other_s", "train_cpu_s", "train_pairs_s", "whole_pairs_s")}
               for side in SIDES}
    print(f"{'median':<7}", end="")
    for index, side in enumerate(SIDES):
        m = medians[side]
        print(f"{'' if index == 0 else ' ' * 7}{side:<11}{m['whole_s']:>9.1f}{m['train_s']:>11.1f}"
              f"{m['other_s']:>9.1f}{m['train_cpu_s']:>15.1f}{m['train_pairs_s']:>17.2f}{m['whole_pairs_s']:>15.2f}")
    ours, plain = medians["tuneloop"], medians["plain TRL"]
    train_ratio = ours["train_pairs_s"] / plain["train_pairs_s"]
    whole_ratio = ours["whole_pairs_s"] / plain["whole_pairs_s"]
    verdict = "meets" if min(train_ratio, whole_ratio) >= TARGET_RATIO else "misses"
    print(f"\ntuneloop / plain TRL, pairs/s: train() {train_ratio:.3f}, whole call {whole_ratio:.3f}; "
          f"set-up, evaluation and saving {ours['other_s']:.1f} s against {plain['other_s']:.1f} s")
    print(f"CPU time in train(), tuneloop / plain TRL: {ours['train_cpu_s'] / plain['train_cpu_s']:.3f} "
          "(other work on the machine moves wall time more than CPU time)")
    print(f"target >= {TARGET_RATIO:.2f} -> {verdict} it")


if __name__ == "__main__":
    main()
