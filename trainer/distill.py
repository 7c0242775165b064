"""The `distill` recipe: DPO on pairs the active release writes itself, each a training prompt
answered under a contrast style users chose (trainer/styles.py) against the same prompt
answered plainly, beside the night's human preference pairs (whose held-out ones stop it).

`prepare` runs in the main process before training (a distributed launch's other processes
read what it wrote) and is kept in the run's folder, so `--resume` trains on the same pairs.
A pair with an answer cut off at the serving cap is left out: it would teach stopping mid-sentence.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from feedback.export import Row
from serving.engine import SamplingParams
from trainer import answers, styles
from trainer.config import NightlyConfig
from trainer.data import TrainingData, row_from_json, row_json
from trainer.datasets import with_system
from trainer.recipes import chosen_styles

log = logging.getLogger("tuneloop.trainer")
SAVED = "distilled.json"


def prepare(config: NightlyConfig, environment, data: TrainingData, start_adapter: str | None,  # noqa: ANN001
            folder: Path) -> dict:
    """Write (or, resuming, keep) the distilled answers; returns their summary for the report."""
    path = folder / SAVED
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["summary"]
    picked = chosen_styles(config, data)
    prompts = data.drawn_prompts(config.training.seed, config.pipeline.distill_prompts)
    assigned = styles.assign([messages for messages, _ in prompts], picked, config.training.seed)
    styled = [styles.styled_messages(prompt, style, environment.system_prompt) for prompt, style in assigned]
    plain = [with_system(prompt, environment.system_prompt) for prompt, _ in assigned]
    params = SamplingParams(temperature=config.pipeline.distill_temperature, max_tokens=environment.max_tokens,
                            seed=config.training.seed)
    local = answers.in_process(environment.model_path, _device(environment.device))
    completions = asyncio.run(answers.sample(environment.answer_engine or local, local, start_adapter,
                                             [*styled, *plain], params, "Answering with and without the chosen styles"))
    rows, cut = [], 0
    for (prompt, style), (_, text), chosen, rejected in zip(assigned, prompts, completions[:len(styled)],
                                                           completions[len(styled):], strict=True):
        if any(c.finish_reason != "stop" or not c.text.strip() for c in (chosen, rejected)):
            cut += 1
            continue
        rows.append(styles.contrast_pair(prompt, text, style, chosen.text.strip(), rejected.text.strip()))
    summary = {"styles": [style.describe() for style in picked], "prompts": len(styled), "kept": len(rows),
               "cut_at_cap": cut, "per_style": {s.name: sum(r.source == f"distilled:{s.name}" for r in rows)
                                                for s in picked}}
    log.info("distilled %d pairs in %s (%d with an answer cut off at the cap left out)", len(rows),
             ", ".join(style.name for style in picked), cut)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"summary": summary, "rows": [row_json(row) for row in rows]}, ensure_ascii=False),
                    encoding="utf-8")
    return summary


def load(folder: Path) -> list[Row]:
    body = json.loads((folder / SAVED).read_text(encoding="utf-8"))
    return [row_from_json(row) for row in body["rows"]]


def _device(device: str) -> str:
    from trainer.assessment import torch_device

    return torch_device(device)
