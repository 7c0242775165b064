"""The `distill` recipe: DPO on pairs the active release writes itself, each a training prompt
answered under a contrast style users chose (trainer/styles.py) against the same prompt
answered plainly, beside the night's human preference pairs (whose held-out ones stop it).

`prepare` runs in the main process before training (a distributed launch's other processes
read what it wrote) and is kept in the run's folder, so `--resume` trains on the same pairs.
A pair with an answer cut off at the serving cap is left out: it would teach stopping mid-sentence.
So is a pair whose styled answer is longer or shorter than the plain one by more than the gate's
length drift: DPO learns whatever tells chosen from rejected, and under "question" and "simple"
SmolLM2-135M wrote shorter answers, so the pairs taught brevity as much as the style. Its
candidate's answers shrank by 59% and the gate refused it (bench/README.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from pathlib import Path

from feedback.export import Row
from serving.engine import Completion, SamplingParams
from trainer import answers, styles
from trainer.config import NightlyConfig
from trainer.data import TrainingData, row_from_json, row_json
from trainer.datasets import with_system
from trainer.judges import words
from trainer.recipes import chosen_styles

log = logging.getLogger("tuneloop.trainer")
SAVED = "distilled.json"
LEFT_OUT = ("cut_at_cap", "length_changed")


def prepare(config: NightlyConfig, environment, data: TrainingData, start_adapter: str | None,  # noqa: ANN001
            folder: Path) -> dict:
    """Write (or, resuming, keep) the distilled answers; returns their summary for the report."""
    path = folder / SAVED
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["summary"]
    picked = chosen_styles(config, data)
    prompts = sorted(data.distinct_prompts(), key=lambda prompt: repr(prompt[0]))
    random.Random(config.training.seed).shuffle(prompts)
    prompts = prompts[:config.pipeline.distill_prompts]
    assigned = styles.assign([messages for messages, _ in prompts], picked, config.training.seed)
    styled = [styles.styled_messages(prompt, style, environment.system_prompt) for prompt, style in assigned]
    plain = [with_system(prompt, environment.system_prompt) for prompt, _ in assigned]
    params = SamplingParams(temperature=config.pipeline.distill_temperature, max_tokens=environment.max_tokens,
                            seed=config.training.seed)
    local = answers.in_process(environment.model_path, _device(environment.device))
    completions = asyncio.run(answers.sample(environment.answer_engine or local, local, start_adapter,
                                             [*styled, *plain], params, "Answering with and without the chosen styles"))
    rows, left_out = [], Counter()
    max_drift = environment.gate.max_length_drift
    for (prompt, style), (_, text), chosen, rejected in zip(assigned, prompts, completions[:len(styled)],
                                                           completions[len(styled):], strict=True):
        reason = left_out_because(chosen, rejected, max_drift)
        if reason:
            left_out[reason] += 1
        else:
            rows.append(styles.contrast_pair(prompt, text, style, chosen.text.strip(), rejected.text.strip()))
    summary = {"styles": [style.describe() for style in picked], "prompts": len(styled), "kept": len(rows),
               **{reason: left_out[reason] for reason in LEFT_OUT},
               "per_style": {s.name: sum(r.source == f"distilled:{s.name}" for r in rows) for s in picked}}
    log.info("distilled %d pairs in %s (left out: %d with an answer cut off at the cap, %d whose styled answer's "
             "length differs by more than ±%s)", len(rows), ", ".join(style.name for style in picked),
             left_out["cut_at_cap"], left_out["length_changed"], max_drift)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"summary": summary, "rows": [row_json(row) for row in rows]}, ensure_ascii=False),
                    encoding="utf-8")
    return summary


def left_out_because(chosen: Completion, rejected: Completion, max_length_drift: float) -> str | None:
    """Why a distilled pair is not trained on (one of LEFT_OUT), or None (see the module docstring)."""
    if any(c.finish_reason != "stop" or not c.text.strip() for c in (chosen, rejected)):
        return "cut_at_cap"
    if abs(words(chosen.text) / max(words(rejected.text), 1) - 1) > max_length_drift:
        return "length_changed"
    return None


def load(folder: Path) -> list[Row]:
    body = json.loads((folder / SAVED).read_text(encoding="utf-8"))
    return [row_from_json(row) for row in body["rows"]]


def _device(device: str) -> str:
    from trainer.assessment import torch_device

    return torch_device(device)
