"""What a night's run trains and evaluates on: every feedback kind, curated, split, with replay.

1. Every kind is read from the store (`feedback.export`): preference pairs, thumbs,
   corrections, and logged prompts (for GRPO and PPO, which sample their own answers).
2. Each kind is curated (`trainer.curation`): personal data scrubbed, disputes, duplicates,
   the per-user cap, golden prompts; the report counts what each step removed.
3. All kinds are split at once by prompt group and time (`trainer.datasets.split_kinds`).
4. The policy trains on what is new since the active release's data was read, plus a replay share of
   older rows (the adapter it continues from learned those; replay keeps it from forgetting).
   The reward model is trained afresh each night, so it takes every training pair.

The prepared data is saved in the run's folder, so `--resume` trains on exactly the same rows.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session

from feedback.export import BUILDERS, Row, choices
from trainer import styles
from trainer.config import NightlyConfig
from trainer.curation import CurationConfig, StepReport, add_replay, curate
from trainer.datasets import Split, split_kinds

KINDS = ("dpo", "kto", "sft", "prompts")  # pairs, thumbs, corrections, logged prompts
NAMES = {"dpo": "pairs", "kto": "thumbs", "sft": "corrections", "prompts": "prompts"}
SAVED = "data.json"


@dataclass
class TrainingData:
    splits: dict[str, Split]
    since: datetime | None  # when the active release's own run read its data: rows after it are new
    curation: dict[str, dict] = field(default_factory=dict)  # per kind: in, out, removed per step, lines
    replay: dict[str, dict] = field(default_factory=dict)  # per kind: new rows and replayed rows
    choices: dict = field(default_factory=dict)  # new A/B choices by verdict, and the pair yield
    styles: dict = field(default_factory=dict)  # per contrast style: won, lost, tied, both bad (trainer.styles)

    def train(self, kind: str) -> list[Row]:
        return self.splits[kind].train

    def held_out(self, kind: str) -> list[Row]:
        return self.splits[kind].held_out

    def new(self, kind: str) -> list[Row]:
        return [row for row in self.train(kind) if self.since is None or row.created_at > self.since]

    def policy_rows(self, kind: str, share: float, seed: int = 0) -> list[Row]:
        """New training rows plus `share` of replayed older ones (see the module docstring)."""
        new = self.new(kind)
        fresh = set(map(id, new))
        older = [row for row in self.train(kind) if id(row) not in fresh]
        rows, report = add_replay(new, older, share, seed) if share and new else (new, StepReport("replay", 0))
        self.replay[NAMES[kind]] = {"new": len(new), "replayed": report.changed}
        return weighted(rows, seed)

    def labelled_rows(self, share: float, seed: int = 0) -> list[Row]:
        """Every judged answer (new, plus replay) as one KTO row: thumbs, stars, "both bad", and both
        sides of every pair (A/B choices, rating gaps, corrections against what they corrected)."""
        return [*self.policy_rows("kto", share, seed), *split_pairs(self.policy_rows("dpo", share, seed))]

    def labelled_held_out(self) -> list[Row]:
        return [*self.held_out("kto"), *split_pairs(self.held_out("dpo"))]

    def liked_rows(self, share: float, seed: int = 0) -> list[Row]:
        """The answers people liked (chosen sides, thumbs up, 4-5 stars) and corrections, as SFT rows."""
        return [*as_messages(row for row in self.labelled_rows(share, seed) if row.data["label"]),
                *self.policy_rows("sft", share, seed)]

    def liked_held_out(self) -> list[Row]:
        return [*as_messages(row for row in self.labelled_held_out() if row.data["label"]), *self.held_out("sft")]

    def distinct_prompts(self, held_out: bool = False) -> list[tuple[list[dict], str]]:
        """The distinct prompts of every kind, pairs' first, on one side of the split, as chat
        messages with their text."""
        found: dict[str, tuple[list[dict], str]] = {}
        for kind in KINDS:
            for row in self.held_out(kind) if held_out else self.train(kind):
                messages = row.data.get("prompt") or row.data["messages"][:-1]
                found.setdefault(repr(messages), (messages, row.prompt_text))
        return list(found.values())

    def drawn_prompts(self, seed: int, most: int) -> list[tuple[list[dict], str]]:
        """Up to `most` distinct training prompts, a seeded draw: the same seed draws the same
        prompts in the same order, whatever order the rows arrived in."""
        prompts = sorted(self.distinct_prompts(), key=lambda prompt: repr(prompt[0]))
        random.Random(seed).shuffle(prompts)
        return prompts[:most]

    def counts(self) -> dict[str, int]:
        counts = {}
        for kind in KINDS:
            name = NAMES[kind]
            counts[f"{name}_train"] = len(self.train(kind))
            counts[f"{name}_held_out"] = len(self.held_out(kind))
            counts[f"{name}_new"] = len(self.new(kind))
        counts["train"], counts["held_out"] = counts["pairs_train"], counts["pairs_held_out"]  # as in reports so far
        counts["new_pairs"] = counts["pairs_new"]
        imported = Counter(f"{NAMES[kind]}_train_from_{row.origin}" for kind in KINDS for row in self.train(kind)
                           if row.origin != "tuneloop")
        return counts | dict(sorted(imported.items()))  # rows another tool collected (tuneloop import)

    # ---- saved with the run, for --resume

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        body = {"since": self.since.isoformat() if self.since else None, "curation": self.curation,
                "choices": self.choices, "styles": self.styles,
                "splits": {kind: {"train": [row_json(r) for r in split.train],
                                  "held_out": [row_json(r) for r in split.held_out]}
                           for kind, split in self.splits.items()}}
        (folder / SAVED).write_text(json.dumps(body, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> TrainingData:
        body = json.loads((folder / SAVED).read_text(encoding="utf-8"))
        splits = {kind: Split([row_from_json(r) for r in halves["train"]], [row_from_json(r) for r in halves["held_out"]])
                  for kind, halves in body["splits"].items()}
        since = datetime.fromisoformat(body["since"]) if body["since"] else None
        return cls(splits, since, body["curation"], choices=body.get("choices", {}), styles=body.get("styles", {}))


def split_pairs(pairs: list[Row]) -> list[Row]:
    """Each preference pair as two labelled answers: the chosen one good, the rejected one bad."""
    rows = []
    for pair in pairs:
        for side, label in (("chosen", True), ("rejected", False)):
            data = {"prompt": pair.data["prompt"], "completion": pair.data[side], "label": label}
            rows.append(replace(pair, data=data, source=f"{pair.source}:{side}"))
    return rows


def as_messages(rows) -> list[Row]:  # noqa: ANN001 - labelled rows
    """Labelled rows as SFT rows: the prompt and its answer as one conversation."""
    return [replace(row, data={"messages": [*row.data["prompt"], *row.data["completion"]]}) for row in rows]


def weighted(rows: list[Row], seed: int = 0) -> list[Row]:
    """Curation's down-weighted rows (disputed items, `data["weight"]` < 1) kept with that
    probability, reproducibly: TRL's trainers take no per-example weights, and sampling gives
    each row its weight in expectation."""
    draw = random.Random(seed)
    return [row for row in rows if draw.random() < row.data.get("weight", 1.0)]


def curation_config(config: NightlyConfig) -> CurationConfig:
    # Replay is added per recipe stage (policy_rows), after the split, not inside curate.
    return CurationConfig(near_threshold=max(config.pipeline.near_duplicate_threshold, 0.9), max_user_share=config.pipeline.max_user_share,
                          agreement_floor=config.pipeline.agreement_floor, dispute_mode=config.pipeline.dispute_mode,
                          replay_share=0.0, seed=config.training.seed)


def prepare(session: Session, config: NightlyConfig, since: datetime | None, check: Any = None) -> TrainingData:
    """Read, curate and split every kind (raises `CurationBlocked` when reviewers agree too little)."""
    curated, reports = {}, {}
    for kind in KINDS:
        rows = BUILDERS[kind](session) if kind != "prompts" else BUILDERS[kind](session, limit=config.pipeline.max_prompts)
        curated[kind], report = curate(rows, curation_config(config), check=check)
        reports[NAMES[kind]] = {"rows_in": report.rows_in, "rows_out": report.rows_out,
                                "removed": report.removed(), "lines": report.lines(),
                                "agreement": _agreement(report)}
    splits = split_kinds(curated, config.pipeline.holdout_fraction, config.pipeline.near_duplicate_threshold)
    held_out = [row.prompt_text for split in splits.values() for row in split.held_out]
    return TrainingData(splits, since, reports, choices=choices(session, since),
                        styles=styles.tally(session, since, held_out))


def _agreement(report) -> dict | None:  # noqa: ANN001
    if report.agreement is None or not report.agreement.by_kind:
        return None
    return {kind: {"alpha": k.alpha, "kappa": k.kappa, "items": k.items, "raters": k.raters}
            for kind, k in report.agreement.by_kind.items()} | {"disputes": len(report.agreement.disputes)}


def row_json(row: Row) -> dict:
    body = asdict(row)
    body["created_at"] = row.created_at.isoformat()
    body["response_ids"] = [str(i) for i in row.response_ids]
    return body


def row_from_json(body: dict) -> Row:
    return Row(body["data"], body["source"], body["prompt_text"], datetime.fromisoformat(body["created_at"]),
               body["user_ids"], [uuid.UUID(i) for i in body["response_ids"]], body.get("origin", "tuneloop"))
