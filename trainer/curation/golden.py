"""Replay of earlier rows against forgetting, and the golden set kept out of training."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from feedback.export import Row
from trainer.curation.base import GOLDEN_PATH, GoldenLeak, StepReport
from trainer.curation.duplicates import exact_key
from trainer.datasets import normalize


def add_replay(rows: Sequence[Row], earlier_rows: Sequence[Row], share: float,
               seed: int = 0) -> tuple[list[Row], StepReport]:
    """Append earlier rows so they make up `share` of the result: round(share / (1 - share) * n),
    drawn reproducibly with `seed`, skipping exact copies of current rows. Fewer when there are
    not enough earlier rows (noted)."""
    if not 0 <= share < 1:
        raise ValueError(f"replay share must be in [0, 1), not {share}")
    current = {exact_key(r) for r in rows}
    pool = [r for r in earlier_rows if exact_key(r) not in current]
    wanted = round(share / (1 - share) * len(rows))
    picked = sorted(random.Random(seed).sample(range(len(pool)), min(wanted, len(pool))))
    added = [pool[i] for i in picked]
    notes = {"added": len(added), "wanted": wanted, "available": len(pool)}
    return [*rows, *added], StepReport("replay", 0, notes, len(added))


@dataclass(frozen=True)
class GoldenItem:
    prompt: str
    answer: str


def golden_set(path: Path | str | None = None) -> list[GoldenItem]:
    """Reference prompt/answer pairs from a JSONL file ({"prompt", "answer"} a line; default: the
    bundled set). For evaluation only: `assert_no_golden` keeps them out of training."""
    items = []
    with Path(path or GOLDEN_PATH).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                record = json.loads(line)
                if not (isinstance(record.get("prompt"), str) and isinstance(record.get("answer"), str)):
                    raise ValueError(f"{path or GOLDEN_PATH}:{number}: needs string 'prompt' and 'answer'")
                items.append(GoldenItem(record["prompt"], record["answer"]))
    return items


def assert_no_golden(rows: Sequence[Row], golden: Sequence[GoldenItem]) -> None:
    """Raise `GoldenLeak` if any golden prompt is a user message in any training row."""
    leaks = [prompt for row in rows for prompt in _golden_prompts_in(row, golden)]
    if leaks:
        shown = "; ".join(sorted(set(leaks))[:5])
        raise GoldenLeak(f"{len(leaks)} training row(s) contain golden-set prompts, which are for evaluation "
                         f"only: {shown}. Remove them from the training data or from the golden set.")


def _golden_prompts_in(row: Row, golden: Sequence[GoldenItem]) -> list[str]:
    prompts = {normalize(item.prompt): item.prompt for item in golden}
    messages = row.data.get("prompt") or row.data.get("messages") or []
    texts = {row.prompt_text, *(m.get("content", "") for m in messages if m.get("role") == "user")}
    return [prompts[normalize(t)] for t in texts if normalize(t) in prompts]


def drop_golden(rows: Sequence[Row], golden: Sequence[GoldenItem]) -> tuple[list[Row], StepReport]:
    """Rows that ask a golden prompt are removed: users do ask "What is the capital of France?",
    and that must neither block the night's run nor let the golden set be trained on."""
    kept = [row for row in rows if not _golden_prompts_in(row, golden)]
    return kept, StepReport("golden", len(rows) - len(kept))
