"""The `distill` recipe: SFT on the active release's own answers written under the contrast
styles users chose (trainer/styles.py), with the instruction removed, plus every answer people
liked (chosen sides, thumbs up, 4-5 stars) and reviewers' corrections.

`prepare` runs in the main process before training (a distributed launch's other processes
read what it wrote) and is kept in the run's folder, so `--resume` trains on the same answers.
Answers cut off at the serving cap are left out: SFT would teach the model to stop mid-sentence.
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
    prompts = data.training_prompts(config.pipeline.distill_prompts, config.training.seed)
    assigned = styles.assign([messages for messages, _ in prompts], picked, config.training.seed)
    requests = [styles.styled_messages(prompt, style, environment.system_prompt) for prompt, style in assigned]
    params = SamplingParams(temperature=config.pipeline.distill_temperature, max_tokens=environment.max_tokens,
                            seed=config.training.seed)
    local = answers.in_process(environment.model_path, _device(environment.device))
    completions = asyncio.run(answers.sample(environment.answer_engine or local, local, start_adapter, requests,
                                             params, "Answering in the chosen styles"))
    rows, cut = [], 0
    for (prompt, style), (_, text), completion in zip(assigned, prompts, completions, strict=True):
        if completion.finish_reason != "stop" or not completion.text.strip():
            cut += 1
            continue
        rows.append(styles.distilled_row(prompt, text, style, completion.text.strip()))
    summary = {"styles": [style.describe() for style in picked], "prompts": len(requests), "kept": len(rows),
               "cut_at_cap": cut, "per_style": {s.name: sum(r.source == f"distilled:{s.name}" for r in rows)
                                                for s in picked}}
    log.info("distilled %d answers in %s (%d cut off at the cap left out)", len(rows),
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
