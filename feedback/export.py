"""Feedback as datasets in TRL's own formats (conversational), with the metadata trainers need.

- dpo: {"prompt": [...messages], "chosen": [assistant], "rejected": [assistant]}
  from A/B choices, from two answers to one prompt whose ratings differ, and from
  corrections (the ideal answer beats the original).
- kto: {"prompt": [...], "completion": [assistant], "label": bool} from every verdict on one
  answer: thumbs, stars (4-5 good, 1-2 bad, 3 says nothing), and both answers of a pair a user
  called "both bad".
- sft: {"messages": [..., assistant]} from corrections.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from sqlmodel import Session, col, select

from store.models import Comparison, Conversation, Correction, Message, Rating, Response, Thumb, Winner

Format = Literal["dpo", "kto", "sft"]
MIN_SCORE_GAP = 0.5  # thumbs up against down, or two stars apart


@dataclass
class Row:
    """One training example plus where it came from (for splitting and curation)."""

    data: dict
    source: str  # "comparison", "ratings", "correction", "thumb"
    prompt_text: str
    created_at: datetime
    user_ids: list[int] = field(default_factory=list)
    response_ids: list[uuid.UUID] = field(default_factory=list)
    origin: str = "tuneloop"  # where the feedback was collected: here, or the tool it was imported from


def origin_of(response: Response) -> str:
    """The tool an imported answer came from (feedback/importers), else "tuneloop"."""
    imported = response.trace.get("channel") == "import"
    return response.trace.get("source", "import") if imported else "tuneloop"


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


class PromptContext:
    """Builds a response's prompt: its conversation up to and including the user message.

    Public: whoever scores answers as the trained models saw them (serving/review_scores.py)
    builds prompts the same way the datasets do. Caches per prompt message, so keep one per session."""

    def __init__(self, session: Session):
        self.session = session
        self._cache: dict[int, list[dict[str, str]]] = {}

    def prompt(self, response: Response) -> list[dict[str, str]]:
        key = response.prompt_message_id
        if key not in self._cache:
            query = select(Message).where(
                Message.conversation_id == response.conversation_id, col(Message.id) <= key
            ).order_by(col(Message.id))
            self._cache[key] = [{"role": m.role.value, "content": m.content} for m in self.session.exec(query)]
        return self._cache[key]


def _responses(session: Session, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Response]:
    ids = list(set(ids))
    if not ids:
        return {}
    return {r.id: r for r in session.exec(select(Response).where(col(Response.id).in_(ids)))}


def preference_rows(session: Session) -> list[Row]:
    context = PromptContext(session)
    return [*_from_comparisons(session, context), *_from_rating_gaps(session, context),
            *_from_corrections_as_pairs(session, context)]


def _from_comparisons(session: Session, context: PromptContext) -> Iterator[Row]:
    comparisons = session.exec(select(Comparison).where(col(Comparison.winner).in_([Winner.a, Winner.b]))).all()
    responses = _responses(session, itertools.chain.from_iterable((c.response_a_id, c.response_b_id) for c in comparisons))
    for c in comparisons:
        a, b = responses[c.response_a_id], responses[c.response_b_id]
        chosen, rejected = (a, b) if c.winner == Winner.a else (b, a)
        prompt = context.prompt(a)
        yield Row({"prompt": prompt, "chosen": _assistant(chosen.text), "rejected": _assistant(rejected.text)},
                  "comparison", prompt[-1]["content"], c.updated_at, [c.user_id], [chosen.id, rejected.id],
                  origin_of(chosen))


def _score(rating: Rating) -> float | None:
    if rating.stars is not None:
        return (rating.stars - 1) / 4
    if rating.thumb is not None:
        return 1.0 if rating.thumb == Thumb.up else 0.0
    return None


def _from_rating_gaps(session: Session, context: PromptContext) -> Iterator[Row]:
    scores: dict[uuid.UUID, list[float]] = defaultdict(list)
    latest: dict[uuid.UUID, Rating] = {}
    for rating in session.exec(select(Rating)):
        score = _score(rating)
        if score is not None:
            scores[rating.response_id].append(score)
            if rating.response_id not in latest or rating.updated_at > latest[rating.response_id].updated_at:
                latest[rating.response_id] = rating
    # "The same prompt" is the same conversation so far, word for word: answers to one
    # message, or to the same first question asked in different conversations.
    by_prompt: dict[str, list[Response]] = defaultdict(list)
    for response in _responses(session, scores).values():
        by_prompt[json.dumps(context.prompt(response))].append(response)
    for answers in by_prompt.values():
        for x, y in itertools.combinations(sorted(answers, key=lambda r: str(r.id)), 2):
            gap = sum(scores[x.id]) / len(scores[x.id]) - sum(scores[y.id]) / len(scores[y.id])
            if abs(gap) < MIN_SCORE_GAP:
                continue
            chosen, rejected = (x, y) if gap > 0 else (y, x)
            prompt = context.prompt(chosen)
            when = max(latest[x.id].updated_at, latest[y.id].updated_at)
            yield Row({"prompt": prompt, "chosen": _assistant(chosen.text), "rejected": _assistant(rejected.text)},
                      "ratings", prompt[-1]["content"], when, [latest[x.id].user_id, latest[y.id].user_id],
                      [chosen.id, rejected.id], origin_of(chosen))


def _corrections(session: Session) -> Iterator[tuple[Correction, Response]]:
    corrections = session.exec(select(Correction).order_by(col(Correction.id))).all()
    responses = _responses(session, (c.response_id for c in corrections))
    for correction in corrections:
        yield correction, responses[correction.response_id]


def _from_corrections_as_pairs(session: Session, context: PromptContext) -> Iterator[Row]:
    for correction, response in _corrections(session):
        if correction.text == response.text:  # an ideal answer with no worse one beside it (an imported SFT row)
            continue
        prompt = context.prompt(response)
        yield Row({"prompt": prompt, "chosen": _assistant(correction.text), "rejected": _assistant(response.text)},
                  "correction", prompt[-1]["content"], correction.created_at, [correction.user_id], [response.id],
                  origin_of(response))


def _label(rating: Rating) -> bool | None:
    """A rating as good (True) or bad (False): the thumb if given, else stars 4-5 or 1-2."""
    if rating.thumb is not None:
        return rating.thumb == Thumb.up
    if rating.stars is not None and rating.stars != 3:
        return rating.stars > 3
    return None


def kto_rows(session: Session) -> list[Row]:
    context = PromptContext(session)
    rows = []
    ratings = session.exec(select(Rating).where(col(Rating.thumb).is_not(None) | col(Rating.stars).is_not(None))
                           .order_by(col(Rating.id))).all()
    responses = _responses(session, (r.response_id for r in ratings))
    for rating in ratings:
        label = _label(rating)
        if label is None:
            continue
        response = responses[rating.response_id]
        prompt = context.prompt(response)
        data = {"prompt": prompt, "completion": _assistant(response.text), "label": label}
        source = "thumb" if rating.thumb is not None else "stars"
        rows.append(Row(data, source, prompt[-1]["content"], rating.updated_at, [rating.user_id], [response.id],
                        origin_of(response)))
    return rows + list(_from_both_bad(session, context))


def _from_both_bad(session: Session, context: PromptContext) -> Iterator[Row]:
    """"Both bad": each of the two answers is one bad answer to the prompt."""
    comparisons = session.exec(select(Comparison).where(Comparison.winner == Winner.both_bad)
                               .order_by(col(Comparison.id))).all()
    responses = _responses(session, itertools.chain.from_iterable((c.response_a_id, c.response_b_id) for c in comparisons))
    for c in comparisons:
        for response in (responses[c.response_a_id], responses[c.response_b_id]):
            prompt = context.prompt(response)
            data = {"prompt": prompt, "completion": _assistant(response.text), "label": False}
            yield Row(data, "both_bad", prompt[-1]["content"], c.updated_at, [c.user_id], [response.id],
                      origin_of(response))


def sft_rows(session: Session) -> list[Row]:
    context = PromptContext(session)
    return [
        Row({"messages": [*context.prompt(response), *_assistant(correction.text)]}, "correction",
            context.prompt(response)[-1]["content"], correction.created_at, [correction.user_id], [response.id],
            origin_of(response))
        for correction, response in _corrections(session)
    ]


def prompt_rows(session: Session, limit: int = 1000) -> list[Row]:
    """Logged prompts, the newest `limit` first, each once (two answers to one message share it):
    what online RL (GRPO, PPO) samples fresh answers for, rated or not."""
    context = PromptContext(session)
    query = (select(Response, Conversation.user_id).join(Conversation, Conversation.id == Response.conversation_id)
             .order_by(col(Response.created_at).desc()).limit(2 * limit))
    rows: dict[int, Row] = {}
    for response, user_id in session.exec(query):
        if response.prompt_message_id in rows or len(rows) >= limit:
            continue
        prompt = context.prompt(response)
        rows[response.prompt_message_id] = Row({"prompt": prompt}, "prompt", prompt[-1]["content"],
                                               response.created_at, [user_id], [response.id], origin_of(response))
    return list(rows.values())


def choices(session: Session, since: datetime | None = None) -> dict[str, int]:
    """A/B choices by verdict (since a time, if given), and the pair yield: choices with a
    winner / choices, since only those become preference pairs."""
    from sqlalchemy import func

    query = select(Comparison.winner, func.count()).group_by(Comparison.winner)
    if since is not None:
        query = query.where(Comparison.updated_at > since)
    counts = {winner.value: count for winner, count in session.exec(query)}
    total = sum(counts.values())
    return {**counts, "choices": total, "pair_yield": (counts.get("a", 0) + counts.get("b", 0)) / total if total else None}


BUILDERS = {"dpo": preference_rows, "kto": kto_rows, "sft": sft_rows, "prompts": prompt_rows}


def export(session: Session, fmt: Format, out: Path) -> int:
    """Write one TRL-format JSON object per line; returns how many rows were written."""
    rows = BUILDERS[fmt](session)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row.data, ensure_ascii=False) + "\n")
    return len(rows)



CARD = """---
pretty_name: tuneloop feedback
tags: [tuneloop, preference, trl]
configs:
{configs}
---

# tuneloop feedback

What this deployment's users and reviewers said, as TRL datasets (written {written}), each row
with its `source` (a user's A/B choice, a rating gap, a correction, a thumb):

| config | TRL's format | rows |
|---|---|---|
{rows}

```python
from datasets import load_dataset

pairs = load_dataset("PATH/TO/THIS/FOLDER", "dpo", split="train")  # trl.DPOTrainer
```

Free text was redacted before it was stored; people who asked to be forgotten are not in it.
"""
FORMATS = {"dpo": "preference (prompt, chosen, rejected)", "kto": "unpaired preference (prompt, completion, label)",
           "sft": "conversational (messages)"}


def export_hf_dataset(session: Session, out: Path) -> dict[str, int]:
    """A Hugging Face `datasets` folder: one Parquet file per TRL format and a dataset card whose
    `configs` let `load_dataset(out, "dpo")` read it (as from the Hub after a push)."""
    from datasets import Dataset

    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in FORMATS:
        rows = [{**row.data, "source": row.source} for row in BUILDERS[name](session)]
        counts[name] = len(rows)
        if rows:
            (out / name).mkdir(exist_ok=True)
            Dataset.from_list(rows).to_parquet(str(out / name / "train.parquet"))
    present = [name for name in FORMATS if counts[name]]
    configs = "\n".join(f"- config_name: {name}\n  data_files: {name}/train.parquet" for name in present)
    table = "\n".join(f"| {name} | {FORMATS[name]} | {counts[name]} |" for name in FORMATS)
    (out / "README.md").write_text(CARD.format(configs=configs or "[]", rows=table,
                                               written=datetime.now().astimezone().isoformat(timespec="seconds")),
                                   encoding="utf-8")
    return counts
