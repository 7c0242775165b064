"""The night's candidate against the active release: the evidence (trainer/evaluate.py) on
prompts it never trained on, and which of it decides the gate."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from store.artifacts import REWARD_FOLDER
from trainer.config import NightlyConfig
from trainer.curation import golden_set
from trainer.data import KINDS, TrainingData
from trainer.datasets import unasked, with_system
from trainer.evaluate import evaluate_release
from trainer.gate import GateThresholds
from trainer.implicit import pair_accuracy
from trainer.judges import load_judge
from trainer.recipes import NEEDS_REWARD_MODEL, Choice
from trainer.reward_model import RewardModel

if TYPE_CHECKING:
    from trainer.nightly import Environment

log = logging.getLogger("tuneloop.trainer")
REWARD_JUDGE = "reward model"  # the name the reward model judges under in the report


def assess(config: NightlyConfig, environment: Environment, data: TrainingData, active_adapter: str | None,
           adapter_dir: Path, folder: Path, reward: dict | None, choice: Choice,
           instructions: tuple[str | None, str | None] = (None, None)) -> tuple[dict, dict]:
    """The report's evaluation section and the figures the gate checks; `instructions` are the
    candidate's and the active release's style instructions (Release.instruction)."""
    device = torch_device(environment.device)
    implicit = pair_accuracy(environment.model_path, adapter_dir, active_adapter, data.held_out("dpo"),
                             device=device)
    judges = {spec: load_judge(spec) for spec in judge_specs(config.pipeline.judge)}
    if reward:
        judges[REWARD_JUDGE] = RewardModel.load(environment.model_path, folder / REWARD_FOLDER, device=device).judge
    # A policy optimised against the reward model would pass that judge whatever users think of it:
    # after rm+grpo / rm+ppo it is reported, never deciding (see deciding_evidence).
    independent = [name for name in judges if not (name == REWARD_JUDGE and choice.recipe in NEEDS_REWARD_MODEL)]
    prompts, sources = evaluation_prompts(data, config.pipeline.eval_prompts, environment.system_prompt)
    log.info("evaluating on %d held-out prompts (%s)", len(prompts),
             ", ".join(f"{n} {where}" for where, n in sources.items()))
    result = evaluate_release(environment.model_path, str(adapter_dir), active_adapter, prompts,
                              golden_set(), judges, output_check=environment.output_check,
                              system_prompt=environment.system_prompt,
                              max_tokens=config.pipeline.eval_max_tokens or environment.max_tokens,
                              seed=config.pipeline.seed_eval, device=environment.device,
                              cache_dir=environment.data_dir / "eval-cache",
                              primary=independent[0] if independent else None,
                              answer_engine=environment.answer_engine, candidate_instruction=instructions[0],
                              active_instruction=instructions[1]).as_dict()
    evaluation = {**result, "pair_accuracy": implicit, "prompt_sources": sources,
                  "reward_pair_accuracy": reward["pair_accuracy"] if reward else None}
    return evaluation, _gate_metrics(evaluation)


def deciding_evidence(gate: GateThresholds, choice: Choice, evaluation: dict) -> tuple[GateThresholds, str]:
    """Which evidence carries the gate's decision, in words for the report, and the thresholds it
    runs on: the primary judge's win rate; after rm+grpo / rm+ppo without an independent judge,
    held-out human preference pairs instead (the reward model the policy chased may not pass it)."""
    primary = evaluation.get("primary_judge")
    if primary:
        return gate, f"the win rate under {primary} on {evaluation['win_rates'][primary]['n']} held-out prompts"
    if choice.recipe in NEEDS_REWARD_MODEL:
        required = tuple(key for key in gate.required if key != "win_rate") + ("pair_accuracy",)
        return (replace(gate, required=required),
                "held-out human preference pairs: the reward model this policy was optimised against is "
                "reported but does not judge it (give --judge for an independent win rate)")
    return gate, "no judge: give --judge, or collect enough pairs for a reward model"


def judge_specs(judge: str | None) -> list[str]:
    """`--judge a:b,c:d`: every judge is reported, the first decides the gate."""
    return [spec.strip() for spec in (judge or "").split(",") if spec.strip()]


def _gate_metrics(evaluation: dict) -> dict:
    primary = evaluation.get("win_rates", {}).get(evaluation.get("primary_judge") or "")
    golden, violations = evaluation.get("golden") or {}, evaluation.get("violations") or {}
    return {
        "pair_accuracy": evaluation["pair_accuracy"],
        "reward_pair_accuracy": evaluation["reward_pair_accuracy"],
        "win_rate": primary["rate"] if primary and primary.get("n") else None,
        "win_rate_low": primary["low"] if primary and primary.get("n") else None,
        "golden_drop": golden.get("rouge_l_drop"),
        "violation_increase": violations.get("increase"),
        "length_drift": (evaluation.get("length") or {}).get("drift"),
        "kl": (evaluation.get("kl") or {}).get("per_token"),
    }


def _held_out_prompts(data: TrainingData, limit: int, system_prompt: str) -> list[list[dict]]:
    """Distinct held-out prompts, pairs' first (the judged kind), as chat messages with a system turn."""
    return [with_system(messages, system_prompt) for messages, _ in data.distinct_prompts(held_out=True)][:limit]


def evaluation_prompts(data: TrainingData, limit: int, system_prompt: str) -> tuple[list[list[dict]], dict]:
    """Up to `limit` prompts the candidate never trained on: the users' own held-out prompts,
    then, when those are fewer (a young deployment), bundled prompts that no user has asked
    (nor anything near them), so the win rate's interval is not as wide as a handful makes it."""
    from trainer.simulate import load_prompts

    prompts = _held_out_prompts(data, limit, system_prompt)
    sources = {"held out from users": len(prompts)}
    if len(prompts) < limit:
        asked = [row.prompt_text for kind in KINDS for split in (data.train(kind), data.held_out(kind)) for row in split]
        unseen = unasked([item["prompt"] for item in load_prompts()], asked)
        extra = [with_system([{"role": "user", "content": text}], system_prompt) for text in unseen]
        prompts += extra[: limit - len(prompts)]
        sources["bundled, never asked"] = len(prompts) - sources["held out from users"]
    return prompts, sources


def torch_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
